"""Compare two stores (balanced vs imbalanced run, one loss vs another), class by class."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .._fingerprint import incomparable as _incomparable
from .._manager import PluginManager, manager
from ..errors import AnalyzerError
from ..store import Store
from ._maths import overlap, rarefied_unique
from ._results import Result, Table, last_group
from ._engine import analyze


def compare(
    store_a: Store | str | os.PathLike,
    store_b: Store | str | os.PathLike,
    *,
    k: int = 10,
    embedding: str = "ce",
    test_split: str = "test",
    train_split: str = "train",
    epoch: int | str = "last",
    labels: tuple[str, str] = ("A", "B"),
    plugin_manager: PluginManager | None = None,
    progress: bool = False,
    force_overlap: bool = False,
) -> Result:
    """Per class: top-K identity overlap between the runs, unique counts, magnitudes and accuracy.

    Both stores must have the same classes. The last epoch of each split is used by default. Feature-index
    overlaps are computed only when both stores record the same architecture and initial weights (else
    feature ``j`` of one network is unrelated to feature ``j`` of the other): otherwise the result holds
    index-free quantities and a note says why; ``force_overlap=True`` computes them anyway, labelled so.
    """
    metas = []
    for store in (store_a, store_b):
        if isinstance(store, Store):
            metas.append(store.metadata)
        else:
            with Store(store) as s:
                metas.append(s.metadata)
    why = _incomparable(*metas)
    plugin_manager = manager(plugin_manager)  # one for both runs
    runs = [
        analyze(
            store, ["topk", "magnitude"], split=[train_split, test_split], epoch=epoch, k=k, embedding=embedding,
            reference_split=None if train_split == "train" else train_split, plugin_manager=plugin_manager, progress=progress,
        )
        for store in (store_a, store_b)
    ]
    return compare_results(runs[0], runs[1], labels=labels, test_split=test_split, train_split=train_split, incomparable=why,
                           force_overlap=force_overlap)


def compare_results(
    results_a: dict[str, Result],
    results_b: dict[str, Result],
    *,
    labels: tuple[str, str] = ("A", "B"),
    test_split: str = "test",
    train_split: str = "train",
    incomparable: str | None = None,
    force_overlap: bool = False,
) -> Result:
    """The comparison of :func:`compare` from ``analyze`` results already at hand (``topk`` and ``magnitude``
    of each run), so nothing is read twice. ``incomparable``: why the runs' feature indices do not match
    (:func:`fragility._fingerprint.incomparable`); then no overlap is computed unless ``force_overlap``."""
    overlaps = incomparable is None or force_overlap
    runs = [results_a, results_b]
    for run in runs:
        missing = {"topk", "magnitude"} - set(run)
        if missing:
            raise AnalyzerError(f"compare needs the {', '.join(sorted(missing))} results of both runs")
    ta, tb = runs[0]["topk"].data, runs[1]["topk"].data
    k = ta["k"]
    ma, mb = runs[0]["magnitude"].data, runs[1]["magnitude"].data

    def group(data: dict[str, Any], split: str) -> dict[str, Any]:
        found = last_group(data, split)
        if found is None:
            raise AnalyzerError(f"compare needs split {split!r} in both stores")
        return found

    names_a = [c["class"] for c in group(ta, test_split)["classes"]]
    names_b = [c["class"] for c in group(tb, test_split)["classes"]]
    if names_a != names_b:
        raise AnalyzerError(f"the stores have different classes ({names_a} vs {names_b}); compare runs of the same task")
    la, lb = labels
    rows = []
    classes = []
    tra, trb = group(ta, train_split)["classes"], group(tb, train_split)["classes"]
    # size-controlled unique counts at one m for both runs: the smallest training class of either, from the
    # instance top-K frequencies each result keeps (count = freq * n)
    sizes = [c["n"] for c in (*tra, *trb) if c["n"]]
    m = min(sizes) if sizes else 0

    def rarefied(entries) -> list[float | None]:
        n = np.array([e["n"] for e in entries])
        counts = np.array([np.rint(np.asarray(e["freq"], dtype=np.float64) * e["n"]) for e in entries])
        vals = rarefied_unique(counts, n, m) if m else np.full(len(entries), np.nan)
        return [None if np.isnan(v) else float(v) for v in vals]

    ra, rb = rarefied(tra), rarefied(trb)
    tea, teb = group(ta, test_split)["classes"], group(tb, test_split)["classes"]
    mga = group(ma, test_split)["classes"]
    mgb = group(mb, test_split)["classes"]
    for c, name in enumerate(names_a):
        def ident(entry):
            return entry["topk"]["all"]["indices"] if entry["n"] else None

        ov_train = overlap(ident(tra[c]), ident(trb[c]), k) if overlaps and tra[c]["n"] and trb[c]["n"] else None
        ov_test = overlap(ident(tea[c]), ident(teb[c]), k) if overlaps and tea[c]["n"] and teb[c]["n"] else None
        entry = {
            "class": name,
            f"n_train_{la}": tra[c]["n"], f"n_train_{lb}": trb[c]["n"],
            "overlap_train": ov_train, "overlap_test": ov_test,
            f"unique_{la}": tra[c]["unique"], f"unique_{lb}": trb[c]["unique"],
            f"unique_rarefied_{la}": ra[c], f"unique_rarefied_{lb}": rb[c],
            f"accuracy_{la}": tea[c]["accuracy"], f"accuracy_{lb}": teb[c]["accuracy"],
            f"train_magnitude_{la}": _f(ma["train_mean"][c]), f"train_magnitude_{lb}": _f(mb["train_mean"][c]),
            f"test_ratio_{la}": mga[c]["ratio_correct"], f"test_ratio_{lb}": mgb[c]["ratio_correct"],
        }
        classes.append(entry)
        rows.append([name, tra[c]["n"], trb[c]["n"], tea[c]["accuracy"], teb[c]["accuracy"], tra[c]["unique"], trb[c]["unique"],
                     ra[c], rb[c], *([ov_train, ov_test] if overlaps else []), entry[f"train_magnitude_{la}"], entry[f"train_magnitude_{lb}"]])
    forced = " (forced: not comparable)" if incomparable is not None and force_overlap else ""
    cols = ["class", f"n train {la}", f"n train {lb}", f"accuracy {la}", f"accuracy {lb}", f"unique {la}", f"unique {lb}",
            f"unique@m {la}", f"unique@m {lb}", *([f"top-K overlap train{forced}", f"top-K overlap test{forced}"] if overlaps else []),
            f"train magnitude {la}", f"train magnitude {lb}"]
    notes = []
    if incomparable is not None:
        notes.append(f"top-K overlaps between the runs {'computed although' if force_overlap else 'not computed:'} {incomparable}"
                     + ("" if force_overlap else " (force_overlap / --force-overlap computes them anyway, labelled so)"))
    return Result(
        "compare",
        tables=[Table(f"{la} vs {lb}: per class (top-{k} {ta['embedding']}; unique counted on the training split; unique@m = "
                      f"expected in m={m} rows, the size-controlled count)", cols, rows)],
        data={"labels": list(labels), "k": k, "rarefy_m": m or None, "classes": classes, "feature_overlap": overlaps,
              "incomparable": incomparable, "forced": bool(forced)},
        notes=notes,
    )


def _f(x: Any) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return None if x != x else x
