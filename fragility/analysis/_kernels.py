"""Fused per-row kernels (numba) over the float16 bits of a chunk: exact, and shared between analyzers.

One pass over each row of a float16 chunk computes what ``topk`` (and ``diversity``'s instance counts)
otherwise derive from an ``(N, D)`` mask, one-hot GEMMs and float64 copies: the row's top-K features (the
tie rule built into the scan: the lower index wins), the class sums of the embedding split by
correctness, and the minimal sufficient CE set. Results are **bit-identical** to the numpy/torch path in
:mod:`._maths`, which stays the fallback (float32 stores, no numba, ``FRAGILITY_NO_KERNELS=1``); the
tests run both on the same stores. Why exact:

* float16 values are multiples of 2**-24 below 2**16, so a float64 sum of them is exact while it stays
  below 2**29 in magnitude — any summation order then gives the same value. A chunk whose rows could
  exceed that (``max|v| · rows ≥ 2**29``) is handed to the fallback.
* minimal sets take a row's positive CE entries in descending order (ties: lower index first) until their
  running sum reaches the runner-up's gap; with exact sums only the order of the entries matters, and the
  kernel keeps it: entries are bucketed by the top byte of their float16 bits (which orders positive
  values), whole buckets are added, and only the bucket where the sum crosses the gap is sorted.

Compiled once per machine into numba's cache (``cache=True``) by the first large chunk; later processes
load it (about a second, so chunks below :data:`MIN_VALUES` values run the numpy path). ``FRAGILITY_NO_KERNELS=1``
turns the kernels off.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np

EXACT_SUM_LIMIT = 2.0**29
#: chunks with fewer values than this run the numpy path: there numba's per-process load (~1 s) would cost more
MIN_VALUES = 1 << 20

HAVE_NUMBA = importlib.util.find_spec("numba") is not None
_LUT = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32)
_compiled = None


def enabled() -> bool:
    return HAVE_NUMBA and os.environ.get("FRAGILITY_NO_KERNELS", "") in ("", "0")


def _kernels():
    """The compiled kernels, or ``None`` when numba cannot load here (the fallback runs instead)."""
    global _compiled, HAVE_NUMBA
    if _compiled is None:
        try:
            from . import _kernels_numba

            _compiled = _kernels_numba
        except Exception:  # noqa: BLE001 - a broken numba/llvmlite install means: use the fallback
            HAVE_NUMBA = False
    return _compiled


def topk_update(v16: np.ndarray, ce16: np.ndarray | None, labels: np.ndarray, correct: np.ndarray, k: int, num_classes: int,
                logits: np.ndarray | None = None, pred: np.ndarray | None = None, bias: np.ndarray | None = None
                ) -> dict[str, np.ndarray] | None:
    """Per-chunk sums of the ``topk`` analyzer from float16 columns, or ``None`` where the fallback must
    run (no kernels, not float16, or sums that could be inexact).

    Returns ``count`` (C, D) top-K membership counts and ``sum_correct`` / ``sum_incorrect`` (C, D) float64
    class sums of the embedding; given ``ce16`` (``ce_pred``), ``logits``, ``pred`` and each row's ``bias``,
    also ``mscs_count`` (C, D) and ``mscs_size`` (C,) of the minimal sufficient sets.
    """
    do_mscs = ce16 is not None and logits is not None and pred is not None and bias is not None
    if not enabled() or v16.dtype != np.float16 or v16.ndim != 2 or (do_mscs and ce16.dtype != np.float16):
        return None
    n, d = v16.shape
    if n == 0 or d >= 65536 or n * d < MIN_VALUES:
        return None
    kernels = _kernels()
    if kernels is None:
        return None
    import numba

    T = max(1, min(numba.get_num_threads(), n // 256 or 1))
    C = num_classes
    count = np.zeros((T, C, d), dtype=np.int64)
    sums = np.zeros((T, 2, C, d), dtype=np.float64)
    mcount = np.zeros((T, C, d) if do_mscs else (T, 1, 1), dtype=np.int64)
    msize = np.zeros((T, C), dtype=np.int64)
    peak = np.zeros(T)
    vb = np.ascontiguousarray(v16).view(np.uint16)
    if do_mscs:
        cb = np.ascontiguousarray(ce16).view(np.uint16)
        lg = np.ascontiguousarray(logits, dtype=np.float64)
        pr = np.ascontiguousarray(pred, dtype=np.int64)
        bs = np.ascontiguousarray(bias, dtype=np.float64)
    else:
        cb, lg, pr, bs = vb, np.zeros((n, 1)), np.zeros(n, dtype=np.int64), np.zeros(n)
    kernels._topk_chunk(vb, cb, _LUT, np.ascontiguousarray(labels, dtype=np.int64), np.ascontiguousarray(correct, dtype=np.bool_),
                lg, pr, bs, int(k), C, do_mscs, count, sums, mcount, msize, peak)
    if float(peak.max()) * n >= EXACT_SUM_LIMIT:  # a sum could have rounded: the results are not used
        return None
    out = {"count": count.sum(axis=0), "sum_correct": sums[:, 0].sum(axis=0), "sum_incorrect": sums[:, 1].sum(axis=0)}
    if do_mscs:
        out["mscs_count"], out["mscs_size"] = mcount.sum(axis=0), msize.sum(axis=0)
    return out
