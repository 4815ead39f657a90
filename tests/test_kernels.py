"""The compiled kernels against the numpy/torch path they replace: bit-identical results on the same stores
(ties, empty and tiny classes, weights moving inside training passes, non-finite and unlabelled rows; only
diversity's norms and second moments add in another order, so its floats agree to float64 rounding), the
cases where a kernel must hand over to the fallback, and the argument checks of the C functions."""

from __future__ import annotations

import numpy as np
import pytest

from fragility.analysis import analyze
from fragility.analysis import _kernels
from fragility.analysis._maths import instance_counts, minimal_sets, topk_mask
from fragility.testing import assert_results_equal, make_random_store

@pytest.mark.parametrize("ties", [True, False])
@pytest.mark.parametrize("seed", [0, 1])
def test_analyzers_give_identical_results_with_and_without_kernels(tmp_path, monkeypatch, ties, seed):
    path = make_random_store(tmp_path / "s.fragility", counts=(60, 25, 7, 2, 0), d=40, seed=seed, ties=ties, dtype="float16",
                             nonfinite=3, unlabelled=4)
    real, ran = _kernels.topk_update, []
    monkeypatch.setattr(_kernels, "topk_update", lambda *a, **kw: ran.append(real(*a, **kw)) or ran[-1])
    for embedding in ("ce", "fe"):
        monkeypatch.delenv("FRAGILITY_NO_KERNELS", raising=False)
        fast = analyze(path, ["topk", "magnitude", "diversity"], k=4, embedding=embedding, chunk_rows=17)
        assert ran and all(r is not None for r in ran) and any("mscs_count" in r for r in ran)  # the kernel ran
        monkeypatch.setenv("FRAGILITY_NO_KERNELS", "1")
        slow = analyze(path, ["topk", "magnitude", "diversity"], k=4, embedding=embedding, chunk_rows=17)
        for name in fast:  # diversity's norms and moments add in another order: its floats to rounding
            assert_results_equal(fast[name], slow[name], rtol=1e-12 if name == "diversity" else 0, atol=0)
        ran.clear()
        mscs = [c["mscs"]["mean_size"] for g in fast["topk"].data["groups"].values() for c in g["classes"] if c.get("mscs")]
        assert any(m for m in mscs if m)  # the minimal sets were really compared


def test_kernel_equals_the_fallback_on_one_chunk_with_hard_rows():
    """Rows built so the cut falls inside runs of equal values at and across bucket edges."""
    rng = np.random.default_rng(3)
    n, d, C, k = 400, 96, 6, 7
    v = (rng.integers(-8, 40, (n, d)) / 8).astype(np.float16)  # few distinct values: long runs of ties
    v[:50] = np.float16(0.5)  # whole rows of one value
    v[50:60, ::2] = np.float16(-0.25)
    labels = rng.integers(0, C, n)
    pred = np.where(rng.random(n) < 0.6, labels, rng.integers(0, C, n))
    logits = rng.normal(size=(n, C)).astype(np.float16) * 8
    bias = rng.normal(size=n).astype(np.float32)
    out = _kernels.topk_update(v, v, labels, labels == pred, k, C, logits, pred, bias)
    assert out is not None
    mask = topk_mask(v, k)
    np.testing.assert_array_equal(out["count"], instance_counts(labels, mask, C))
    sets = minimal_sets(v, logits, pred, bias)
    np.testing.assert_array_equal(out["mscs_count"], instance_counts(labels, sets, C))
    np.testing.assert_array_equal(out["mscs_size"], np.bincount(labels, weights=sets.sum(axis=1), minlength=C).astype(np.int64))
    v32 = v.astype(np.float64)
    ok = labels == pred
    for c in range(C):
        np.testing.assert_array_equal(out["sum_correct"][c], v32[(labels == c) & ok].sum(axis=0))
        np.testing.assert_array_equal(out["sum_incorrect"][c], v32[(labels == c) & ~ok].sum(axis=0))


