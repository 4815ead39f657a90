"""The maths of the analyzers as pure functions (docs/analyzers.md). Ties are broken by lower feature index.

The analyzer classes wrap these; the same functions serve live and offline use. Heavy per-row work
(top-K selection) runs through torch's multi-threaded kernels; results are exact and tie-stable. torch is
imported by the functions that use it, when they run: the compiled kernels' path (float16 stores) needs none,
so store commands such as ``watch`` never load it.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import numpy as np

from . import _kernels

if TYPE_CHECKING:
    import torch

__all__ = [
    "class_sums",
    "class_topk",
    "instance_counts",
    "jaccard",
    "knn_same_class",
    "mean_pairwise_cosine",
    "minimal_sets",
    "normalized_entropy",
    "overlap",
    "participation_ratio",
    "topk_mask",
    "topk_order",
]


def _t(a: np.ndarray | torch.Tensor) -> torch.Tensor:
    import torch

    t = a if isinstance(a, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(a))
    return t.float() if t.dtype == torch.float16 else t  # torch converts float16 ~7x faster than numpy


def as_float32(a: np.ndarray) -> np.ndarray:
    """``a`` as float32 (fast conversion from float16 through torch when it is loaded; numpy's gives the same values)."""
    if "torch" in sys.modules:
        return _t(a).float().numpy()
    return np.ascontiguousarray(a, dtype=np.float32)


def topk_order(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest entries of a 1-D array, largest first, ties by lower index."""
    values = np.asarray(values)
    order = np.lexsort((np.arange(values.shape[-1]), -values.astype(np.float64)))
    return order[:k]


def topk_mask(v: np.ndarray | torch.Tensor, k: int) -> np.ndarray:
    """Boolean ``(N, D)`` mask of each row's top-``k`` entries (ties at the boundary: lower index wins)."""
    import torch

    t = _t(v)
    if t.shape[0] == 0:
        return np.zeros(tuple(t.shape), dtype=bool)
    kth = torch.topk(t, k, dim=1, sorted=False).values.min(dim=1, keepdim=True).values
    mask = t >= kth
    tied = torch.nonzero(mask.sum(dim=1) > k).flatten()
    if len(tied):  # more than k entries reach the k-th value: keep the lower-index ones among the equal
        sub = t[tied]
        greater = sub > kth[tied]
        eq = sub == kth[tied]
        rank = torch.cumsum(eq.to(torch.int32), dim=1)
        need = (k - greater.sum(dim=1)).unsqueeze(1)
        mask[tied] = greater | (eq & (rank <= need))
    return mask.numpy()


def class_sums(labels: np.ndarray, v: np.ndarray | torch.Tensor, num_classes: int) -> np.ndarray:
    """Per-class sums of the rows of ``v`` (float64, ``(C, D)``); float16 rows through the exact kernel."""
    if isinstance(v, np.ndarray) and (out := _kernels.class_sums(v, labels, num_classes)) is not None:
        return out
    import torch

    t = _t(v).double()
    out = torch.zeros((num_classes, t.shape[1]), dtype=torch.float64)
    out.index_add_(0, torch.from_numpy(np.asarray(labels, dtype=np.int64)), t)
    return out.numpy()


def instance_counts(labels: np.ndarray, mask: np.ndarray, num_classes: int) -> np.ndarray:
    """``count[c, j]`` = rows of class ``c`` whose mask holds ``j`` (int64, ``(C, D)``)."""
    import torch

    out = np.zeros((num_classes, mask.shape[1]), dtype=np.int64)
    lab = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    m = torch.from_numpy(mask)
    step = 1 << 22  # float32 counts are exact below 2**24 rows per block
    for s in range(0, len(lab), step):
        onehot = torch.nn.functional.one_hot(lab[s : s + step], num_classes).T.float()
        out += (onehot @ m[s : s + step].float()).round().to(torch.int64).numpy()
    return out


def class_topk(sums: np.ndarray, counts: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class top-K identity from per-class sums and row counts.

    Returns ``(indices (C, k), values (C, k), share (C, k))``: the top-``k`` features of each class mean,
    their mean values, and each value's share of the top-``k`` sum. Classes with no rows get ``-1`` / NaN.
    """
    C, D = sums.shape
    idx = np.full((C, k), -1, dtype=np.int64)
    val = np.full((C, k), np.nan)
    share = np.full((C, k), np.nan)
    for c in range(C):
        if counts[c] == 0:
            continue
        mean = sums[c] / counts[c]
        order = topk_order(mean, k)
        idx[c], val[c] = order, mean[order]
        total = val[c].sum()
        share[c] = val[c] / total if total != 0 else np.nan
    return idx, val, share


def minimal_sets(ce_pred: np.ndarray, logits: np.ndarray, pred: np.ndarray, bias_pred: np.ndarray, probe: int = 32) -> np.ndarray:
    """Minimal sufficient CE sets (arXiv 2407.10165) as a boolean ``(N, D)`` mask.

    For row ``n`` with predicted class ``p``, its bias ``b_p = bias_pred[n]`` (per row: in a training pass
    the bias moves between rows) and runner-up ``r`` (largest other logit): start from
    ``b_p + sum of negative entries of CE_p``; add the largest entries (ties: lower index first) until the
    total reaches ``logit_r``. The added indices form ``S_n`` (empty when the start already reaches it).

    The ``probe`` largest entries of each row settle almost every row; rows they do not settle (or whose
    cut falls inside a run of equal values at the probe's edge) are redone with a full stable sort.
    """
    import torch

    ce = _t(ce_pred)
    n, d = ce.shape
    out = torch.zeros((n, d), dtype=torch.bool)
    if n == 0:
        return out.numpy()
    lg = _t(logits).double()
    p = torch.from_numpy(np.asarray(pred, dtype=np.int64))
    others = lg.clone()
    others[torch.arange(n), p] = -torch.inf
    runner = others.max(dim=1).values
    start = torch.from_numpy(np.asarray(bias_pred, dtype=np.float64)) + ce.clamp(max=0).sum(dim=1, dtype=torch.float64)
    gap = runner - start  # what the positive entries must add up to
    pending = torch.nonzero(gap > 0).flatten()
    m = min(probe, d)
    while len(pending):
        rows = pending
        vals, idx = torch.topk(ce[rows], m, dim=1, sorted=True)
        # equal values in index order: stable sort by index, then stable sort by value (descending)
        o = torch.argsort(idx, dim=1, stable=True)
        vals, idx = torch.gather(vals, 1, o), torch.gather(idx, 1, o)
        o = torch.argsort(-vals, dim=1, stable=True)
        vals, idx = torch.gather(vals, 1, o), torch.gather(idx, 1, o)
        vals64 = vals.double().clamp(min=0)  # float32 -> float64 is exact: same values as the rows' own
        cum = torch.cumsum(vals64, dim=1)
        reached = cum >= gap[rows].unsqueeze(1)
        hit = reached.any(dim=1)
        count = torch.where(hit, reached.to(torch.int8).argmax(dim=1) + 1, (vals64 > 0).sum(dim=1))
        if m < d:
            # not settled: the probe ran out of positive entries, or the cut falls in a run of values equal
            # to the probe's last one (lower-index equals outside the probe might belong before them)
            last = torch.gather(vals, 1, (count - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
            unsettled = (~hit & (vals[:, -1] > 0)) | ((count > 0) & (last == vals[:, -1]))
        else:
            unsettled = torch.zeros(len(rows), dtype=torch.bool)
        fast = ~unsettled
        take = torch.arange(m).unsqueeze(0) < count[fast].unsqueeze(1)
        r_idx = rows[fast].unsqueeze(1).expand(-1, m)[take]
        out[r_idx, idx[fast][take]] = True
        pending = rows[unsettled]
        m = min(d, m * 4)
    return out.numpy()


def rarefy_size(m: object, n: np.ndarray) -> int:
    """The subsample size of size-controlled quantities: ``m`` if given (a positive integer, else an
    AnalyzerError), else the smallest non-empty class of ``n`` (0 when no class has rows)."""
    if m is not None:
        if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1:
            from ..errors import AnalyzerError

            raise AnalyzerError(f"rarefy_m={m!r} must be a positive number of rows (the subsample size of the size-controlled unique counts)")
        return int(m)
    sizes = np.asarray(n)[np.asarray(n) > 0]
    return int(sizes.min()) if len(sizes) else 0


def rarefied_unique(counts: np.ndarray, n: np.ndarray, m: int) -> np.ndarray:
    """Expected number of distinct features in a random subsample of ``m`` of a class's rows (incidence
    rarefaction, Colwell et al. 2012): ``sum_j 1 - C(n - f_j, m) / C(n, m)`` with ``f_j = counts[c, j]``, the
    rows of the class whose top-K (or minimal set) holds feature ``j``. Exact, from the counts alone: the
    average of the unique count over all ``C(n, m)`` subsets of ``m`` rows. ``nan`` for a class with fewer
    than ``m`` rows (or none).

    Args:
        counts: ``(C, D)`` integer incidence counts. n: ``(C,)`` rows per class. m: subsample size (≥ 1).
    """
    from scipy.special import gammaln

    counts = np.asarray(counts, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    out = np.full(len(n), np.nan)
    for c in np.flatnonzero((n >= m) & (n > 0)):
        f = counts[c][counts[c] > 0]
        rest = n[c] - f  # rows without the feature
        # C(rest, m) / C(n, m) = Γ(rest+1) Γ(n-m+1) / (Γ(rest-m+1) Γ(n+1)), zero when rest < m
        absent = np.zeros_like(f)
        ok = rest >= m
        absent[ok] = np.exp(gammaln(rest[ok] + 1) + gammaln(n[c] - m + 1) - gammaln(rest[ok] - m + 1) - gammaln(n[c] + 1))
        out[c] = float((1.0 - absent).sum())
    return out


def wilson(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float] | None:
    """Wilson's score interval (1927) for a binomial share ``successes / n`` (95 % by default); ``None`` for
    ``n = 0``. Unlike the normal approximation it stays inside [0, 1] and keeps its coverage on small classes."""
    if n <= 0:
        return None
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    lo = 0.0 if successes <= 0 else max(0.0, centre - half)  # exact ends: no rounding past the observed share
    hi = 1.0 if successes >= n else min(1.0, centre + half)
    return float(lo), float(hi)


def normalized_entropy(counts: np.ndarray, d: int) -> float:
    """Entropy of the frequency distribution ``counts / counts.sum()`` divided by ``log(d)`` (0…1)."""
    total = counts.sum()
    if total == 0 or d < 2:
        return float("nan")
    p = counts[counts > 0] / total
    return float(-(p * np.log(p)).sum() / np.log(d))


def participation_ratio(sum_x: np.ndarray, sum_xx: np.ndarray, n: int) -> float:
    """``(tr Σ)² / tr(Σ²)`` of the covariance from streamed sums (scale-free; needs ``n >= 2``)."""
    if n < 2:
        return float("nan")
    mean = sum_x / n
    cov = sum_xx / n - np.outer(mean, mean)
    tr = np.trace(cov)
    tr2 = float((cov * cov).sum())
    return float(tr * tr / tr2) if tr2 > 0 else float("nan")


#: rows above which a class's ratio interval is the normal approximation instead of a bootstrap (the two agree
#: closely there, and the bootstrap's cost — draws × rows — would rival the whole analysis on large stores)
BOOTSTRAP_MAX_ROWS = 20000


def bootstrap_mean_ratio(x: np.ndarray, scale: float, draws: int = 200, seed: int = 0,
                         means: np.ndarray | None = None) -> list[float] | None:
    """95 % interval of ``mean(x) / scale``: a seeded percentile bootstrap (``draws`` resamples of ``x`` with
    replacement, 16 at a time so memory stays small) up to BOOTSTRAP_MAX_ROWS values, the normal
    approximation ``mean ± 1.96 sd / sqrt(n)`` beyond. None for fewer than 2 values or a zero/non-finite scale.
    ``means``: the resamples' means, :func:`resample_means` ``(x, draws, seed)`` computed earlier (the same
    numbers: the costly part can run as soon as ``x`` is known, before ``scale`` is)."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    if n < 2 or not scale or not np.isfinite(scale) or draws < 1:
        return None
    if n > BOOTSTRAP_MAX_ROWS:
        half = 1.959963984540054 * float(np.std(x, ddof=1)) / np.sqrt(n)
        lo, hi = (float(x.mean()) - half) / scale, (float(x.mean()) + half) / scale
        return [min(lo, hi), max(lo, hi)]
    means = (resample_means(x, draws, seed) if means is None else means) / scale
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def resample_means(x: np.ndarray, draws: int = 200, seed: int = 0) -> np.ndarray | None:
    """The means of :func:`bootstrap_mean_ratio`'s ``draws`` seeded resamples of ``x`` (float64), or None where
    it needs none (fewer than 2 values, more than BOOTSTRAP_MAX_ROWS, no draws)."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    if n < 2 or n > BOOTSTRAP_MAX_ROWS or draws < 1:
        return None
    rng = np.random.default_rng(seed)
    return np.concatenate([x[rng.integers(0, n, size=(min(16, draws - i), n))].mean(axis=1) for i in range(0, draws, 16)])


#: rows above which the mean cosine's interval is the U-statistic's normal approximation, not a bootstrap
COSINE_BOOTSTRAP_MAX_ROWS = 500


def bootstrap_mean_cosine(x: np.ndarray, draws: int = 200, seed: int = 0) -> list[float] | None:
    """95 % interval of the mean pairwise cosine of the rows ``x`` (non-zero rows; the estimator of
    :func:`mean_pairwise_cosine`): a seeded percentile bootstrap up to COSINE_BOOTSTRAP_MAX_ROWS rows;
    beyond, the normal approximation of this U-statistic of degree 2 (Hoeffding 1948): ``mean ± 1.96 · 2 σ₁ / √n``
    with ``σ₁²`` the variance of each row's mean cosine with the others — the bootstrap's cost grows with
    ``n`` while its interval converges to this one. None below 3 non-zero rows."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1)
    u = x[norms > 0] / norms[norms > 0, None]
    n = len(u)
    if n < 3 or draws < 1:
        return None
    if n > COSINE_BOOTSTRAP_MAX_ROWS:
        total = u.sum(axis=0)
        each = (u @ total - 1.0) / (n - 1)  # row i's mean cosine with the other rows (|u_i| = 1)
        mean = float(each.mean())
        half = 1.959963984540054 * 2 * float(np.std(each, ddof=1)) / np.sqrt(n)
        return [mean - half, mean + half]
    rng = np.random.default_rng(seed)
    vals = []
    for i in range(0, draws, 16):  # 16 resamples at a time: memory stays small
        k = min(16, draws - i)
        idx = rng.integers(0, n, size=(k, n))
        # each resample's sum of unit vectors as (resample weights) @ u: one GEMM, no k x n x D gather
        weights = np.bincount((np.arange(k)[:, None] * n + idx).ravel(), minlength=k * n).reshape(k, n).astype(np.float64)
        sums = weights @ u
        vals.append(((sums * sums).sum(axis=1) - n) / (n * (n - 1)))
    vals = np.concatenate(vals)
    return [float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))]


