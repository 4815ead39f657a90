"""Conformance harness for analyzers — the built-ins and third parties' run the same checks.

Every analyzer must give identical results (up to float summation order) for chunk sizes 1, 7 and the
whole store, and when the rows are split into parts whose states are merged; and it must agree with an
independent reference computation, which the analyzer's author supplies.

Example (in a plugin's test suite)::

    from fragility.testing import check_analyzer, make_random_store

    def test_my_analyzer(tmp_path):
        path = make_random_store(tmp_path / "s.fragility", seed=0)
        check_analyzer("my-analyzer", path, expected=lambda store: {...})
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ._manager import PluginManager
from .analysis import Result, analyze
from .analysis._engine import make_plan
from .store import Store, StoreWriter

__all__ = ["assert_close", "assert_results_equal", "check_analyzer", "make_random_store"]


def make_random_store(
    path: str | os.PathLike,
    *,
    counts: Sequence[int] = (40, 20, 10, 3, 0),
    d: int = 12,
    passes: Sequence[tuple[str, int]] = (("train", 0), ("test", 0), ("train", 1), ("test", 1)),
    seed: int = 0,
    ties: bool = True,
    nonfinite: int = 0,
    unlabelled: int = 0,
    dtype: str = "float32",
    moving: bool = True,
    compression: str | None = None,
    class_names: Sequence[str] | None = None,
) -> str:
    """Write a small store of random rows whose columns obey every invariant of the format.

    ``fe`` is non-negative (like pooled ReLU features); with ``ties=True`` values are rounded to one
    decimal so equal values (and tie-breaking) are common. Classes with count 0 are empty. Rows are
    written in batches of 9; in ``train`` passes with ``moving=True`` every batch has its own classifier
    (the weights move inside a training pass, as under SGD) and the pass's snapshot is the last one.
    ``logits`` are ``fe @ W.T + b`` of the row's batch; ``pred`` is their argmax; CE columns are
    ``fe * W[pred]`` and ``fe * W[label]``; ``bias_pred`` is ``b[pred]``. ``unlabelled`` rows per pass get
    label ``-1``; ``dtype`` is the storage dtype of the float columns, ``compression`` the writer's option;
    ``class_names`` default to ``c0``, ``c1``, ….
    """
    rng = np.random.default_rng(seed)
    c = len(counts)
    path = os.fspath(path)
    w = StoreWriter(
        path,
        {"model_name": "random", "head": "random.fc(Linear)", "num_classes": c, "class_names": list(class_names or [f"c{i}" for i in range(c)]),
         "feature_dim": d, "rank": 0, "plugins": [], "fragility_version": "test"},
        dtype=dtype, chunk_rows=16, overwrite=True, compression=compression,
    )
    for i, (split, epoch) in enumerate(passes):
        name = f"{i:04d}"
        train = split == "train"
        weight = rng.normal(size=(c, d)).round(1 if ties else 6).astype(np.float32)
        bias = rng.normal(size=c).round(1 if ties else 6).astype(np.float32)
        labels = np.repeat(np.arange(c), counts)
        rng.shuffle(labels)
        n = len(labels)
        fe = np.abs(rng.normal(size=(n, d)) + labels[:, None] * 0.3 * (np.arange(d) % (labels[:, None] + 2) == 0))
        fe = fe.round(1 if ties else 6).astype(np.float32)
        if nonfinite and n:
            fe[rng.choice(n, size=min(nonfinite, n), replace=False), 0] = np.nan
        stored = labels.copy()
        if unlabelled and n:
            stored[rng.choice(n, size=min(unlabelled, n), replace=False)] = -1
        w.begin_pass(name, {"split": split, "epoch": epoch, "mode": "train" if train else "eval", "rank": 0})
        for s in range(0, n, 9):
            sl = slice(s, s + 9)
            if train and moving and s:  # an SGD step between batches: W and b move
                weight = (weight + rng.normal(size=weight.shape) * 0.3).round(1 if ties else 6).astype(np.float32)
                bias = (bias + rng.normal(size=c) * 0.5).round(1 if ties else 6).astype(np.float32)
            if s == 0:
                w.write_classifier(name, weight, bias)
            logits = (fe[sl].astype(np.float64) @ weight.T.astype(np.float64) + bias).astype(np.float32)
            pred = np.nan_to_num(logits, nan=-np.inf).argmax(axis=1)
            m = len(pred)
            w.append(name, {
                "fe": fe[sl], "ce_pred": fe[sl] * weight[pred], "ce_target": fe[sl] * weight[labels[sl]],
                "bias_pred": bias[pred], "logits": logits, "label": stored[sl], "pred": pred, "index": np.arange(n)[sl],
                "step": np.zeros(m, dtype=np.int64), "rank": np.zeros(m, dtype=np.int32),
            })
        w.end_pass(name, weight, bias)
    w.close()
    return path


def assert_close(a: Any, b: Any, *, rtol: float = 1e-9, atol: float = 1e-12, where: str = "") -> None:
    """Recursive equality: exact for ints/strings/None, ``rtol``/``atol`` for floats."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), f"{where}: keys differ: {sorted(a)} vs {sorted(b)}"
        for k in a:
            assert_close(a[k], b[k], rtol=rtol, atol=atol, where=f"{where}.{k}")
        return
    if isinstance(a, (list, tuple, np.ndarray)) and isinstance(b, (list, tuple, np.ndarray)):
        a, b = (x.tolist() if isinstance(x, np.ndarray) else list(x) for x in (a, b))
        assert len(a) == len(b), f"{where}: lengths differ: {len(a)} vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close(x, y, rtol=rtol, atol=atol, where=f"{where}[{i}]")
        return
    fa = isinstance(a, (float, np.floating))
    fb = isinstance(b, (float, np.floating))
    if fa or fb:
        a_nan = a is None or (fa and math.isnan(a))
        b_nan = b is None or (fb and math.isnan(b))
        assert a_nan == b_nan, f"{where}: {a!r} vs {b!r}"
        if not a_nan:
            assert math.isclose(float(a), float(b), rel_tol=rtol, abs_tol=atol), f"{where}: {a!r} vs {b!r}"
        return
    if isinstance(a, np.generic):
        a = a.item()
    if isinstance(b, np.generic):
        b = b.item()
    assert a == b, f"{where}: {a!r} vs {b!r}"