@pytest.mark.parametrize("k, d", [(1, 512), (10, 512), (64, 512), (5, 203)])
@pytest.mark.parametrize("kind", ["spread", "quantised", "constant", "sparse"])
def test_kernel_equals_the_fallback_on_wide_rows(kind, k, d):
    """Rows wide enough for the kernel's group-maximum bound of the top-K (D = 203: a tail outside the
    groups and the vector loops) and its bucket sort of the minimal sets' boundary (more than 48 equal
    entries in a bucket when quantised)."""
    rng = np.random.default_rng(k)
    n, C = 300, 5
    if kind == "spread":
        v = rng.normal(size=(n, d)) * np.exp(rng.normal(size=(n, 1)))
    elif kind == "quantised":
        v = rng.integers(-2, 4, (n, d)) / 4  # six values: about 85 equal entries each, long runs of ties
    elif kind == "constant":
        v = np.full((n, d), 0.375) * rng.integers(1, 3, (n, 1))
    else:
        v = np.where(rng.random((n, d)) < 0.03, rng.normal(size=(n, d)), 0)  # mostly zeros
    v = v.astype(np.float16)
    labels = rng.integers(0, C, n)
    pred = np.where(rng.random(n) < 0.6, labels, rng.integers(0, C, n))
    logits = (rng.normal(size=(n, C)) * 20).astype(np.float32)
    bias = rng.normal(size=n)
    out = _kernels.topk_update(v, v, labels, labels == pred, k, C, logits, pred, bias)
    assert out is not None
    np.testing.assert_array_equal(out["count"], instance_counts(labels, topk_mask(v, k), C))
    sets = minimal_sets(v, logits, pred, bias)
    assert sets.sum() > n  # the sets were not trivially empty
    np.testing.assert_array_equal(out["mscs_count"], instance_counts(labels, sets, C))
    np.testing.assert_array_equal(out["mscs_size"], np.bincount(labels, weights=sets.sum(axis=1), minlength=C).astype(np.int64))
    fe = np.abs(v)  # FE, a different array: the kernel decodes CE apart
    out = _kernels.topk_update(fe, v, labels, labels == pred, k, C, logits, pred, bias)
    np.testing.assert_array_equal(out["count"], instance_counts(labels, topk_mask(fe, k), C))
    np.testing.assert_array_equal(out["mscs_count"], instance_counts(labels, sets, C))


def test_minimal_set_by_hand():
    # CE (1.5, 0.5, 0.5, 0.25, -1), bias 0.25, runner-up 2.0: start 0.25 - 1 = -0.75, gap 2.75;
    # sorted positives 1.5, 0.5 (j=1), 0.5 (j=2), 0.25: 1.5 + 0.5 + 0.5 = 2.5 < 2.75, + 0.25 = 2.75 -> all four
    ce = np.array([[1.5, 0.5, 0.5, 0.25, -1.0]], dtype=np.float16)
    logits = np.array([[3.0, 2.0]], dtype=np.float16)
    out = _kernels.topk_update(ce, ce, np.array([0]), np.array([True]), 2, 2, logits, np.array([0]), np.array([0.25]))
    np.testing.assert_array_equal(out["mscs_count"][0], [1, 1, 1, 1, 0])
    # runner-up 1.75: gap 2.5 is reached after the two 0.5s; the lower-index 0.5 (j=1) comes first
    out = _kernels.topk_update(ce, ce, np.array([0]), np.array([True]), 2, 2, np.array([[3.0, 1.75]]), np.array([0]),
                               np.array([0.25]))
    np.testing.assert_array_equal(out["mscs_count"][0], [1, 1, 1, 0, 0])
    np.testing.assert_array_equal(out["count"][0], [1, 1, 0, 0, 0])  # top-2: 1.5 and the lower-index 0.5


def test_the_kernel_hands_over_where_it_cannot_be_exact(monkeypatch):
    labels, ok = np.zeros(3, dtype=np.int64), np.ones(3, dtype=bool)
    assert _kernels.topk_update(np.ones((3, 4), np.float32), None, labels, ok, 2, 1) is None  # float32 store
    huge = np.full((3, 4), 60000, dtype=np.float16)
    monkeypatch.setattr(_kernels, "EXACT_SUM_LIMIT", 1e5)  # sums that could round: fallback
    assert _kernels.topk_update(huge, None, labels, ok, 2, 1) is None
    monkeypatch.setenv("FRAGILITY_NO_KERNELS", "1")
    assert _kernels.topk_update(np.ones((3, 4), np.float16), None, labels, ok, 2, 1) is None


