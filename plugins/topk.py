"""Built-in analyzer ``topk``: class top-K identity, instance top-K frequencies, minimal sufficient CE sets,
and overlaps between classes, splits, and correct vs incorrect rows (docs/analyzers.md)."""

from __future__ import annotations

import numpy as np

import fragility
from fragility.analysis import Analyzer, Chunk, Result, Table
from fragility.analysis.records import MinimalSets, TopkClass, TopkGroup, TopkIdentity, TopkSet, as_data
from fragility.functional import (
    chunk_topk_mask,
    chunk_topk_sums,
    class_sums,
    class_topk,
    instance_counts,
    jaccard,
    minimal_sets,
    overlap,
    rarefied_unique,
    rarefy_size,
    wilson,
)


class TopK(Analyzer):
    """Class top-K identity, instance top-K frequency, minimal sufficient CE sets."""

    name = "topk"
    uses_k = True
    states = {
        "n": "sum",
        "n_correct": "sum",
        "sum_correct": "sum",
        "sum_incorrect": "sum",
        "count": "sum",
        "mscs_count": "sum",
        "mscs_size": "sum",
        "mscs_rows": "sum",
    }

    def columns(self) -> set[str]:
        return {self.spec.embedding, "ce_pred", "logits", "bias_pred", "label", "pred"}

    def update(self, chunk: Chunk) -> None:
        C, g = self.spec.num_classes, chunk.group
        y, ok = chunk.labels, chunk.correct
        self.accumulate(g, "n", np.bincount(y, minlength=C))
        self.accumulate(g, "n_correct", np.bincount(y[ok], minlength=C))
        bias = self.spec.group(g).bias_pred(chunk)
        mscs = bias is not None and self.spec.options.get("minimal_sets", True)  # options={"minimal_sets": False} skips them
        fast = chunk_topk_sums(chunk, bias if mscs else None)  # the fused kernel, where it is exact; else numpy below
        if fast is not None:
            for key in ("sum_correct", "sum_incorrect", "count"):
                self.accumulate(g, key, fast[key])
        else:
            self.accumulate(g, "sum_correct", class_sums(y[ok], chunk.v[ok], C))
            self.accumulate(g, "sum_incorrect", class_sums(y[~ok], chunk.v[~ok], C))
            self.accumulate(g, "count", instance_counts(y, chunk_topk_mask(chunk), C))
        if mscs:
            if fast is not None and "mscs_count" in fast:
                self.accumulate(g, "mscs_count", fast["mscs_count"])
                self.accumulate(g, "mscs_size", fast["mscs_size"])
            else:
                sets = chunk.cached("mscs", lambda: minimal_sets(chunk["ce_pred"], chunk["logits"], chunk["pred"], bias))
                self.accumulate(g, "mscs_count", instance_counts(y, sets, C))
                self.accumulate(g, "mscs_size", np.bincount(y, weights=sets.sum(axis=1), minlength=C).astype(np.int64))
            self.accumulate(g, "mscs_rows", np.bincount(y, minlength=C))

    def _state(self, group: str) -> dict:
        """A group's state; a selected group with no usable row (e.g. all unlabelled) reads as empty."""
        if group in self.state:
            return self.state[group]
        C, D = self.spec.num_classes, self.spec.feature_dim
        zc, zcd = np.zeros(C, dtype=np.int64), np.zeros((C, D))
        return {"n": zc, "n_correct": zc, "sum_correct": zcd, "sum_incorrect": zcd, "count": zcd.astype(np.int64)}

    def group_identity(self, group: str) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        st = self._state(group)
        k = self.spec.k
        sc, si = st["sum_correct"], st["sum_incorrect"]
        n, nc = st["n"], st["n_correct"]
        return {
            "all": class_topk(sc + si, n, k),
            "correct": class_topk(sc, nc, k),
            "incorrect": class_topk(si, n - nc, k),
        }

    def compute(self) -> Result:
        spec = self.spec
        C, D, k = spec.num_classes, spec.feature_dim, spec.k
        names = spec.class_names
        result = Result(self.name)
        data: dict = {"embedding": spec.embedding, "k": k, "tau": spec.tau, "feature_dim": D, "groups": {}}
        identity = {}
        for g in spec.groups:
            st = self._state(g.name)
            n, nc = st["n"], st["n_correct"]
            rows_in = {"all": n, "correct": nc, "incorrect": n - nc}
            ident = identity[g.name] = self.group_identity(g.name)
            count = st["count"]
            freq = count / np.maximum(n, 1)[:, None]
            unique = (count > 0).sum(axis=1)
            unique_tau = (freq > spec.tau).sum(axis=1)
            m = rarefy_size(spec.options.get("rarefy_m"), n)
            rare = rarefied_unique(count, n, m) if m else np.full(C, np.nan)
            has_mscs = "mscs_count" in st
            if has_mscs:
                m_sets = rarefy_size(spec.options.get("rarefy_m"), st["mscs_rows"])
                rare_sets = rarefied_unique(st["mscs_count"], st["mscs_rows"], m_sets) if m_sets else np.full(C, np.nan)
            rows, classes = [], []
            for c in range(C):
                empty = n[c] == 0
                idx, val, share = (ident["all"][i][c] for i in range(3))
                ov_ci = overlap(ident["correct"][0][c], ident["incorrect"][0][c], k) if nc[c] and n[c] - nc[c] else None
                record = TopkClass(
                    name=names[c],
                    n=int(n[c]),
                    accuracy=None if empty else float(nc[c] / n[c]),
                    accuracy_ci=wilson(int(nc[c]), int(n[c])),
                    # a filter with no rows has no top-K: null, never -1 (a valid index from the end)
                    topk=TopkIdentity(**{f: TopkSet(*(ident[f][i][c] for i in range(3))) if rows_in[f][c] else TopkSet(None, None, None)
                                         for f in ident}),
                    freq=freq[c],
                    unique=int(unique[c]),
                    unique_rarefied=None if np.isnan(rare[c]) else float(rare[c]),
                    unique_tau=int(unique_tau[c]) if spec.tau > 0 else None,
                    overlap_correct_incorrect=ov_ci,
                    mscs=MinimalSets(
                        freq=st["mscs_count"][c] / max(st["mscs_rows"][c], 1),
                        unique=int((st["mscs_count"][c] > 0).sum()),
                        unique_rarefied=None if np.isnan(rare_sets[c]) else float(rare_sets[c]),
                        mean_size=None if st["mscs_rows"][c] == 0 else float(st["mscs_size"][c] / st["mscs_rows"][c]),
                    ) if has_mscs else None,
                )
                classes.append(record)
                rows.append(
                    [
                        record.name, record.n, record.accuracy, record.unique, record.unique_rarefied,
                        *([record.unique_tau] if spec.tau > 0 else []),
                        record.mscs.unique if record.mscs else None,
                        record.mscs.unique_rarefied if record.mscs else None,
                        record.mscs.mean_size if record.mscs else None,
                        ov_ci,
                        None if empty else [int(i) for i in idx],
                        None if empty else float(np.nansum(val)),
                    ]
                )
            between = np.full((C, C), np.nan)
            for a in range(C):
                for b in range(C):
                    if n[a] and n[b]:
                        between[a, b] = overlap(ident["all"][0][a], ident["all"][0][b], k)
            data["groups"][g.name] = as_data(TopkGroup(g.split, g.epoch, classes, between, m or None, (m_sets or None) if has_mscs else None))
            tau_note = f"; unique > tau counts features with frequency above tau={spec.tau:g}" if spec.tau > 0 else ""
            title = (f"{g.name}: class top-{k} {spec.embedding} (unique = features in any row's top-{k}; unique@m = expected unique "
                     f"in {m or '-'} rows, the size-controlled count to compare classes{tau_note})")
            cols = ["class", "n", "accuracy", "unique", "unique@m", *(["unique > tau"] if spec.tau > 0 else []), "mscs unique",
                    "mscs unique@m", "mscs mean size", "overlap correct/incorrect", "top-K features", "top-K sum"]
            result.tables.append(Table(title, cols, rows))
        # between splits at the same epoch (e.g. train vs test), per class
        pairs = []
        for a in spec.groups:
            for b in spec.groups:
                if a.epoch == b.epoch and a.split < b.split:
                    pairs.append((a, b))
        if pairs:
            rows = []
            data["overlap_between_splits"] = []
            for a, b in pairs:
                ia, ib = identity[a.name]["all"][0], identity[b.name]["all"][0]
                na, nb = self._state(a.name)["n"], self._state(b.name)["n"]
                ov = [overlap(ia[c], ib[c], k) if na[c] and nb[c] else None for c in range(C)]
                jc = [jaccard(ia[c], ib[c]) if na[c] and nb[c] else None for c in range(C)]
                data["overlap_between_splits"].append({"a": a.name, "b": b.name, "overlap": ov, "jaccard": jc})
                for c in range(C):
                    rows.append([names[c], int(na[c]), int(nb[c]), f"{a.name} vs {b.name}", ov[c], jc[c]])
            result.tables.append(Table(f"class top-{k} identity overlap between splits", ["class", "n", "n (other)", "group", "overlap", "jaccard"], rows))
        result.data = data
        if self.spec.options.get("minimal_sets", True) and any("mscs_count" not in self.state[g.name] for g in spec.groups if g.name in self.state):
            result.notes.append("minimal sufficient CE sets need the classifier bias; passes without a snapshot were left out")
        for g in spec.groups:
            if g.approximate_bias:
                result.notes.append(
                    f"{g.name}: minimal sufficient CE sets are approximate: this older store (schema 1) has no per-row "
                    f"bias_pred, so the end-of-pass bias stands in for the bias each training row was computed with; "
                    f"re-record with fragility >= 0.2 for exact sets"
                )
        result.notes.append("minimal sufficient CE sets start from the predicted class's bias b_p (the authors' script used the true class's bias for misclassified rows)")
        return result


@fragility.hookimpl
def fragility_register_analyzers(registrar):
    registrar.add("topk", TopK, description="class top-K identity, instance top-K frequencies, minimal sufficient CE sets, overlaps")
