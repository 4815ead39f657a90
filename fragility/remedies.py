"""Head-level remedies on a recorded store: a new classifier ``(W, b)`` from the stored rows, evaluated by
re-scoring the stored test FE, so that every analyzer runs on the remedied head unchanged.

The training rows are the FE of an **eval sweep of the training set** (split ``train_eval``), as the
authors extract them; the original head is the test sweep's classifier snapshot (an eval pass: exact).

* ``tau-norm`` (Kang et al., ICLR 2020): ``W_c / ||W_c||^tau``, ``b`` kept; tau given, or swept over
  0, 0.1, …, 2 for the best balanced accuracy on a held-out slice (the ``val`` sweep if the store has one,
  else a seeded 20 % of each class's test rows, which are then left out of every evaluation).
* ``logit-adjust`` (post-hoc, Menon et al., ICLR 2021): ``b_c - tau * log(prior_c)``, the prior from the
  training sweep's class counts; tau 1 by default (the balanced error's optimum).
* ``crt`` (Kang et al. 2020): a new linear head trained on the training FE with class-balanced sampling.
* ``reweight``: a new linear head trained with the class-balanced loss (Cui et al. 2019, beta 0.9999; the
  weights of LDAM-DRW's ``Reweight`` rule).
* ``eos`` (Dablain et al., arXiv 2207.06080; dd1github/EOS ``EOS.py``, ``cifar_train_os.py``): every class
  below the largest gets ``n_max - n_c`` synthetic rows, each a convex combination of a *base* (a row of
  the class with at least one enemy — another class's row — among its ``k = 10`` nearest neighbours) and
  one of that base's enemy neighbours; then a new linear head is trained on real and synthetic rows.

The three trained heads follow ``cifar_train_os.py``'s recipe: a fresh ``nn.Linear``, SGD (lr 0.1, momentum
0.9, weight decay 2e-4), batch 128, 10 epochs with the learning rate warmed up linearly over the first 5,
cross-entropy; the last epoch's head is kept (the authors keep the epoch with the best test macro-F1, a
selection on the test set). Seeds are given; results are identical run to run on CPU.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._light import TRAIN_EVAL, _progress
from .analysis import Result, Table, analyze, check_memory
from .analysis._results import _fmt
from .analysis._maths import as_float32, nearest_rows
from .analysis.records import build, magnitude_records, topk_records
from .errors import FragilityError, OutputError, SelectionError, close_matches, output_dir
from .store import PassInfo, Store
from .store._reader import row_filter

__all__ = ["REMEDIES", "RemedyError", "Rescored", "eos_rows", "load_head", "logit_adjust", "remedy", "rescore", "tau_norm",
           "train_head"]


class RemedyError(FragilityError):
    """A remedy cannot run on this store or with these options (the message says why and the fix)."""


#: remedy name -> what it does (one line)
REMEDIES = {
    "tau-norm": "classifier weights divided by their norm to the power tau (Kang et al. 2020)",
    "logit-adjust": "post-hoc logit adjustment b_c - tau log prior_c (Menon et al. 2021)",
    "crt": "linear head retrained with class-balanced sampling (Kang et al. 2020)",
    "reweight": "linear head retrained with the class-balanced loss, beta 0.9999 (Cui et al. 2019)",
    "eos": "linear head retrained on FE oversampled towards nearest enemies, k=10 (Dablain et al. 2022, EOS)",
}
#: tau's allowed range per remedy, and the sweep of tau-norm
TAU_RANGE = {"tau-norm": (0.0, 2.0), "logit-adjust": (0.0, 4.0)}
TAU_GRID = tuple(round(0.1 * i, 1) for i in range(21))
#: the share of each class's test rows held out to choose tau when the store has no val sweep
TUNE_SHARE = 0.2
#: the columns a re-scored pass recomputes from ``fe``
DERIVED = ("logits", "pred", "ce_pred", "ce_target", "bias_pred")
#: the recipe of the retrained heads (cifar_train_os.py)
RECIPE = {"epochs": 10, "batch_size": 128, "lr": 0.1, "momentum": 0.9, "weight_decay": 2e-4, "warmup_epochs": 5}
CB_BETA = 0.9999
EOS_K = 10
#: the folder next to a store where remedied heads and results are saved
SUFFIX = ".remedies"


# ---------------------------------------------------------------------------------------------- the maths


def rescore(fe: np.ndarray, weight: np.ndarray, bias: np.ndarray, label: np.ndarray | None = None,
            block: int = 4096, want: Sequence[str] = DERIVED) -> dict[str, np.ndarray]:
    """The columns a linear head ``(weight (C, D), bias (C,))`` gives the rows ``fe``: ``logits`` (float64
    products summed, stored as float32), ``pred`` (their argmax), ``ce_pred = fe * W[pred]``, ``bias_pred``
    and, given labels, ``ce_target = fe * W[label]`` — in float32 from float32 ``fe``, as the recorder
    computes them (rows labelled -1 get class 0's; the analyzers drop them). ``want``: the CE columns needed."""
    fe32 = as_float32(fe)
    w32, b32 = np.asarray(weight, dtype=np.float32), np.asarray(bias, dtype=np.float32)
    n = len(fe32)
    logits = np.empty((n, len(b32)), dtype=np.float32)
    w64, b64 = w32.T.astype(np.float64), b32.astype(np.float64)
    for s in range(0, n, block):
        logits[s : s + block] = fe32[s : s + block].astype(np.float64) @ w64 + b64
    pred = np.nan_to_num(logits, nan=-np.inf).argmax(axis=1) if n else np.zeros(0, dtype=np.int64)
    out = {"logits": logits, "pred": pred.astype(np.int64), "bias_pred": b32[pred]}
    if "ce_pred" in want:
        out["ce_pred"] = fe32 * w32[pred]
    if label is not None and "ce_target" in want:
        out["ce_target"] = fe32 * w32[np.where(label >= 0, label, 0)]
    return out


def tau_norm(weight: np.ndarray, bias: np.ndarray, tau: float) -> tuple[np.ndarray, np.ndarray]:
    """``W_c / ||W_c||^tau`` (a zero row stays zero), ``b`` unchanged; float64 arithmetic, float32 result."""
    w = np.asarray(weight, dtype=np.float64)
    norm = np.linalg.norm(w, axis=1, keepdims=True)
    return (w / np.where(norm > 0, norm, 1.0) ** float(tau)).astype(np.float32), np.asarray(bias, dtype=np.float32).copy()


def logit_adjust(weight: np.ndarray, bias: np.ndarray, counts: np.ndarray, tau: float) -> tuple[np.ndarray, np.ndarray]:
    """``b_c - tau * log(n_c / sum n)`` (every class needs ``n_c > 0``), ``W`` unchanged."""
    counts = np.asarray(counts, dtype=np.float64)
    prior = counts / counts.sum()
    b = np.asarray(bias, dtype=np.float64) - float(tau) * np.log(prior)
    return np.asarray(weight, dtype=np.float32).copy(), b.astype(np.float32)


def class_balanced_weights(counts: np.ndarray, beta: float = CB_BETA) -> np.ndarray:
    """Cui et al.'s weights ``(1 - beta) / (1 - beta^n_c)``, normalised to sum to the number of classes with
    rows (LDAM-DRW's ``per_cls_weights``); 0 for a class without rows."""
    counts = np.asarray(counts, dtype=np.float64)
    have = counts > 0
    w = np.zeros(len(counts))
    w[have] = (1.0 - beta) / (1.0 - np.power(beta, counts[have]))
    return w / w.sum() * have.sum()


def eos_rows(fe: np.ndarray, labels: np.ndarray, num_classes: int, *, k: int = EOS_K, seed: int = 0,
             progress: Callable[[int], None] = lambda n: None) -> dict[str, np.ndarray]:
    """EOS's synthetic rows, as indices: for every class ``c`` with ``n_c < n_max``, ``n_max - n_c`` draws of
    a base (uniformly among the class's rows with at least one enemy among their ``k`` nearest other rows),
    of one of that base's enemy neighbours (uniformly among them) and of ``r ~ U[0, 1)``; the row is
    ``fe[base] + r * (fe[neighbour] - fe[base])``. Returns ``base``, ``neighbour``, ``r`` (float32) and
    ``label``; a class whose rows have no enemy gets none (``data["no_base"]`` lists it)."""
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels, minlength=num_classes)
    n_max = int(counts.max()) if len(counts) else 0
    minority = [c for c in range(num_classes) if 0 < counts[c] < n_max]
    rows = np.flatnonzero(np.isin(labels, minority))
    near = np.zeros((0, k), dtype=np.int64)
    parts = []
    for s in range(0, len(rows), 4096):
        parts.append(nearest_rows(fe, rows[s : s + 4096], k))
        progress(len(rows[s : s + 4096]))
    if parts:
        near = np.concatenate(parts)
    rng = np.random.RandomState(seed)
    base, neighbour, r, lab, no_base = [], [], [], [], []
    for c in minority:
        mine = labels[rows] == c
        enemy = labels[near[mine]] != c  # (n_c, k)
        has = enemy.any(axis=1)
        need = int(n_max - counts[c])
        if not has.any():
            no_base.append(c)
            continue
        b_rows, b_near, b_enemy = rows[mine][has], near[mine][has], enemy[has]
        pick = rng.randint(len(b_rows), size=need)
        # one enemy neighbour per draw, uniformly among the base's enemies: the j-th enemy, j < #enemies
        n_en = b_enemy[pick].sum(axis=1)
        j = np.floor(rng.random_sample(need) * n_en).astype(np.int64)
        order = np.argsort(~b_enemy[pick], axis=1, kind="stable")  # enemies first, in neighbour order
        nb = b_near[pick][np.arange(need), order[np.arange(need), j]]
        base.append(b_rows[pick])
        neighbour.append(nb)
        r.append(rng.random_sample(need).astype(np.float32))
        lab.append(np.full(need, c, dtype=np.int64))
    cat = (lambda xs, dt: np.concatenate(xs) if xs else np.zeros(0, dtype=dt))
    return {"base": cat(base, np.int64), "neighbour": cat(neighbour, np.int64), "r": cat(r, np.float32),
            "label": cat(lab, np.int64), "no_base": np.asarray(no_base, dtype=np.int64)}


