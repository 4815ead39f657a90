"""Fused per-row kernels over the float16 bits of a chunk: exact, shared between analyzers, compiled ahead of time.

The C functions in ``_ckernels.c`` are built when the package is installed (``setup.py``), so no process
pays a compiler or a JIT load. One pass over each row of a float16 chunk computes what ``topk`` (and
``diversity``'s instance counts) otherwise derive from an ``(N, D)`` mask, one-hot GEMMs and float64
copies: the row's top-K features (the tie rule built into the scan: the lower index wins), the class sums
of the embedding split by correctness, and the minimal sufficient CE set. Results are **bit-identical** to
the numpy/torch path in :mod:`._maths`, which stays the fallback (float32 stores, no compiled module,
``FRAGILITY_NO_KERNELS=1``); the tests run both on the same stores. Why exact:

* float16 values are multiples of 2**-24 below 2**16, so a float64 sum of them is exact while it stays
  below 2**29 in magnitude — any summation order then gives the same value. A chunk whose sums could
  exceed that (``max|v| · rows ≥ 2**29``) is handed to the fallback.
* minimal sets take a row's positive CE entries in descending order (ties: lower index first) until their
  running sum reaches the runner-up's gap; with exact sums only the order of the entries matters, and the
  kernel keeps it: entries are bucketed by the top byte of their float16 bits (which orders positive
  values), whole buckets are added, and only the bucket where the sum crosses the gap is sorted.

Rows are split across :func:`threads` threads (the C code releases the GIL), each with private outputs
that are added at the end. ``FRAGILITY_NO_KERNELS=1`` turns the kernels off.
"""

from __future__ import annotations

import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

try:
    from . import _ckernels
except ImportError:  # built without a C compiler: the numpy path runs (same results, slower)
    _ckernels = None

EXACT_SUM_LIMIT = 2.0**29
_pool: ThreadPoolExecutor | None = None
_local = threading.local()
_blas = None


def enabled() -> bool:
    return _ckernels is not None and os.environ.get("FRAGILITY_NO_KERNELS", "") in ("", "0")