def participation_ratio_rows(x: np.ndarray) -> float:
    """``(tr Σ)² / tr(Σ²)`` of the population covariance of the rows ``x`` (float64; ``nan`` below 2 rows).
    Computed on the smaller of the centred Gram matrix (m × m) and the covariance (D × D): their nonzero
    eigenvalues are the same, so the ratio is too."""
    x = np.asarray(x, dtype=np.float64)
    m = len(x)
    if m < 2:
        return float("nan")
    xc = x - x.mean(axis=0)
    g = xc @ xc.T if m <= x.shape[1] else xc.T @ xc
    tr, tr2 = float(np.trace(g)), float((g * g).sum())
    return float(tr * tr / tr2) if tr2 > 0 else float("nan")


def size_matched(x: np.ndarray, m: int, stat, draws: int = 20, seed: int = 0) -> dict | None:
    """A statistic of ``m``-row subsamples of the rows ``x`` (without replacement, ``draws`` seeded draws):
    ``{"m", "draws", "mean", "interval": [2.5 %, 97.5 %]}``, or None with fewer than ``m`` rows. With exactly
    ``m`` rows every draw is the whole class: the statistic itself, with no spread."""
    if m < 2 or len(x) < m:
        return None
    if len(x) == m:
        v = stat(x)
        return {"m": int(m), "draws": 1, "mean": v, "interval": [v, v]}
    rng = np.random.default_rng(seed)
    vals = np.array([stat(x[rng.choice(len(x), m, replace=False)]) for _ in range(draws)])
    return {"m": int(m), "draws": int(draws), "mean": float(np.mean(vals)),
            "interval": [float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))]}