def eos_features(fe: np.ndarray, syn: dict[str, np.ndarray], idx: np.ndarray) -> np.ndarray:
    """The synthetic rows ``idx`` of :func:`eos_rows`: ``fe[base] + r * (fe[neighbour] - fe[base])`` (float32)."""
    b, nb = fe[syn["base"][idx]], fe[syn["neighbour"][idx]]
    return b + syn["r"][idx][:, None] * (nb - b)


def train_head(fe: np.ndarray, labels: np.ndarray, num_classes: int, *, seed: int = 0, sampling: str = "shuffle",
               class_weight: np.ndarray | None = None, synthetic: dict[str, np.ndarray] | None = None,
               epochs: int = RECIPE["epochs"], device: str | None = None,
               progress: Callable[[int], None] = lambda n: None) -> tuple[np.ndarray, np.ndarray]:
    """A fresh linear head trained on ``fe`` (+ EOS ``synthetic`` rows, made batch by batch) with the recipe of
    ``cifar_train_os.py`` (:data:`RECIPE`). ``sampling="balanced"``: each epoch draws as many rows as there
    are, the class uniformly among those with rows, then the row uniformly in it (cRT); ``class_weight``:
    per-class loss weights (``torch.nn.CrossEntropyLoss(weight=...)``). Deterministic for a seed on CPU."""
    import torch

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    labels = np.asarray(labels, dtype=np.int64)
    n_real = len(labels)
    all_labels = labels if synthetic is None else np.concatenate([labels, synthetic["label"]])
    n = len(all_labels)
    d = fe.shape[1]
    with torch.random.fork_rng(devices=[] if dev.type == "cpu" else [dev]):
        torch.manual_seed(seed)
        head = torch.nn.Linear(d, num_classes).to(dev)
    opt = torch.optim.SGD(head.parameters(), lr=RECIPE["lr"], momentum=RECIPE["momentum"], weight_decay=RECIPE["weight_decay"])
    loss_fn = torch.nn.CrossEntropyLoss(weight=None if class_weight is None else torch.as_tensor(class_weight, dtype=torch.float32, device=dev))
    rng = np.random.RandomState(seed)
    by_class = np.argsort(all_labels, kind="stable")
    counts = np.bincount(all_labels, minlength=num_classes)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    present = np.flatnonzero(counts)
    bs = RECIPE["batch_size"]
    for epoch in range(epochs):
        lr = RECIPE["lr"] * (epoch + 1) / RECIPE["warmup_epochs"] if epoch < RECIPE["warmup_epochs"] else RECIPE["lr"]
        for g in opt.param_groups:
            g["lr"] = lr
        if sampling == "balanced":
            cls = present[rng.randint(len(present), size=n)]
            order = by_class[starts[cls] + np.floor(rng.random_sample(n) * counts[cls]).astype(np.int64)]
        else:
            order = rng.permutation(n)
        for s in range(0, n, bs):
            idx = order[s : s + bs]
            real, syn = idx[idx < n_real], idx[idx >= n_real] - n_real
            x = fe[real] if not len(syn) else np.concatenate([fe[real], eos_features(fe, synthetic, syn)])
            y = np.concatenate([labels[real], synthetic["label"][syn]]) if len(syn) else labels[real]
            xt, yt = torch.from_numpy(np.ascontiguousarray(x)).to(dev), torch.from_numpy(y).to(dev)
            opt.zero_grad(set_to_none=True)
            loss_fn(head(xt), yt).backward()
            opt.step()
        progress(1)
    return (head.weight.detach().cpu().numpy().astype(np.float32), head.bias.detach().cpu().numpy().astype(np.float32))