def threads() -> int:
    """Threads for the kernels: torch's setting (``OMP_NUM_THREADS`` / ``torch.set_num_threads``) when torch is
    loaded; else ``OMP_NUM_THREADS`` or the CPUs this process may use (results never depend on it)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return max(1, torch.get_num_threads())
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "")))
    except ValueError:
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def _executor(t: int) -> ThreadPoolExecutor:
    global _pool
    if _pool is None or _pool._max_workers < t:
        _pool = ThreadPoolExecutor(t, thread_name_prefix="fragility-kernel")
    return _pool


#: the private outputs of all threads together stay below this (many classes x wide rows on many cores)
THREAD_OUTPUT_BYTES = 256 << 20


#: row ranges a chunk is cut into for the kernels, whatever the number of threads
PARTS = 8


def _parallel(n: int, work, out_bytes: int = 0) -> list:
    """``work(lo, hi)`` over row ranges splitting ``n`` rows, results in range order. The ranges depend on
    ``n`` and ``out_bytes`` only — at most :data:`PARTS`, at least 512 rows each, their private outputs
    together under :data:`THREAD_OUTPUT_BYTES` — never on the number of threads that run them, so sums
    reduced from the parts are the same bits on any machine, any thread setting and any Dask worker."""
    parts = max(1, min(PARTS, n // 512, THREAD_OUTPUT_BYTES // max(out_bytes, 1)))
    bounds = [n * i // parts for i in range(parts + 1)]
    t = min(threads(), parts)
    if t == 1:
        return [work(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]
    return list(_executor(t).map(work, bounds[:-1], bounds[1:]))


def _one_blas_thread():
    """A context in which BLAS libraries use one thread (threadpoolctl; libraries loaded later keep theirs)."""
    global _blas
    if _blas is None:
        from threadpoolctl import ThreadpoolController

        _blas = ThreadpoolController()
    return _blas.limit(limits=1, user_api="blas")


def _usable(a: np.ndarray | None) -> bool:
    return a is not None and a.dtype == np.float16 and a.ndim == 2 and 0 < a.shape[1] < 65536


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.uint16)


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
    C = num_classes
    if not enabled() or not _usable(v16) or len(v16) == 0 or not 0 < k <= v16.shape[1]:
        return None
    if do_mscs and (not _usable(ce16) or ce16.shape != v16.shape or np.shape(logits) != (len(v16), C)):
        return None
    n, d = v16.shape
    vb = _bits(v16)
    lab = np.ascontiguousarray(labels, dtype=np.int64)
    ok = np.ascontiguousarray(correct, dtype=np.uint8)
    if do_mscs:
        cb = _bits(ce16)
        lg = np.ascontiguousarray(logits, dtype=np.float64)
        pr = np.ascontiguousarray(pred, dtype=np.int64)
        bs = np.ascontiguousarray(np.broadcast_to(bias, (n,)), dtype=np.float64)
    else:
        lg, pr, bs = np.zeros((n, C)), np.zeros(n, dtype=np.int64), np.zeros(n)

    def work(lo: int, hi: int):
        out = (np.zeros((C, d), np.int64), np.zeros((2, C, d)), np.zeros((C, d) if do_mscs else (1, 1), np.int64),
               np.zeros(C if do_mscs else 1, np.int64))
        peaks = _ckernels.topk_rows(vb[lo:hi], cb[lo:hi] if do_mscs else None, lab[lo:hi], ok[lo:hi], lg[lo:hi], pr[lo:hi],
                                    bs[lo:hi], hi - lo, d, C, int(k), *out)
        return out, peaks

    parts = _parallel(n, work, out_bytes=C * d * 8 * (4 if do_mscs else 3))
    peak_v = max(p[1][0] for p in parts)
    peak_ce = max(p[1][1] for p in parts)
    if peak_v * n >= EXACT_SUM_LIMIT or peak_ce * d >= EXACT_SUM_LIMIT:  # a sum could have rounded: not used
        return None
    total = [sum(p[0][i] for p in parts) for i in range(4)]
    out = {"count": total[0], "sum_correct": total[1][0], "sum_incorrect": total[1][1]}
    if do_mscs:
        out["mscs_count"], out["mscs_size"] = total[2], total[3]
    return out


def class_sums(v16: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray | None:
    """``(C, D)`` float64 class sums of float16 rows (exact), or ``None`` where the fallback must run."""
    if not enabled() or not _usable(v16):
        return None
    n, d = v16.shape
    vb, lab = _bits(v16), np.ascontiguousarray(labels, dtype=np.int64)

    def work(lo: int, hi: int):
        out = np.zeros((num_classes, d))
        return out, _ckernels.class_sums(vb[lo:hi], lab[lo:hi], hi - lo, d, num_classes, out)

    parts = _parallel(n, work, out_bytes=num_classes * d * 8)
    if max((p[1] for p in parts), default=0.0) * n >= EXACT_SUM_LIMIT:
        return None
    return sum(p[0] for p in parts)


def row_means(v16: np.ndarray, labels: np.ndarray, identity: np.ndarray) -> np.ndarray | None:
    """Each float16 row's mean (float64, exact sum) over the features ``identity[label]`` (``(C, K)``), or
    ``None`` where numpy must compute it."""
    if not enabled() or not _usable(v16) or identity.ndim != 2 or identity.shape[1] == 0:
        return None
    if identity.shape[1] * 65504.0 >= EXACT_SUM_LIMIT:  # K float16 values could sum past the exact range
        return None
    n, d = v16.shape
    vb, lab = _bits(v16), np.ascontiguousarray(labels, dtype=np.int64)
    ident = np.ascontiguousarray(identity, dtype=np.int64)
    out = np.empty(n)
    _parallel(n, lambda lo, hi: _ckernels.gather_mean(vb[lo:hi], lab[lo:hi], ident, hi - lo, d, ident.shape[0], ident.shape[1],
                                                      out[lo:hi]))
    return out


def finite_rows(a: np.ndarray) -> np.ndarray | None:
    """Rows of a 2-D float16 array without inf or NaN (bool), or ``None`` where numpy must check."""
    if not enabled() or a.dtype != np.float16 or a.ndim != 2:
        return None
    out = np.empty(len(a), dtype=np.uint8)
    _ckernels.finite_rows(_bits(a), len(a), a.shape[1], out)
    return out.view(bool)


def _scratch(size: int) -> np.ndarray:
    """A float64 work buffer of this thread, reused across chunks (a fresh 64 MB one costs its page faults)."""
    buf = getattr(_local, "buf", None)
    if buf is None or buf.size < size:
        buf = _local.buf = np.empty(size)
    return buf[:size]


def diversity_sums(fe16: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, np.ndarray] | None:
    """``diversity``'s per-chunk sums from float16 FE, or ``None`` where the fallback must run: ``sum_fe`` (C, D),
    ``sum_unit`` (C, D) of the rows divided by their norm (non-zero rows), ``n_unit`` (C,), and ``sum_fefe``
    (C, D, D) float64 second moments (rows converted once, grouped by class, one GEMM per class)."""
    if not enabled() or not _usable(fe16):
        return None
    n, d = fe16.shape
    C = num_classes
    vb, lab = _bits(fe16), np.ascontiguousarray(labels, dtype=np.int64)
    order = np.argsort(lab, kind="stable")
    bounds = np.searchsorted(lab[order], np.arange(C + 1))
    xs = _scratch(n * d).reshape(n, d)

    def work(lo: int, hi: int):
        sums = (np.zeros((C, d)), np.zeros((C, d)), np.zeros(C, np.int64))
        return sums, _ckernels.diversity_rows(vb, lab, order[lo:hi], n, hi - lo, d, C, xs[lo:hi], *sums)

    parts = _parallel(n, work, out_bytes=C * d * 16)
    if max((p[1] for p in parts), default=0.0) * n >= EXACT_SUM_LIMIT:
        return None
    sum_fe, sum_unit, n_unit = (sum(p[0][i] for p in parts) for i in range(3))
    sum_fefe = np.zeros((C, d, d))
    sizes = np.diff(bounds)
    shares: list[list[int]] = [[] for _ in range(max(1, min(threads(), int((sizes > 0).sum()))))]
    load = [0] * len(shares)
    for c in np.argsort(-sizes, kind="stable"):  # the largest classes first, each to the least loaded thread
        if sizes[c]:
            i = load.index(min(load))
            shares[i].append(int(c))
            load[i] += int(sizes[c])

    def moments(cs: list[int]) -> None:
        for c in cs:
            x = xs[bounds[c] : bounds[c + 1]]
            np.matmul(x.T, x, out=sum_fefe[c])  # x.T @ x: BLAS's symmetric rank-k update

    with _one_blas_thread():  # one GEMM per thread, so that no BLAS thread spins idle after it
        if len(shares) == 1:
            moments(shares[0])
        else:
            list(_executor(len(shares)).map(moments, shares))
    return {"sum_fe": sum_fe, "sum_unit": sum_unit, "n_unit": n_unit, "sum_fefe": sum_fefe}


def knn_block(g: np.ndarray, sq: np.ndarray, a0: int, b0: int, best_v: np.ndarray, best_i: np.ndarray) -> None:
    """Rows ``a0 + r`` and ``b0 + c`` of the Gram block ``g`` offer each other to their lists of the
    ``best_v.shape[1]`` nearest (only the rows ``a`` on the diagonal, ``a0 == b0``); see
    :func:`._maths.knn_same_class`. Threads take disjoint ranges of both sides."""
    R, M = g.shape
    N, kk = best_v.shape
    _parallel(R, lambda lo, hi: _ckernels.knn_block(g, R, M, sq, a0, b0, kk, lo, hi, lo * M // R, hi * M // R,
                                                    best_v, best_i, N))