def mean_pairwise_cosine(sum_unit: np.ndarray, n: int) -> float:
    """Mean cosine similarity over ordered pairs ``n != m`` from the sum of unit vectors."""
    if n < 2:
        return float("nan")
    return float((sum_unit @ sum_unit - n) / (n * (n - 1)))


def knn_same_class(x: np.ndarray, labels: np.ndarray, k: int = 5, block: int = 1024) -> np.ndarray:
    """For each row, how many of its ``k`` nearest other rows (Euclidean, float32; ties: lower row) share its label.

    The distance of row ``i`` to row ``j`` is ``(sq_i - 2 x_i.x_j) + sq_j`` in float32 (``sq`` the squared
    norms). The Gram matrix is symmetric, so each block of it is computed once and serves the rows on both
    sides. The compiled kernel keeps each row's running list of its ``k`` nearest under the order (distance,
    row), which every block updates; the torch path takes each block's ``k`` nearest per row and merges them.
    Both give the ``k`` nearest overall: the order is total, so the parts' smallest contain the whole's.
    """
    import torch

    t = _t(x).float()
    n = t.shape[0]
    if n < 2:
        return np.zeros(n, dtype=np.int64)
    kk = min(k, n - 1)
    sq = (t * t).sum(dim=1)
    lab = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    starts = list(range(0, n, block))
    blocks = [(s, s2) for i, s in enumerate(starts) for s2 in starts[i:]]
    if _kernels.enabled():  # each block's rows offer each other to running lists of their kk nearest (C)
        best_v, best_i = np.full((n, kk), np.inf, dtype=np.float32), np.full((n, kk), -1, dtype=np.int64)
        sqn = np.ascontiguousarray(sq.numpy())
        for s, s2 in blocks:
            _kernels.knn_block((t[s : s + block] @ t[s2 : s2 + block].T).numpy(), sqn, s, s2, best_v, best_i)
        near = torch.from_numpy(best_i)
    else:  # each block yields every row's kk nearest (torch), merged under the order (distance, row)
        found: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {s: [] for s in starts}
        for s, s2 in blocks:
            e, e2 = min(n, s + block), min(n, s2 + block)
            g = t[s:e] @ t[s2:e2].T
            found[s].append(_nearest(g, sq[s:e], sq[s2:e2], kk, s2, diag=s2 == s))
            if s2 != s:
                found[s2].append(_nearest(g.T, sq[s2:e2], sq[s:e], kk, s))
        parts = []
        for s in starts:
            vals = torch.cat([v for v, _ in found[s]], dim=1)
            idx = torch.cat([i for _, i in found[s]], dim=1)
            o = torch.argsort(idx, dim=1, stable=True)  # lower row first among equal distances
            vals, idx = torch.gather(vals, 1, o), torch.gather(idx, 1, o)
            parts.append(torch.gather(idx, 1, torch.argsort(vals, dim=1, stable=True)[:, :kk]))
        near = torch.cat(parts)
    return (lab[near] == lab[:, None]).sum(dim=1).numpy()