def objective(name: str, fe: np.ndarray, labels: np.ndarray, weight: np.ndarray, bias: np.ndarray, counts: np.ndarray) -> float:
    """The loss a retrained head minimises, in float64: ``crt`` the mean over classes of each class's mean
    cross-entropy (the expectation under class-balanced sampling), ``reweight`` the class-balanced weighted
    mean ``sum w_y CE / sum w_y``, otherwise the mean cross-entropy."""
    z = np.asarray(fe, dtype=np.float64) @ np.asarray(weight, dtype=np.float64).T + np.asarray(bias, dtype=np.float64)
    z -= z.max(axis=1, keepdims=True)
    ce = np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(labels)), labels]
    if name == "crt":
        per = np.bincount(labels, weights=ce, minlength=len(counts))
        have = counts > 0
        return float((per[have] / counts[have]).mean())
    if name == "reweight":
        w = class_balanced_weights(counts)[labels]
        return float((w * ce).sum() / w.sum())
    return float(ce.mean())


# ----------------------------------------------------------------------------------------- the store view


class Rescored(Store):
    """A read-only view of some passes of a store with their classifier replaced by ``(weight, bias)``:
    ``logits``, ``pred``, ``ce_pred``, ``ce_target`` and ``bias_pred`` are recomputed from the stored ``fe``
    (:func:`rescore`) and held in the store's storage dtype, as a recording with that head would hold them
    (predictions from the float32 logits, before any float16 rounding); every other column is read as stored. ``weight=None`` keeps the stored head and values.
    ``keep``: per pass name, a boolean mask of the rows to show (others are left out of every read through
    :meth:`iter_rows`). The base store stays open and owned by the caller."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Rescored:
        return object.__new__(cls)

    def __init__(self, base: Store, passes: Sequence[PassInfo], weight: np.ndarray | None = None, bias: np.ndarray | None = None,
                 keep: dict[str, np.ndarray] | None = None) -> None:
        self.base = base
        self.path = base.path
        self.metadata = base.metadata
        self.passes = list(passes)
        self.damaged = []
        self._files, self._keys = {}, {}
        self.weight = None if weight is None else np.asarray(weight, dtype=np.float32)
        self.bias = None if bias is None else np.asarray(bias, dtype=np.float32)
        self._keep = dict(keep or {})

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass

    def classifier(self, p: PassInfo) -> tuple[np.ndarray, np.ndarray]:
        return (self.weight, self.bias) if self.weight is not None else self.base.classifier(p)

    def read(self, p: PassInfo, columns: Sequence[str], start: int = 0, stop: int | None = None) -> dict[str, np.ndarray]:
        cols = list(dict.fromkeys(columns))
        derived = [c for c in cols if c in DERIVED]
        if self.weight is None or not derived:
            return self.base.read(p, cols, start, stop)
        raw = self.base.read(p, list(dict.fromkeys([c for c in cols if c not in DERIVED] + ["fe", "label"])), start, stop)
        new = rescore(raw["fe"], self.weight, self.bias, raw["label"] if "ce_target" in p.columns else None, want=derived)
        store_as = raw["fe"].dtype  # the float columns in the store's storage dtype, as a recording with this head holds them
        return {c: (new[c].astype(store_as, copy=False) if c in ("logits", "ce_pred", "ce_target") else new[c]) if c in DERIVED
                else raw[c] for c in cols}

    def iter_rows(self, passes, columns, *, chunk_rows=65536, classes=None, correct=None, positions=False, span=None):
        if chunk_rows < 1:
            raise SelectionError(f"chunk_rows={chunk_rows} must be positive")
        need = list(dict.fromkeys(list(columns) + ["label", "pred"]))
        for p in passes:
            keep = self._keep.get(p.name)
            dedup = self.base.keep_mask(p) if hasattr(self.base, "keep_mask") else None
            first, last = (0, p.rows) if span is None else (max(0, span[0]), min(p.rows, span[1]))
            for start in range(first, last, chunk_rows):
                stop = min(start + chunk_rows, last)
                rows = self.read(p, need, start, stop)  # re-scored first: correctness is the new head's
                mask = row_filter(rows["label"], rows["pred"], classes, correct)
                for m in (keep, dedup):
                    if m is not None:
                        mask &= m[start:stop]
                if not mask.any():
                    continue
                out = {c: rows[c][mask] for c in columns}
                if positions:
                    out["row"] = np.arange(start, stop, dtype=np.int64)[mask]
                yield p, out


# ------------------------------------------------------------------------------------------ running them


@dataclass
class _Setup:
    store: Store
    epoch: int
    test: list[PassInfo]
    train: list[PassInfo]
    tune: list[PassInfo] | None
    keep: dict[str, np.ndarray]
    weight: np.ndarray
    bias: np.ndarray
    counts: np.ndarray
    notes: list[str] = field(default_factory=list)


def _plain_head(store: Store) -> None:
    """Refuse a head a remedied ``(W, b)`` cannot stand in for: only one plain ``nn.Linear`` (or dense 1x1
    conv) whose input is the stored FE."""
    head = str(store.metadata.get("head", "?"))
    why = None
    if "+" in head:
        why = "it averages several classifier layers, so one remedied (W, b) could not be loaded back into any of them"
    elif store.metadata.get("head_shared_input"):
        why = "it averages two heads on one input, so one remedied (W, b) could not be loaded back into either"
    elif not (head.endswith("(Linear)") or head.endswith("(Conv2d)")):
        kind = head.rsplit("(", 1)[-1].rstrip(")") if "(" in head else head
        why = (f"it is a {kind}, not a plain nn.Linear: its map is not W·FE + b with free W and b (LDAM's NormedLinear normalises "
               f"both), so a remedied head would not be of its form")
    if why:
        raise RemedyError(f"store {store.path}: head {head!r:.80} is refused: {why}; remedies need a model whose classifier is "
                          f"one plain nn.Linear")


def _sweep(store: Store, split: str, epoch: int) -> list[PassInfo]:
    return [p for p in store.select(split=split, epoch=epoch) if p.rows and p.complete]


def _setup(store: Store, epoch: int | str, seed: int, tune: bool) -> _Setup:
    _plain_head(store)
    splits = {p.split for p in store.passes if p.rows}
    if TRAIN_EVAL not in splits:
        raise RemedyError(
            f"store {store.path} has no eval sweep of the training set (split {TRAIN_EVAL!r}), which remedies train on: "
            f"record one after training with rec.evaluate(train_loader, split={TRAIN_EVAL!r}) (un-augmented images, eval mode)"
        )
    if "test" not in splits:
        raise RemedyError(f"store {store.path} has no test sweep to evaluate remedies on: record one with "
                          f"rec.evaluate(test_loader, split='test')")
    both = sorted({p.epoch for p in store.passes if p.split == "test" and p.rows and p.complete}
                  & {p.epoch for p in store.passes if p.split == TRAIN_EVAL and p.rows and p.complete})
    if not both:
        raise RemedyError(f"store {store.path} holds no epoch with both a complete test sweep and a complete {TRAIN_EVAL} sweep; "
                          f"record both after the same epoch")
    if epoch == "last":
        e = both[-1]
    else:
        try:
            e = int(epoch)
        except (TypeError, ValueError):
            raise RemedyError(f"epoch {epoch!r} is not an epoch number or 'last'") from None
        if e not in both:
            raise RemedyError(f"epoch {e} of store {store.path} lacks a complete test or {TRAIN_EVAL} sweep; epochs with both: "
                              f"{', '.join(map(str, both))}")
    test, train = _sweep(store, "test", e), _sweep(store, TRAIN_EVAL, e)
    weight, bias = store.classifier(test[-1])
    C, D = store.num_classes, store.feature_dim
    if weight.shape != (C, D) or bias.shape != (C,):
        raise RemedyError(f"store {store.path}: the test sweep's classifier is {weight.shape}, not ({C}, {D}); re-record it")
    labels = np.concatenate([store.read(p, ["label"])["label"] for p in train])
    counts = np.bincount(labels[labels >= 0], minlength=C)
    notes = []
    tw, tb = store.classifier(train[-1])
    if not (np.array_equal(tw, weight) and np.array_equal(tb, bias)):
        notes.append(f"the {TRAIN_EVAL}@{e} and test@{e} sweeps were recorded with different heads; remedies start from the test sweep's")
    keep: dict[str, np.ndarray] = {}
    tune_passes = None
    if tune:
        if "val" in splits and _sweep(store, "val", e):
            tune_passes = _sweep(store, "val", e)
            notes.append(f"tau chosen on the val@{e} sweep")
        else:  # a seeded slice of each class's test rows chooses tau and is left out of every evaluation
            lab = [store.read(p, ["label"])["label"] for p in test]
            allp = np.concatenate(lab)
            held = np.zeros(len(allp), dtype=bool)
            rng = np.random.RandomState(seed)
            for c in range(C):
                rows = np.flatnonzero(allp == c)
                held[rng.permutation(rows)[: int(len(rows) * TUNE_SHARE)]] = True
            at = 0
            for p, part in zip(test, lab):
                keep[p.name] = ~held[at : at + len(part)]
                at += len(part)
            tune_passes = test
            notes.append(
                f"tau chosen on {int(held.sum())} held-out test rows ({TUNE_SHARE:.0%} of each class, seed {seed}); every number "
                f"here, before and after, is on the other {int((~held).sum())} test rows"
            )
    return _Setup(store, e, test, train, tune_passes, keep, weight, bias, counts, notes)


def _rows(store: Store, passes: Sequence[PassInfo], what: str, keep: dict[str, np.ndarray] | None = None,
          invert: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``fe`` (float32) and labels of the labelled, finite rows of ``passes`` (a mask per pass: those rows, or
    the others with ``invert``)."""
    n = sum(p.rows for p in passes)
    check_memory(f"{what}: {n} rows x {store.feature_dim} features", 4 * n * store.feature_dim,
                 "record fewer rows per sweep, or run remedies on a machine with more memory")
    fe_all = np.empty((n, store.feature_dim), dtype=np.float32)  # filled in place: no second copy of the rows
    lab_all = np.empty(n, dtype=np.int64)
    at = 0
    for p in passes:
        for _, rows in store.iter_rows([p], ["fe", "label"], positions=True):
            m = rows["label"] >= 0
            if keep is not None and p.name in keep:
                k = keep[p.name][rows["row"]]
                m &= ~k if invert else k
            fe = as_float32(rows["fe"])
            m &= np.isfinite(fe).all(axis=1)
            got = int(m.sum())
            fe_all[at : at + got] = fe[m]
            lab_all[at : at + got] = rows["label"][m]
            at += got
    return fe_all[:at], lab_all[:at]