@pytest.mark.parametrize("kernels", ["1", "0"])
@pytest.mark.parametrize("n, d, q, k, block", [(2, 3, 1.0, 5, 97), (40, 4, 1.0, 5, 97), (700, 8, 0.5, 5, 97), (1500, 16, 0.0, 3, 97),
                                              (300, 8, 0.5, 1, 97), (2100, 6, 0.5, 5, 1024)])
def test_knn_selection_keeps_the_tie_rule(monkeypatch, n, d, q, k, block, kernels):
    """k-NN from blocks of the Gram matrix, each used for the rows on both sides, with ties resolved
    exactly (compiled kernel and torch path): against a brute-force sort of each row's distances (lower row
    first among equals), on data with many equal distances. Blocks of 1024 rows are split between threads."""
    monkeypatch.setenv("FRAGILITY_NO_KERNELS", "0" if kernels == "1" else "1")
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _check_knn(n, d, q, k, block)
    finally:
        torch.set_num_threads(before)


def _check_knn(n, d, q, k, block):
    import torch

    from fragility.analysis._maths import knn_same_class

    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, d)).astype(np.float32)
    if q:
        x = (np.round(x / q) * q).astype(np.float32)
    y = rng.integers(0, 3, n)
    t = torch.from_numpy(x)
    sq = (t * t).sum(dim=1)
    dist = (sq[:, None] - 2 * t @ t.T + sq[None, :]).clamp(min=0).numpy()  # the same float32 distances
    kk = min(k, n - 1)
    want = np.zeros(n, dtype=np.int64)
    for i in range(n):
        others = np.array([j for j in range(n) if j != i])
        order = others[np.lexsort((others, dist[i, others]))][:kk]
        want[i] = int((y[order] == y[i]).sum())
    np.testing.assert_array_equal(knn_same_class(x, y, k, block=block), want)


def test_float16_finiteness_by_bits_equals_isfinite():
    from fragility.analysis._engine import _finite_rows

    special = np.array([np.inf, -np.inf, np.nan, -np.nan, 65504, -65504, 6e-8, -0.0, 0.0, 1.0], dtype=np.float16)
    bits = np.arange(65536, dtype=np.uint16).view(np.float16)  # every float16 value, one per row
    np.testing.assert_array_equal(_finite_rows(bits, len(bits)), np.isfinite(bits))
    rows = np.stack([np.roll(special, i)[:4] for i in range(len(special))])
    np.testing.assert_array_equal(_finite_rows(rows, len(rows)), np.isfinite(rows).all(axis=1))
    np.testing.assert_array_equal(_finite_rows(np.arange(3), 3), [True] * 3)


def test_compiled_finiteness_equals_isfinite():
    bits = np.arange(65536, dtype=np.uint16).view(np.float16)
    np.testing.assert_array_equal(_kernels.finite_rows(bits.reshape(-1, 1)), np.isfinite(bits))
    rows = np.ones((5, 300), dtype=np.float16)
    rows[1, 299], rows[3, 0] = np.inf, np.nan
    np.testing.assert_array_equal(_kernels.finite_rows(rows), [True, False, True, False, True])


def test_row_means_and_class_sums_equal_numpy_on_float16_rows():
    rng = np.random.default_rng(5)
    v = (rng.normal(size=(700, 64)) * 30).astype(np.float16)
    labels = rng.integers(0, 4, 700)
    identity = rng.integers(0, 64, (4, 9))
    want = np.take_along_axis(v, identity[labels], axis=1).astype(np.float64).mean(axis=1)
    np.testing.assert_array_equal(_kernels.row_means(v, labels, identity), want)
    wide = np.zeros((4, 8197), dtype=np.int64)  # 8197 values up to 65504 could sum past 2**29: numpy's path
    assert _kernels.row_means(np.zeros((3, 10), np.float16), np.zeros(3, np.int64), wide) is None
    sums = _kernels.class_sums(v, labels, 4)
    for c in range(4):
        np.testing.assert_array_equal(sums[c], v[labels == c].astype(np.float64).sum(axis=0))