def nearest_rows(x: np.ndarray, rows: np.ndarray, k: int, block: int = 1024, col_block: int = 8192) -> np.ndarray:
    """For each of ``rows`` (indices into ``x``), the indices of its ``k`` nearest *other* rows of ``x``, nearest
    first: Euclidean distance in float32 as in :func:`knn_same_class`, ties broken by the lower row. Memory:
    one ``block x col_block`` block of distances at a time."""
    import torch

    t = _t(x).float()
    n = t.shape[0]
    rows = np.asarray(rows, dtype=np.int64)
    kk = min(k, n - 1)
    if kk < 1 or len(rows) == 0:
        return np.zeros((len(rows), max(kk, 0)), dtype=np.int64)
    sq = (t * t).sum(dim=1)
    out = []
    for s in range(0, len(rows), block):
        q = torch.from_numpy(rows[s : s + block])
        tq, found = t[q], []
        for c in range(0, n, col_block):
            e = min(n, c + col_block)
            own = (q >= c) & (q < e)
            skip = torch.where(own, q - c, torch.full_like(q, -1))
            found.append(_nearest(tq @ t[c:e].T, sq[q], sq[c:e], kk, c, skip=skip))
        vals = torch.cat([v for v, _ in found], dim=1)
        idx = torch.cat([i for _, i in found], dim=1)
        o = torch.argsort(idx, dim=1, stable=True)  # lower row first among equal distances
        vals, idx = torch.gather(vals, 1, o), torch.gather(idx, 1, o)
        out.append(torch.gather(idx, 1, torch.argsort(vals, dim=1, stable=True)[:, :kk]))
    return torch.cat(out).numpy()