def balanced_accuracy(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """Mean over the classes present of each class's accuracy (recall)."""
    n = np.bincount(labels, minlength=num_classes)
    hit = np.bincount(labels[pred == labels], minlength=num_classes)
    have = n > 0
    return float((hit[have] / n[have]).mean()) if have.any() else float("nan")


def _choose_tau(s: _Setup) -> tuple[float, list[list[Any]]]:
    """tau-norm's tau: the best balanced accuracy on the held-out rows over :data:`TAU_GRID` (ties: smaller tau)."""
    invert = s.tune is s.test  # the held-out test rows are the ones *not* kept for evaluation
    fe, y = _rows(s.store, s.tune, "tuning rows", s.keep if invert else None, invert=invert)
    best, rows = None, []
    for tau in TAU_GRID:  # each tau's head scored as the evaluation will score it
        w, b = tau_norm(s.weight, s.bias, tau)
        score = balanced_accuracy(rescore(fe, w, b)["pred"], y, len(s.bias))
        rows.append([tau, score])
        if best is None or score > best[1]:
            best = (tau, score)
    return best[0], rows


def _fingerprint(passes: Sequence[PassInfo], weight: np.ndarray, bias: np.ndarray) -> str:
    """What a saved head depends on: the store's sweeps (names, rows, times) and the original head."""
    h = hashlib.sha256()
    for p in passes:
        h.update(f"{p.name}:{p.rows}:{p.started}:{p.finished};".encode())
    h.update(weight.tobytes())
    h.update(bias.tobytes())
    return h.hexdigest()[:16]


def head_path(store_path: str, name: str, out: str | None = None) -> str:
    return os.path.join(out or os.path.normpath(store_path) + SUFFIX, f"{name}.pt")


def save_head(path: str, weight: np.ndarray, bias: np.ndarray, options: dict[str, Any]) -> None:
    import torch

    tmp = path + ".tmp"
    try:
        torch.save({"weight": torch.from_numpy(weight), "bias": torch.from_numpy(bias), "options": json.dumps(options)}, tmp)
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(f"cannot write the remedied head {path}: {exc.strerror or exc}; choose another --out folder") from None


def read_head(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """A saved remedied head: ``(weight, bias, options)``."""
    import torch

    path = os.fspath(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        w, b = state["weight"].numpy(), state["bias"].numpy()
        options = json.loads(state["options"])
    except FileNotFoundError:
        raise RemedyError(f"no remedied head at {path}; run `fragility remedy` on the store first") from None
    except Exception as exc:  # noqa: BLE001 - any unreadable file
        raise RemedyError(f"{path} is not a remedied head written by fragility ({type(exc).__name__}); run `fragility remedy` again") from None
    if w.ndim != 2 or b.shape != (w.shape[0],) or not isinstance(options, dict):
        raise RemedyError(f"{path} is not a remedied head written by fragility (weight {tuple(w.shape)}, bias {tuple(b.shape)})")
    return w, b, options


def load_head(model: Any, path: str | os.PathLike) -> Any:
    """Copy a remedied head into ``model.get_classifier()`` (an ``nn.Linear``, or a dense 1x1 ``nn.Conv2d``) in
    place; returns that module. The backbone is untouched, so the model then predicts with the remedy.

    Example:
        >>> fragility.remedies.load_head(model, "run.fragility.remedies/tau-norm.pt")  # doctest: +SKIP
    """
    import torch

    w, b, _ = read_head(path)
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    if not isinstance(head, (torch.nn.Linear, torch.nn.Conv2d)):
        raise RemedyError(f"model {type(model).__name__}: get_classifier() gives {type(head).__name__}, not an nn.Linear; "
                          f"copy the weight and bias of {path} into its classifier yourself")
    want = tuple(head.weight.shape[:2])
    if want != w.shape or head.bias is None:
        raise RemedyError(f"the remedied head {path} is {w.shape[0]} classes x {w.shape[1]} features, the model's classifier is "
                          f"{want[0]} x {want[1]}{'' if head.bias is not None else ' without a bias'}; load it into the model the store was recorded from")
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(w).reshape(head.weight.shape))
        head.bias.copy_(torch.from_numpy(b))
    return head


def _check(names: Sequence[str], tau: float | None) -> list[str]:
    out = []
    for n in names:
        if n not in REMEDIES:
            raise RemedyError(f"remedy {n!r} is unknown{close_matches(n, REMEDIES)}; remedies: {', '.join(REMEDIES)}")
        if n not in out:
            out.append(n)
    if not out:
        raise RemedyError(f"no remedy given; choose from {', '.join(REMEDIES)}")
    if tau is not None:
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau):
            raise RemedyError(f"tau={tau!r} is not a number")
        if not set(out) & set(TAU_RANGE):
            raise RemedyError(f"tau applies to {' and '.join(TAU_RANGE)} only; leave it out for {', '.join(out)}")
        for n in out:
            lo, hi = TAU_RANGE.get(n, (None, None))
            if lo is not None and not lo <= tau <= hi:
                raise RemedyError(f"tau={tau} is out of range for {n}: it must lie in [{lo:g}, {hi:g}]")
    return out


#: the per-class quantities shown before vs after: (analyzer, key, column)
QUANTITIES = (("topk", "accuracy", "acc"), ("topk", "unique", "unique"), ("topk", "unique_rarefied", "unique@m"),
              ("magnitude", "ratio_correct", "ratio"), ("magnitude", "share_below_p5", "<p5"))


def _per_class(results: dict[str, Result], group: str) -> list[dict[str, Any]]:
    t, m = topk_records(results["topk"]).groups[group].classes, magnitude_records(results["magnitude"]).groups[group].classes
    return [{"class": a.name, "n": a.n, "accuracy": a.accuracy, "accuracy_ci": a.accuracy_ci, "unique": a.unique,
             "unique_rarefied": a.unique_rarefied, "ratio_correct": b.ratio_correct, "share_below_p5": b.share_below_p5,
             "share_below_p5_ci": b.share_below_p5_ci} for a, b in zip(t, m)]


def _separate(a: Sequence[float] | None, b: Sequence[float] | None) -> bool:
    return bool(a and b and a[0] is not None and b[0] is not None and (a[1] < b[0] or b[1] < a[0]))


def _summary(classes: list[dict[str, Any]], counts: np.ndarray) -> dict[str, float]:
    n = np.array([c["n"] for c in classes], dtype=float)
    acc = np.array([np.nan if c["accuracy"] is None else c["accuracy"] for c in classes], dtype=float)
    have = n > 0
    tail = [c for c in np.argsort(counts, kind="stable")[: max(1, len(counts) // 3)] if have[c]]
    return {"accuracy": float(np.nansum(acc * n) / n.sum()) if n.sum() else float("nan"),
            "balanced_accuracy": float(np.nanmean(acc[have])) if have.any() else float("nan"),
            "tail_accuracy": float(np.nanmean(acc[tail])) if tail else float("nan")}


def remedy(
    store: Store | str | os.PathLike,
    remedies: Sequence[str] | None = None,
    *,
    tau: float | None = None,
    epoch: int | str = "last",
    seed: int = 0,
    k: int | None = None,
    out: str | os.PathLike | None = None,
    device: str | None = None,
    progress: bool = False,
) -> Result:
    """Try head-level remedies on a store and show, per class, what each changes on the test sweep.

    Args:
        store: a store (or its path) with an eval sweep of the training set (``train_eval``) and a test
            sweep at the same epoch.
        remedies: names from :data:`REMEDIES` (default: all of them).
        tau: tau of ``tau-norm`` (default: swept on a held-out slice, see the module doc) and of
            ``logit-adjust`` (default 1).
        epoch: the epoch whose sweeps to use (default: the last with both).
        seed: seeds the held-out slice, the retrained heads' initialisation and sampling, and EOS's draws.
        k: top-K size of the re-analysis (default: 10, or D if smaller).
        out: where to save the remedied heads (``<name>.pt``) and ``remedy.json``; default
            ``<store>.remedies`` next to the store (the store itself is never modified). A head saved
            there by the same options on the same sweeps is reused, not recomputed.
        device: torch device of the retrained heads (default: CUDA when present).

    Returns:
        A :class:`Result` named ``remedy``: a summary table, a before/after table per remedy, and
        ``data["remedies"][name]`` with ``options``, ``head`` (the saved file), ``summary`` and ``classes``
        (per class: before/after pairs of accuracy, unique top-K, magnitude ratio, share below p5).
    """
    names = _check(list(REMEDIES) if remedies is None else [remedies] if isinstance(remedies, str) else list(remedies), tau)
    own = not isinstance(store, Store)
    st = Store(store) if own else store
    try:
        return _remedy(st, names, tau, epoch, seed, k, out, device, progress)
    finally:
        if own:
            st.close()


def _remedy(st, names, tau, epoch, seed, k, out, device, progress) -> Result:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise RemedyError(f"seed={seed!r} must be a non-negative integer")
    sweep_tau = "tau-norm" in names and tau is None
    s = _setup(st, epoch, int(seed), sweep_tau)
    folder = output_dir(os.fspath(out) if out is not None else os.path.normpath(st.path) + SUFFIX)
    C = st.num_classes
    notes = list(s.notes)
    if (s.counts == 0).any():
        empty = [st.class_names[c] for c in np.flatnonzero(s.counts == 0)]
        if "logit-adjust" in names:
            raise RemedyError(f"class {empty[0]!r} has no rows in the {TRAIN_EVAL}@{s.epoch} sweep, so its prior is 0 and logit "
                              f"adjustment is undefined; record the sweep over the whole training set")
        notes.append(f"classes without training rows ({', '.join(empty[:5])}) get no retraining rows")
    fp = _fingerprint(s.test + s.train, s.weight, s.bias)
    heads: dict[str, tuple[np.ndarray, np.ndarray, dict[str, Any]]] = {}
    fe = y = None
    tuning = None
    for name in names:
        opts: dict[str, Any] = {"remedy": name, "epoch": s.epoch, "fingerprint": fp}
        if name == "tau-norm":
            if tau is None:
                t, grid = _choose_tau(s)
                tuning = {"grid": grid, "chosen": t, "rows": "val" if s.tune is not s.test else "held-out test rows"}
                opts.update(tau=t, tau_chosen_on=tuning["rows"], seed=int(seed))
            else:
                opts.update(tau=float(tau))
        elif name == "logit-adjust":
            opts.update(tau=1.0 if tau is None else float(tau))
        else:
            opts.update(seed=int(seed), **RECIPE, **({"beta": CB_BETA} if name == "reweight" else {}),
                        **({"k": EOS_K} if name == "eos" else {}))
        path = head_path(st.path, name, folder)
        if os.path.exists(path):
            try:
                w, b, saved = read_head(path)
            except RemedyError:
                saved = None
            if saved is not None and {k2: saved.get(k2) for k2 in opts} == opts:  # the same request on the same sweeps
                heads[name] = (w, b, {**saved, "head": path, "reused": True})
                continue
        if name == "tau-norm":
            w, b = tau_norm(s.weight, s.bias, opts["tau"])
        elif name == "logit-adjust":
            w, b = logit_adjust(s.weight, s.bias, s.counts, opts["tau"])
        else:
            if fe is None:
                fe, y = _rows(st, s.train, f"the {TRAIN_EVAL}@{s.epoch} sweep")
            syn = None
            if name == "eos":
                with _progress(progress, int(np.isin(y, np.flatnonzero((s.counts > 0) & (s.counts < s.counts.max()))).sum()),
                               "eos: nearest neighbours", "rows") as advance:
                    syn = eos_rows(fe, y, C, seed=int(seed), progress=advance)
                opts["synthetic_rows"] = int(len(syn["label"]))
                if len(syn["no_base"]):
                    notes.append(f"eos: class(es) {', '.join(st.class_names[c] for c in syn['no_base'])} have no row with an enemy among "
                                 f"their {EOS_K} nearest neighbours, so no synthetic rows")
            with _progress(progress, RECIPE["epochs"], f"{name}: training the head", "epochs") as advance:
                w, b = train_head(fe, y, C, seed=int(seed), device=device, progress=advance,
                                  sampling="balanced" if name == "crt" else "shuffle",
                                  class_weight=class_balanced_weights(s.counts) if name == "reweight" else None, synthetic=syn)
            opts["objective"] = objective(name, fe, y, w, b, s.counts)
        save_head(path, w, b, opts)
        heads[name] = (w, b, {**opts, "head": path, "reused": False})
    fe = y = None

    sel = s.test + [p for p in s.train if p not in s.test]
    common = dict(split="test", epoch=s.epoch, reference_split=TRAIN_EVAL, reference_epoch=s.epoch,
                  k=min(10, st.feature_dim) if k is None else k)
    group = f"test@{s.epoch}"
    total = 1 + len(heads)
    before = analyze(Rescored(st, sel, keep=s.keep), ["topk", "magnitude"], **common)
    base = _per_class(before, group)
    data: dict[str, Any] = {"store": st.path, "epoch": s.epoch, "test_rows": int(sum(c["n"] for c in base)),
                            "train_counts": s.counts.tolist(), "tuning": tuning, "remedies": {}}
    data["recorded"] = _summary(base, s.counts)
    summary_rows = [["(recorded head)", *_fmt_summary(data["recorded"]), "-"]]
    tables = []
    with _progress(progress, total - 1, "re-analysing", "remedies") as advance:
        for name, (w, b, opts) in heads.items():
            after = _per_class(analyze(Rescored(st, sel, w, b, keep=s.keep), ["topk", "magnitude"], **common), group)
            classes, rows = [], []
            for c, (b0, a0) in enumerate(zip(base, after)):
                entry = {"class": b0["class"], "n_train": int(s.counts[c]), "n": b0["n"]}
                for _, key, _col in QUANTITIES:
                    entry[key] = [b0[key], a0[key]]
                entry["accuracy_ci"] = [b0["accuracy_ci"], a0["accuracy_ci"]]
                entry["share_below_p5_ci"] = [b0["share_below_p5_ci"], a0["share_below_p5_ci"]]
                entry["accuracy_changed"] = _separate(b0["accuracy_ci"], a0["accuracy_ci"])
                classes.append(entry)
                rows.append([b0["class"], int(s.counts[c]), b0["n"]] +
                            [_pair(b0[key], a0[key]) for _, key, _col in QUANTITIES] + ["yes" if entry["accuracy_changed"] else ""])
            summ = _summary([{"n": c["n"], "accuracy": c["accuracy"][1]} for c in classes], s.counts)
            data["remedies"][name] = {"options": {k2: v for k2, v in opts.items() if k2 not in ("head", "reused")},
                                      "head": opts["head"], "reused": opts["reused"], "summary": summ, "classes": classes}
            summary_rows.append([name, *_fmt_summary(summ), _opt_text(opts)])
            tables.append(Table(f"{name} vs the recorded head, test@{s.epoch}: before → after",
                                ["class", "n train", "n", *[col for _, _, col in QUANTITIES], "acc CI apart"], rows))
            advance(1)
    order = np.argsort(s.counts, kind="stable")
    for t in tables:  # classes from the smallest training class up: the minority classes first
        t.rows[:] = [t.rows[i] for i in order]
    tables.insert(0, Table(f"remedies on {os.path.basename(os.path.normpath(st.path))}, test@{s.epoch}",
                           ["head", "accuracy", "balanced acc", "tail acc", "options"], summary_rows))
    notes.append("acc = test accuracy; unique = distinct top-K CE features (unique@m: in m rows, size-controlled); ratio = "
                 "test/train mean CE magnitude at the class's training top-K (correct rows); <p5 = share of test rows below "
                 "the training 5th percentile; FE-only quantities (participation ratio, k-NN) cannot change with the head. "
                 "'acc CI apart': the 95 % Wilson intervals before and after do not overlap. tail = the third of the classes "
                 "with the fewest training rows")
    result = Result("remedy", tables, data, notes)
    try:
        with open(os.path.join(folder, "remedy.json"), "w") as fh:
            fh.write(result.to_json(indent=1))
    except OSError as exc:
        raise OutputError(f"cannot write {folder}/remedy.json: {exc.strerror or exc}; choose another --out folder") from None
    return result


@dataclass(frozen=True)
class RemedyClass:
    """One class, before → after a remedy: each quantity is a ``[recorded head, remedied head]`` pair."""

    name: str = field(metadata={"key": "class"})
    n_train: int
    n: int
    accuracy: list
    unique: list
    unique_rarefied: list
    ratio_correct: list
    share_below_p5: list
    accuracy_ci: list
    share_below_p5_ci: list
    accuracy_changed: bool


@dataclass(frozen=True)
class RemedySummary:
    """Test accuracy of a head: over all rows, balanced (mean over classes) and over the tail third of the classes."""

    accuracy: float
    balanced_accuracy: float
    tail_accuracy: float


@dataclass(frozen=True)
class RemedyOutcome:
    """What one remedy changed: its options, the saved head, the summary and the classes."""

    options: dict
    head: str
    reused: bool
    summary: RemedySummary
    classes: list[RemedyClass]


@dataclass(frozen=True)
class RemedyRecords:
    """The result of :func:`remedy` as records."""

    store: str
    epoch: int
    test_rows: int
    train_counts: list
    tuning: Any
    remedies: dict[str, RemedyOutcome]
    recorded: RemedySummary | None


def remedy_records(result: Result) -> RemedyRecords:
    """The result of :func:`remedy` (or its ``remedy.json``, loaded) as records."""
    return build(RemedyRecords, result.data)


def _pair(a: Any, b: Any) -> str:
    return f"{_fmt(a)} → {_fmt(b)}"


def _fmt_summary(s: dict[str, float]) -> list[str]:
    return [f"{s[k]:.3f}" if math.isfinite(s[k]) else "-" for k in ("accuracy", "balanced_accuracy", "tail_accuracy")]


def _opt_text(opts: dict[str, Any]) -> str:
    bits = [f"tau {opts['tau']:g}" + (f" (on {opts['tau_chosen_on']})" if "tau_chosen_on" in opts else "")] if "tau" in opts else []
    if "seed" in opts and "tau" not in opts:
        bits.append(f"seed {opts['seed']}, {opts['epochs']} epochs")
    if "synthetic_rows" in opts:
        bits.append(f"{opts['synthetic_rows']} synthetic rows")
    if opts.get("reused"):
        bits.append("saved head reused")
    return ", ".join(bits)


def saved_results(store: Store) -> RemedyRecords | None:
    """The records of the ``remedy.json`` saved next to a store by :func:`remedy` with the default folder, if it
    still describes the store's sweeps (same fingerprint); ``None`` otherwise. The file is untrusted input: it
    is bounded in size, and only remedies of :data:`REMEDIES` whose entries have the expected shape are kept
    (the values inside are still checked by whoever shows them)."""
    path = os.path.join(os.path.normpath(store.path) + SUFFIX, "remedy.json")
    try:
        if not os.path.isfile(path) or os.path.islink(path) or os.path.getsize(path) > 64 << 20:
            return None
        with open(path) as fh:
            doc = json.load(fh)
        data = doc["data"]
        epoch = data["epoch"]
        test, train = _sweep(store, "test", epoch), _sweep(store, TRAIN_EVAL, epoch)
        weight, bias = store.classifier(test[-1])
        fp = _fingerprint(test + train, weight, bias)
        C = store.num_classes
        kept = {}
        for name, entry in data["remedies"].items():
            if name in REMEDIES and entry["options"]["fingerprint"] == fp and isinstance(entry["classes"], list) \
                    and len(entry["classes"]) == C and all(isinstance(c, dict) for c in entry["classes"]):
                kept[name] = entry
        outcomes = {}
        for name, entry in kept.items():  # an entry that is not a remedy's record (a key missing) is left out
            try:
                outcomes[name] = build(RemedyOutcome, entry)
            except (KeyError, TypeError, AttributeError):
                continue
        if not outcomes:
            return None
        try:
            recorded = build(RemedySummary, data["recorded"])
        except (KeyError, TypeError, AttributeError):
            recorded = None
        return dataclasses.replace(build(RemedyRecords, {**data, "remedies": {}, "recorded": None}), remedies=outcomes, recorded=recorded)
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError, RecursionError, FragilityError):
        return None