def assert_results_equal(r1: Result, r2: Result, **tol: float) -> None:
    assert_close(r1.to_dict(), r2.to_dict(), where=r1.analyzer, **tol)


def _merged_result(name: str, store: Store, kwargs: dict[str, Any], pm: PluginManager | None, parts: int) -> Result:
    """Split the work into 5-row units dealt round-robin to ``parts`` analyzers, merge their states, compute."""
    plan = make_plan(store, [name], plugin_manager=pm, **kwargs)
    workers = [plan.instances(pm) for _ in range(parts)]
    for i, unit in enumerate(plan.units(plan.reference, rows=5)):
        plan.fold_reference(store, workers[i % parts], [unit])
    head = workers[0][0]
    if head.uses_reference:
        for w in workers[1:]:
            head.merge_reference(w[0])
        for w in workers[1:]:  # broadcast the reduced reference, as a DDP/Dask driver would
            w[0].ref = copy.deepcopy(head.ref)
        for w in workers:
            w[0].end_reference()
    skipped: dict[str, dict[str, int]] = {}
    for i, unit in enumerate(plan.units(plan.passes + plan.extra, rows=5)):
        plan.fold_main(store, workers[i % parts], [unit], skipped)
    for w in workers[1:]:
        head.merge(w[0])
    return plan.finish([head], skipped)[name]


def check_analyzer(
    name: str,
    store_path: str | os.PathLike,
    *,
    expected: Callable[[Store], dict[str, Any]] | None = None,
    plugin_manager: PluginManager | None = None,
    rtol: float = 1e-9,
    **kwargs: Any,
) -> Result:
    """Run the conformance checks on analyzer ``name`` over a store; return the whole-store result.

    1. chunk sizes 1 and 7 give the same result as one chunk holding the whole store;
    2. rows split across 2 and 3 analyzers whose states are merged give the same result (computed from the
       merged state, where :func:`analyze` finishes each group after its last rows: ``finish_group`` must
       not change a result);
    3. if ``expected(store)`` is given, every key it returns matches ``result.data`` (recursively).
    """
    with Store(store_path) as store:
        whole = analyze(store, [name], chunk_rows=10**9, plugin_manager=plugin_manager, **kwargs)[name]
        for chunk_rows in (1, 7):
            got = analyze(store, [name], chunk_rows=chunk_rows, plugin_manager=plugin_manager, **kwargs)[name]
            assert_results_equal(whole, got, rtol=rtol)
        for parts in (2, 3):
            merged = _merged_result(name, store, kwargs, plugin_manager, parts)
            assert_results_equal(whole, merged, rtol=rtol)
        if expected is not None:
            want = expected(store)
            for key, value in want.items():
                assert_close(_dig(whole.data, key), value, rtol=max(rtol, 1e-7), atol=1e-9, where=key)
    return whole


def _dig(data: Any, key: str) -> Any:
    """``"groups/test@0/classes/2/n"`` → nested lookup."""
    cur = data
    for part in key.split("/"):
        cur = cur[int(part)] if isinstance(cur, (list, tuple, np.ndarray)) else cur[part]
    return cur