def _nearest(g: torch.Tensor, sq_rows: torch.Tensor, sq_cols: torch.Tensor, kk: int, col0: int, *, diag: bool = False,
             skip: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """From a block ``g`` of the Gram matrix: each row's ``kk`` smallest distances ``(sq_row - 2 g) + sq_col``
    (clamped at 0; the row itself excluded where ``diag``, or column ``skip[i]`` of row ``i`` where that is
    not negative) under the order (value, column): ``(values, columns + col0)``. The float32 operations of
    the compiled ``knn_block``, in its order."""
    import torch

    dist = (g * -2).add_(sq_rows[:, None]).add_(sq_cols[None, :]).clamp_(min=0)
    if diag:
        dist.fill_diagonal_(torch.inf)
    if skip is not None and bool((skip >= 0).any()):
        own = torch.nonzero(skip >= 0).flatten()
        dist[own, skip[own]] = torch.inf
    m = dist.shape[1]
    if m <= kk:
        return dist, torch.arange(col0, col0 + m).expand(dist.shape[0], m)
    top, at = torch.topk(dist, kk + 1, dim=1, largest=False, sorted=True)
    vals, idx = top[:, :kk].clone(), at[:, :kk].clone()
    # where the kk-th and (kk+1)-th values tie, the set is not unique: topk_mask applies the rule (lower column first)
    tied = torch.nonzero(top[:, kk - 1] == top[:, kk]).flatten()
    if len(tied):
        mask = torch.from_numpy(topk_mask(-dist[tied], kk))
        cols = torch.nonzero(mask)[:, 1].reshape(len(tied), kk)
        idx[tied], vals[tied] = cols, torch.gather(dist[tied], 1, cols)
    return vals, idx + col0


def overlap(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """``|A ∩ B| / K`` of two index sets."""
    return len(set(map(int, a)) & set(map(int, b))) / k


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """``|A ∩ B| / |A ∪ B|`` of two index sets (NaN when both are empty)."""
    sa, sb = set(map(int, a)), set(map(int, b))
    return len(sa & sb) / len(sa | sb) if sa | sb else float("nan")
