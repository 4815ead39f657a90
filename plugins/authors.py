"""Built-in analyzer ``authors``: the paper authors' own conventions, for comparison with their published
tables, next to fragility's definitions (docs/analyzers.md, "The authors' conventions").

* Minimal sets as the authors' ``cif_CE_mag_all.py`` forms them: every row of true class ``c`` starts at
  ``b_c + Σ negative entries of CE_p`` (fragility: ``b_p``), and when the positive entries cannot reach the
  runner-up's logit the loop keeps adding entries up to all ``D`` (fragility: it stops at the last positive
  entry). Both are computed here from the same rows, so the table shows them side by side.
* ``img_CE_top.py``'s two ratios: per class over its correctly classified rows, the share of the summed
  mean CE carried by its top ``int(0.1 · D)`` features, and their share of the positive entries' sum.
"""

from __future__ import annotations

import numpy as np

import fragility
from fragility.analysis import Analyzer, Chunk, Result, Table
from fragility.functional import as_float32, class_sums, instance_counts, topk_order

#: rows per block of the row-wise sort (bounds the float64 work arrays at BLOCK · D · 8 bytes)
BLOCK = 2048


def both_minimal_sets(
    ce_pred: np.ndarray, logits: np.ndarray, pred: np.ndarray, bias_pred: np.ndarray, bias_true: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Minimal sets of each row under both conventions, from one descending sort of ``CE_p`` (ties: lower
    index first; the running total in float64): ``(fragility's mask, the authors' mask, capped)``.

    fragility: start ``bias_pred + Σ neg``; add entries until the total reaches the runner-up's logit, at
    most the positive ones. Authors: start ``bias_true + Σ neg``; the same, but a row the positive entries
    cannot settle takes all ``D`` entries (``capped``). A row whose start already reaches it has none.
    """
    import torch  # loaded when this analyzer runs, not when the plugins are

    ce = torch.from_numpy(as_float32(ce_pred))
    n, d = ce.shape
    ours, theirs, capped = (np.zeros((n, d), bool), np.zeros((n, d), bool), np.zeros(n, bool))
    lg = torch.from_numpy(np.asarray(logits, dtype=np.float64))
    p = torch.from_numpy(np.asarray(pred, dtype=np.int64))
    for lo in range(0, n, BLOCK):
        hi = min(n, lo + BLOCK)
        rows = torch.arange(hi - lo)
        others = lg[lo:hi].clone()
        others[rows, p[lo:hi]] = -torch.inf
        runner = others.max(dim=1).values
        neg = ce[lo:hi].clamp(max=0).sum(dim=1, dtype=torch.float64)
        order = torch.argsort(-ce[lo:hi], dim=1, stable=True)
        cum = torch.cumsum(torch.gather(ce[lo:hi], 1, order).double().clamp(min=0), dim=1)
        positive = (ce[lo:hi] > 0).sum(dim=1)
        for start, mask, cap in ((bias_pred, ours, False), (bias_true, theirs, True)):
            gap = runner - (torch.from_numpy(np.asarray(start[lo:hi], dtype=np.float64)) + neg)
            reached = cum >= gap.unsqueeze(1)
            hit = reached.any(dim=1)
            first = reached.to(torch.int8).argmax(dim=1) + 1
            count = torch.where(gap <= 0, 0, torch.where(hit, first, d if cap else positive))
            if cap:
                capped[lo:hi] = ((gap > 0) & ~hit).numpy()
            take = torch.arange(d).unsqueeze(0) < count.unsqueeze(1)
            block = np.zeros((hi - lo, d), bool)
            np.put_along_axis(block, order.numpy(), take.numpy(), axis=1)
            mask[lo:hi] = block
    return ours, theirs, capped


class Authors(Analyzer):
    """The authors' minimal sets (true class's bias, cap at D) and img_CE_top's top-10 % CE shares."""

    name = "authors"
    states = {
        "n": "sum",
        "n_correct": "sum",
        "sum_correct": "sum",
        "ours_count": "sum",
        "ours_size": "sum",
        "theirs_count": "sum",
        "theirs_size": "sum",
        "capped": "sum",
    }

    def columns(self) -> set[str]:
        return {"ce_pred", "logits", "bias_pred", "label", "pred"}

    def update(self, chunk: Chunk) -> None:
        C, g = self.spec.num_classes, chunk.group
        group = self.spec.group(g)
        y, ok = chunk.labels, chunk.correct
        self.accumulate(g, "n", np.bincount(y, minlength=C))
        self.accumulate(g, "n_correct", np.bincount(y[ok], minlength=C))
        self.accumulate(g, "sum_correct", class_sums(y[ok], as_float32(chunk["ce_pred"][ok]), C))
        if group.train_mode or group.bias is None:
            return  # b_c of each row's own forward is unknown: no sets (compute() says why)
        bias_true = np.asarray(group.bias, dtype=np.float64)[y]
        ours, theirs, capped = both_minimal_sets(chunk["ce_pred"], chunk["logits"], chunk["pred"],
                                                 chunk["bias_pred"].astype(np.float64), bias_true)
        self.accumulate(g, "ours_count", instance_counts(y, ours, C))
        self.accumulate(g, "ours_size", np.bincount(y, weights=ours.sum(axis=1), minlength=C).astype(np.int64))
        self.accumulate(g, "theirs_count", instance_counts(y, theirs, C))
        self.accumulate(g, "theirs_size", np.bincount(y, weights=theirs.sum(axis=1), minlength=C).astype(np.int64))
        self.accumulate(g, "capped", np.bincount(y[capped], minlength=C))

    def compute(self) -> Result:
        spec = self.spec
        C, D = spec.num_classes, spec.feature_dim
        kt = int(0.1 * D)
        result = Result(self.name)
        data: dict = {"feature_dim": D, "k_top": kt, "groups": {}}
        for g in spec.groups:
            st = self.state.get(g.name)
            if st is None:
                continue
            n, nc = st["n"], st["n_correct"]
            sets = "theirs_count" in st
            classes, rows = [], []
            for c in range(C):
                mean = st["sum_correct"][c] / nc[c] if nc[c] else None
                share = share_pos = None
                if mean is not None and kt:
                    top = mean[topk_order(mean, kt)].sum()
                    total, positive = mean.sum(), mean[mean > 0].sum()
                    share = float(top / total) if total != 0 else None
                    share_pos = float(top / positive) if positive > 0 else None
                entry = {"class": spec.class_names[c], "n": int(n[c]), "n_correct": int(nc[c]), "top_share": share,
                         "top_share_positive": share_pos}
                if sets:
                    for key, who in (("sets", "theirs"), ("fragility_sets", "ours")):
                        cnt = st[f"{who}_count"][c]
                        entry[key] = {"freq": cnt / max(int(n[c]), 1), "unique": int((cnt > 0).sum()),
                                      "mean_size": float(st[f"{who}_size"][c] / n[c]) if n[c] else None}
                    entry["sets"]["capped"] = int(st["capped"][c])
                classes.append(entry)
                rows.append([
                    entry["class"], entry["n"], entry["n_correct"],
                    entry["sets"]["unique"] if sets else None, entry["fragility_sets"]["unique"] if sets else None,
                    entry["sets"]["mean_size"] if sets else None, entry["fragility_sets"]["mean_size"] if sets else None,
                    entry["sets"]["capped"] if sets else None, share, share_pos,
                ])
            data["groups"][g.name] = {"split": g.split, "epoch": g.epoch, "classes": classes}
            result.tables.append(Table(
                f"{g.name}: the paper authors' conventions next to fragility's — minimal sets from the true class's bias, "
                f"capped at all {D} features when the positive CE cannot reach the runner-up (authors) vs from the predicted "
                f"class's bias, stopping at the last positive entry (fragility); top-{kt} share = img_CE_top's share of the "
                f"class's summed mean CE (correct rows) carried by its top int(0.1·D) = {kt} features, and of the positive sum",
                ["class", "n", "n correct", "sets unique (authors)", "sets unique (fragility)", "mean size (authors)",
                 "mean size (fragility)", "capped rows (authors)", f"top-{kt} share", f"top-{kt} share of positive"],
                rows,
            ))
            if not sets:
                result.notes.append(
                    f"{g.name}: the authors' minimal sets need the true class's bias of each row's forward; a train-mode pass "
                    f"(weights moving between rows) holds only the predicted class's, so they are left out — analyse an eval "
                    f"sweep (split 'train_eval' or 'test')" if g.train_mode else
                    f"{g.name}: the authors' minimal sets need the classifier bias; the pass has no snapshot, so they are left out"
                )
        if kt == 0:
            result.notes.append(f"D = {D} < 10: int(0.1 · D) = 0 features, so img_CE_top's shares are undefined")
        result.data = data
        return result


@fragility.hookimpl
def fragility_register_analyzers(registrar):
    registrar.add("authors", Authors, description="the paper authors' conventions: minimal sets from the true class's bias "
                  "capped at D, img_CE_top's top-10% CE shares (next to fragility's definitions)")