def test_diversity_sums_equal_the_numpy_path():
    """Class sums exactly; unit-vector sums and second moments to float64 rounding (the norms and the GEMM
    add in another order)."""
    import fragility_plugins.diversity as div
    from fragility.analysis import AnalysisSpec

    rng = np.random.default_rng(6)
    fe = np.maximum(rng.normal(size=(3000, 128)), 0).astype(np.float16)
    fe[7] = 0  # a zero row: no unit vector
    labels = rng.integers(0, 5, 3000)
    fast = _kernels.diversity_sums(fe, labels, 5)
    slow = div.Diversity(AnalysisSpec(num_classes=5, class_names=list("abcde"), feature_dim=128))._sums(fe, labels)
    np.testing.assert_array_equal(fast["sum_fe"], slow["sum_fe"])
    np.testing.assert_array_equal(fast["n_unit"], slow["n_unit"])
    np.testing.assert_allclose(fast["sum_unit"], slow["sum_unit"], rtol=1e-12)
    np.testing.assert_allclose(fast["sum_fefe"], slow["sum_fefe"], rtol=1e-12)


def test_compiled_kernels_refuse_bad_arguments():
    """Sizes and ranges are checked in C: a bad call is a ValueError, never a write outside a buffer."""
    from fragility.analysis import _ckernels

    v = np.zeros((4, 8), np.uint16)
    out = np.zeros((2, 8))
    with pytest.raises(ValueError, match="labels"):
        _ckernels.class_sums(v, np.array([0, 1, 2, 0]), 4, 8, 2, out)  # label 2 of 2 classes
    with pytest.raises(ValueError, match="bytes"):
        _ckernels.class_sums(v, np.array([0, 1, 1, 0]), 5, 8, 2, out)  # 5 rows claimed, 4 given
    with pytest.raises(ValueError, match="identity"):
        _ckernels.gather_mean(v, np.zeros(4, np.int64), np.array([[8]]), 4, 8, 1, 1, np.zeros(4))
    g, sq, bv, bi = np.zeros((2, 3), np.float32), np.zeros(6, np.float32), np.zeros((6, 2), np.float32), np.zeros((6, 2), np.int64)
    _ckernels.knn_block(g, 2, 3, sq, 0, 3, 2, 0, 2, 0, 3, bv, bi, 6)  # rows 0-1 against rows 3-5: fine
    for bad in [(0, 1), (0, 0), (5, 0)]:  # overlapping blocks, a non-square diagonal block, rows past the sample
        with pytest.raises(ValueError, match="bounds"):
            _ckernels.knn_block(g, 2, 3, sq, *bad, 2, 0, 2, 0, 3, bv, bi, 6)
    with pytest.raises(ValueError, match="bounds"):  # a thread's range outside the block
        _ckernels.knn_block(g, 2, 3, sq, 0, 3, 2, 0, 3, 0, 3, bv, bi, 6)
    with pytest.raises(ValueError, match="best_i"):
        _ckernels.knn_block(g, 2, 3, sq, 0, 3, 2, 0, 2, 0, 3, bv, bi[:5], 6)


def test_results_do_not_depend_on_the_threads(monkeypatch):
    """Rows split over 1 or 3 threads (or held to one by the output-memory cap) give the same sums."""
    import torch

    rng = np.random.default_rng(8)
    n, d, C = 3000, 64, 4
    v = rng.normal(size=(n, d)).astype(np.float16)
    labels, pred = rng.integers(0, C, n), rng.integers(0, C, n)
    logits, bias = rng.normal(size=(n, C)) * 10, rng.normal(size=n)
    before = torch.get_num_threads()
    try:
        outs = []
        for t, cap in [(1, _kernels.THREAD_OUTPUT_BYTES), (3, _kernels.THREAD_OUTPUT_BYTES), (3, 1)]:
            torch.set_num_threads(t)
            monkeypatch.setattr(_kernels, "THREAD_OUTPUT_BYTES", cap)
            outs.append((_kernels.topk_update(v, v, labels, labels == pred, 5, C, logits, pred, bias),
                         _kernels.diversity_sums(np.abs(v), labels, C)))
    finally:
        torch.set_num_threads(before)
    for fast, div in outs[1:]:
        for key in outs[0][0]:
            np.testing.assert_array_equal(fast[key], outs[0][0][key])
        np.testing.assert_array_equal(div["sum_fe"], outs[0][1]["sum_fe"])
        np.testing.assert_allclose(div["sum_unit"], outs[0][1]["sum_unit"], rtol=1e-12)
