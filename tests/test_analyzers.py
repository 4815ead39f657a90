"""Analyzers against brute-force numpy references, hand-worked examples, and the conformance harness."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fragility import AnalyzerError, SelectionError, Store
from fragility.analysis import analyze
from fragility.analysis._maths import (
    knn_same_class,
    mean_pairwise_cosine,
    minimal_sets,
    normalized_entropy,
    participation_ratio,
    topk_mask,
    topk_order,
)
from fragility.testing import assert_close, assert_results_equal, check_analyzer, make_random_store

K, TAU = 3, 0.2


# ----------------------------------------------------------------------------- brute-force references


def _topk_ref(v, k):
    return sorted(range(len(v)), key=lambda j: (-float(v[j]), j))[:k]


def _mscs_ref(ce, logits, p, bias_p):
    runner = max(float(logits[j]) for j in range(len(logits)) if j != p)
    total = float(bias_p) + sum(float(x) for x in ce if x < 0)
    out = []
    for j in sorted(range(len(ce)), key=lambda j: (-float(ce[j]), j)):
        if total >= runner or ce[j] <= 0:
            break
        total += float(ce[j])
        out.append(j)
    return out


def _groups(store):
    """Every group's usable rows (labelled, finite) in float64, and each row's own b[pred]."""
    out = {}
    for p in store.passes:
        rows = store.read(p, ["fe", "ce_pred", "ce_target", "logits", "bias_pred", "label", "pred"])
        ok = np.isfinite(rows["fe"]).all(1) & np.isfinite(rows["logits"]).all(1) & (rows["label"] >= 0)
        rows = {k: v[ok].astype(np.float64) if v.dtype.kind == "f" else v[ok] for k, v in rows.items()}
        out[f"{p.split}@{p.epoch}"] = (rows, rows["bias_pred"])
    return out


@pytest.fixture(scope="module", params=["float32", "float16"])
def random_store(tmp_path_factory, request):
    # ties, negative CE, tiny and empty classes, weights moving inside training passes, non-finite and
    # unlabelled rows, in both storage dtypes
    path = tmp_path_factory.mktemp("an") / f"r-{request.param}.fragility"
    return make_random_store(path, nonfinite=2, unlabelled=2, dtype=request.param)


# ----------------------------------------------------------------------------- topk


def _topk_expected(store):
    C, D = store.num_classes, store.feature_dim
    want = {}
    for g, (rows, bias) in _groups(store).items():
        v, y, ok = rows["ce_pred"], rows["label"], rows["label"] == rows["pred"]
        for c in range(C):
            key = f"groups/{g}/classes/{c}"
            sel = y == c
            want[f"{key}/n"] = int(sel.sum())
            if not sel.any():
                want[f"{key}/unique"] = 0
                want[f"{key}/accuracy"] = None
                continue
            want[f"{key}/accuracy"] = float(ok[sel].mean())
            for f, m in (("all", sel), ("correct", sel & ok), ("incorrect", sel & ~ok)):
                if m.any():
                    mean = v[m].mean(axis=0)
                    idx = _topk_ref(mean, K)
                    want[f"{key}/topk/{f}/indices"] = idx
                    want[f"{key}/topk/{f}/values"] = [mean[j] for j in idx]
                    want[f"{key}/topk/{f}/share"] = [mean[j] / sum(mean[i] for i in idx) for j in idx]
                else:  # no rows under this filter: no top-K (null, never -1)
                    want[f"{key}/topk/{f}"] = {"indices": None, "values": None, "share": None}
            count = np.zeros(D, dtype=int)
            mcount = np.zeros(D, dtype=int)
            sizes = []
            for n in np.nonzero(sel)[0]:
                for j in _topk_ref(v[n], K):
                    count[j] += 1
                s = _mscs_ref(rows["ce_pred"][n], rows["logits"][n], rows["pred"][n], rows["bias_pred"][n])
                sizes.append(len(s))
                for j in s:
                    mcount[j] += 1
            want[f"{key}/freq"] = list(count / sel.sum())
            want[f"{key}/unique"] = int((count > 0).sum())
            want[f"{key}/unique_tau"] = int((count / sel.sum() > TAU).sum())
            want[f"{key}/mscs/freq"] = list(mcount / sel.sum())
            want[f"{key}/mscs/unique"] = int((mcount > 0).sum())
            want[f"{key}/mscs/mean_size"] = float(np.mean(sizes))
    return want


def test_topk_conformance_and_reference(random_store):
    r = check_analyzer("topk", random_store, expected=_topk_expected, k=K, tau=TAU)
    # overlaps between classes and between splits, from the (already checked) identities
    g = r.data["groups"]["test@1"]
    a, b = g["classes"][0]["topk"]["all"]["indices"], g["classes"][1]["topk"]["all"]["indices"]
    assert g["overlap_between_classes"][0][1] == len(set(a) & set(b)) / K
    tr = r.data["groups"]["train@1"]["classes"][2]["topk"]["all"]["indices"]
    te = r.data["groups"]["test@1"]["classes"][2]["topk"]["all"]["indices"]
    (got,) = [x for x in r.data["overlap_between_splits"] if (x["a"], x["b"]) == ("test@1", "train@1")]
    assert got["overlap"][2] == len(set(tr) & set(te)) / K
    assert got["jaccard"][2] == len(set(tr) & set(te)) / len(set(tr) | set(te))
    # the empty class is reported as empty, not NaN soup, and the JSON is valid
    empty = r.data["groups"]["test@0"]["classes"][4]
    assert empty["n"] == 0 and empty["accuracy"] is None and empty["unique"] == 0
    json.loads(r.to_json())
    assert any("non-finite values were skipped" in n for n in r.notes)
    assert any("without a label were skipped" in n for n in r.notes)
    # skipped rows are counted in fields, non-finite and unlabelled apart
    store = Store(random_store)
    for p in store.passes:
        rows = store.read(p, ["fe", "label"])
        finite = np.isfinite(rows["fe"]).all(1)
        assert r.skipped[f"{p.split}@{p.epoch}"] == {
            "nonfinite": int((~finite).sum()), "unlabelled": int((finite & (rows["label"] < 0)).sum())}


def test_topk_on_fe_and_ce_target(random_store):
    for emb, col in (("fe", "fe"), ("ce_target", "ce_target")):
        r = analyze(random_store, ["topk"], embedding=emb, k=K, split="test", epoch=0)["topk"]
        rows, _ = _groups(Store(random_store))["test@0"]
        sel = rows["label"] == 1
        assert list(r.data["groups"]["test@0"]["classes"][1]["topk"]["all"]["indices"]) == _topk_ref(rows[col][sel].mean(0), K)


# ----------------------------------------------------------------------------- magnitude


def _magnitude_expected(store):
    C = store.num_classes
    groups = _groups(store)
    train, _ = groups["train@1"]  # reference: the last training epoch
    ident = {}
    for c in range(C):
        sel = train["label"] == c
        if sel.any():
            ident[c] = _topk_ref(train["ce_pred"][sel].mean(0), K)
    want = {}

    def mags(rows):
        return np.array([rows["ce_pred"][n, ident[int(rows["label"][n])]].mean() if int(rows["label"][n]) in ident else np.nan
                         for n in range(len(rows["label"]))])

    mt = mags(train)
    for c in ident:
        want[f"identity/{c}"] = ident[c]
        want[f"train_mean/{c}"] = mt[train["label"] == c].mean()
        want[f"train_p5/{c}"] = np.percentile(mt[train["label"] == c], 5)
    for g in ("test@0", "test@1"):
        rows, _ = groups[g]
        m = mags(rows)
        ok = rows["label"] == rows["pred"]
        for c in ident:
            sel = rows["label"] == c
            key = f"groups/{g}/classes/{c}"
            want[f"{key}/n"] = int(sel.sum())
            want[f"{key}/mean_correct"] = m[sel & ok].mean() if (sel & ok).any() else None
            want[f"{key}/mean_incorrect"] = m[sel & ~ok].mean() if (sel & ~ok).any() else None
            p5 = np.percentile(mt[train["label"] == c], 5)
            below = sel & (m < p5)
            want[f"{key}/share_below_p5"] = below.sum() / sel.sum() if sel.any() else None
            want[f"{key}/accuracy_below_p5"] = ok[below].mean() if below.any() else None
            if (sel & ok).any():
                want[f"{key}/ratio_correct"] = m[sel & ok].mean() / mt[train["label"] == c].mean()
    # trajectory: identity of train@0 vs the final identity
    t0, _ = groups["train@0"]
    for c in ident:
        sel = t0["label"] == c
        want[f"trajectory/train@0/identity_overlap/{c}"] = len(set(_topk_ref(t0["ce_pred"][sel].mean(0), K)) & set(ident[c])) / K
        want[f"trajectory/train@0/magnitude/{c}"] = mags(t0)[sel].mean()
    return want


def test_magnitude_conformance_and_reference(random_store):
    check_analyzer("magnitude", random_store, expected=_magnitude_expected, k=K)


def test_magnitude_reference_rows_are_read_even_when_only_test_is_selected(random_store):
    full = analyze(random_store, ["magnitude"], k=K)["magnitude"]
    only = analyze(random_store, ["magnitude"], k=K, split="test")["magnitude"]
    assert_close(only.data["train_p5"], full.data["train_p5"])
    assert_close(only.data["groups"]["test@1"], full.data["groups"]["test@1"])


# ----------------------------------------------------------------------------- diversity


def _diversity_expected(store):
    D = store.feature_dim
    want = {}
    for g, (rows, _) in _groups(store).items():
        fe, y, v = rows["fe"], rows["label"], rows["ce_pred"]
        dist = np.linalg.norm(fe[:, None, :] - fe[None, :, :], axis=2)
        for c in range(store.num_classes):
            sel = y == c
            key = f"groups/{g}/classes/{c}"
            want[f"{key}/n"] = int(sel.sum())
            if sel.sum() < 2:
                continue
            count = np.zeros(D)
            for n in np.nonzero(sel)[0]:
                count[_topk_ref(v[n], K)] += 1
            want[f"{key}/unique_share"] = (count > 0).sum() / D
            p = count[count > 0] / count.sum()
            want[f"{key}/entropy"] = -(p * np.log(p)).sum() / np.log(D)
            cov = np.cov(fe[sel].T, bias=True)
            want[f"{key}/participation_ratio"] = np.trace(cov) ** 2 / np.trace(cov @ cov)
            u = fe[sel] / np.linalg.norm(fe[sel], axis=1, keepdims=True)
            sims = [u[a] @ u[b] for a in range(len(u)) for b in range(len(u)) if a != b]
            want[f"{key}/mean_cosine"] = float(np.mean(sims))
            types = []
            for n in np.nonzero(sel)[0]:
                order = sorted((j for j in range(len(y)) if j != n), key=lambda j: (dist[n, j], j))[:5]
                same = int((y[order] == c).sum())
                types.append("safe" if same >= 4 else "border" if same >= 2 else "rare" if same == 1 else "outlier")
            for t in ("safe", "border", "rare", "outlier"):
                want[f"{key}/archetypes/{t}"] = types.count(t) / len(types)
    return want


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_diversity_conformance_and_reference(tmp_path, dtype):
    # continuous values: k-NN distance ties would make the reference's order arbitrary
    path = make_random_store(tmp_path / "d.fragility", ties=False, nonfinite=1, unlabelled=1, dtype=dtype)
    check_analyzer("diversity", path, expected=_diversity_expected, k=K, options={"knn": "all"})


def test_knn_archetypes_by_default_only_for_each_splits_last_epoch(random_store):
    """--knn last (default): archetypes for test@1 and train@1 only, with a note; every other quantity is the
    same as with knn='all'; 'none' computes none; an unknown mode is refused in one line."""
    last = analyze(random_store, ["diversity"], k=K)["diversity"]
    every = analyze(random_store, ["diversity"], k=K, options={"knn": "all"})["diversity"]
    none = analyze(random_store, ["diversity"], k=K, options={"knn": "none"})["diversity"]
    for g, grp in last.data["groups"].items():
        for c, entry in enumerate(grp["classes"]):
            other = every.data["groups"][g]["classes"][c]
            assert {k: v for k, v in entry.items() if not k.startswith("archetypes")} == \
                   {k: v for k, v in other.items() if not k.startswith("archetypes")} or entry["n"] == 0
            if g.endswith("@1"):
                assert entry["archetypes"] == other["archetypes"]
            else:
                assert all(v is None for v in entry["archetypes"].values())
            assert all(v is None for v in none.data["groups"][g]["classes"][c]["archetypes"].values())
    assert any("k-NN archetypes not computed for 2 groups (train@0, test@0)" in n for n in last.notes)
    assert any("not computed for 4 groups" in n and "for no group" in n for n in none.notes)
    with pytest.raises(AnalyzerError, match=r"knn='some' is not one of last, all, none"):
        analyze(random_store, ["diversity"], k=K, options={"knn": "some"})
    with pytest.raises(AnalyzerError, match=r"knn_max_rows=0 must be a positive number of rows"):
        analyze(random_store, ["diversity"], k=K, knn_max_rows=0)


def test_diversity_samples_deterministically_and_says_so(random_store):
    r1 = analyze(random_store, ["diversity"], k=K, knn_max_rows=20, chunk_rows=5, options={"knn": "all"})["diversity"]
    r2 = analyze(random_store, ["diversity"], k=K, knn_max_rows=20, chunk_rows=1000, options={"knn": "all"})["diversity"]
    sampled = r1.data["groups"]["test@0"]["knn_sampled"]
    assert 5 < sampled < 73
    assert_results_equal(r1, r2)
    assert any(f"deterministic sample of {sampled} of" in n for n in r1.notes)


# ----------------------------------------------------------------------------- hand-worked examples


def test_hand_worked_topk_and_ties():
    assert list(topk_order(np.array([3.0, 1.0, 3.0, 2.0]), 2)) == [0, 2]
    assert topk_mask(np.array([[1.0, 2.0, 2.0, 0.0]]), 2).tolist() == [[False, True, True, False]]
    assert topk_mask(np.array([[2.0, 2.0, 2.0, 1.0]]), 2).tolist() == [[True, True, False, False]]
    assert topk_mask(np.array([[0.0, 5.0, 0.0, 0.0]]), 3).tolist() == [[True, True, True, False]]


def test_hand_worked_minimal_sufficient_set():
    ce = np.array([[3.0, -1.0, 2.0, 0.5]])
    bias = np.array([0.5, 0.0, 0.0])
    # logit_p = 0.5 + 4.5 = 5.0; start = 0.5 - 1 = -0.5
    b0 = bias[[0]]  # b[pred] of the row
    assert minimal_sets(ce, np.array([[5.0, 2.0, 1.0]]), np.array([0]), b0).tolist() == [[True, False, False, False]]  # -0.5+3 >= 2
    assert minimal_sets(ce, np.array([[5.0, 4.2, 1.0]]), np.array([0]), b0).tolist() == [[True, False, True, False]]  # 2.5 < 4.2 <= 4.5
    assert minimal_sets(ce, np.array([[5.0, -3.0, -1.0]]), np.array([0]), b0).tolist() == [[False] * 4]  # start already wins


def test_hand_worked_diversity_measures():
    assert normalized_entropy(np.array([2, 2, 0, 0]), 4) == pytest.approx(0.5)
    x = np.array([[1.0, 0], [-1, 0], [0, 1], [0, -1]])
    assert participation_ratio(x.sum(0), x.T @ x, 4) == pytest.approx(2.0)
    y = np.array([[1.0, 0], [2, 0], [3, 0]])
    assert participation_ratio(y.sum(0), y.T @ y, 3) == pytest.approx(1.0)
    u = np.array([[1.0, 0], [0, 1], [1, 0]])
    assert mean_pairwise_cosine(u.sum(0), 3) == pytest.approx(1 / 3)
    pts = np.array([[0.0], [0.1], [0.2], [0.3], [0.4], [5.0], [5.1]])
    lab = np.array([0, 0, 0, 0, 1, 1, 0])
    # 6 others, k=5: row 0 sees 0.1, 0.2, 0.3 (class 0), 0.4 and 5.0 (class 1) -> 3;
    # row 4 (class 1) sees the four class-0 rows and 5.0 -> 1; row 6 sees 5.0, 0.4 (class 1), 0.3, 0.2, 0.1 -> 3
    assert knn_same_class(pts, lab, k=5).tolist() == [3, 3, 3, 3, 1, 1, 3]


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(1, 6), st.integers(2, 9)), elements=st.sampled_from([-1.0, 0.0, 0.5, 1.0, 2.0])),
       st.integers(1, 9))
def test_topk_mask_matches_brute_force(v, k):
    k = min(k, v.shape[1])
    mask = topk_mask(v, k)
    for n in range(v.shape[0]):
        assert sorted(np.nonzero(mask[n])[0].tolist()) == sorted(_topk_ref(v[n], k))


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(1, 5), st.integers(2, 40)), elements=st.floats(-3, 3, width=16)),
       st.integers(0, 2), st.integers(0, 10**6))
def test_minimal_sets_match_brute_force(ce, p, seed):
    rng = np.random.default_rng(seed)
    n, d = ce.shape
    bias = rng.normal(size=3).round(1)
    logits = rng.normal(size=(n, 3)) * 3
    pred = np.full(n, p)
    logits[:, p] = ce.sum(1) + bias[p]
    got = minimal_sets(ce, logits, pred, bias[pred], probe=4)
    for i in range(n):
        assert np.nonzero(got[i])[0].tolist() == sorted(_mscs_ref(ce[i], logits[i], p, bias[p]))


# ----------------------------------------------------------------------------- bad input


def test_bad_analysis_input(random_store, tmp_path):
    with pytest.raises(AnalyzerError, match=r"unknown analyzer 'topp' \(did you mean 'topk'\?\); available: authors, diversity, magnitude, topk"):
        analyze(random_store, ["topp"])
    for k in (0, -1, 13):
        with pytest.raises(AnalyzerError, match=rf"K={k} is out of range; K must be between 1 and the feature dimension D=12"):
            analyze(random_store, ["topk"], k=k)
    with pytest.raises(SelectionError, match=r"split 'val' is not in store"):
        analyze(random_store, ["topk"], split="val")
    with pytest.raises(SelectionError, match=r"epoch 9 is not in store"):
        analyze(random_store, ["topk"], epoch=9)
    with pytest.raises(AnalyzerError, match=r"tau=2.0 is a frequency floor"):
        analyze(random_store, ["topk"], tau=2.0)
    with pytest.raises(AnalyzerError, match=r"embedding 'cee' is unknown \(did you mean 'ce'"):
        analyze(random_store, ["topk"], embedding="cee")
    with pytest.raises(AnalyzerError, match=r"magnitude needs reference rows \(split='validation'.*--reference-split"):
        analyze(random_store, ["magnitude"], reference_split="validation")


def test_store_without_ce_target_says_how_to_record_it(tmp_path):
    import timm
    import torch

    import fragility

    model = timm.create_model("test_resnet", pretrained=False, num_classes=3).eval()
    path = tmp_path / "nolabels.fragility"
    with fragility.Recorder(model, path) as rec:
        rec.evaluate([torch.randn(4, 3, 32, 32)], split="test")
    with pytest.raises(AnalyzerError, match=r"has no ce_target column.*record with labels"):
        analyze(path, ["topk"], embedding="ce_target")


def _row_sets(path):
    """Each row's top-K set and minimal sufficient set, by true class, from the brute-force references."""
    s = Store(path)
    (rows, bias), = _groups(s).values()
    s.close()
    top, sets = {}, {}
    for i, c in enumerate(rows["label"].tolist()):
        top.setdefault(c, []).append(frozenset(_topk_ref(rows["ce_pred"][i], K)))
        sets.setdefault(c, []).append(frozenset(_mscs_ref(rows["ce_pred"][i], rows["logits"][i], int(rows["pred"][i]), bias[i])))
    return top, sets


def test_rarefied_unique_counts_equal_the_average_over_every_subset(tmp_path):
    """unique@m is the mean number of distinct features over all C(n, m) subsets of m rows of the class."""
    import itertools

    path = make_random_store(tmp_path / "r.fragility", counts=(8, 5, 3), d=9, passes=(("train", 0),), seed=4)
    res = analyze(path, ["topk"], k=K)["topk"].data["groups"]["train@0"]
    assert res["rarefy_m"] == 3 and res["rarefy_m_mscs"] == 3
    top, sets = _row_sets(path)
    for c, entry in enumerate(res["classes"]):
        for got, per_row in ((entry["unique_rarefied"], top[c]), (entry["mscs"]["unique_rarefied"], sets[c])):
            brute = np.mean([len(frozenset().union(*sub)) for sub in itertools.combinations(per_row, 3)])
            assert got == pytest.approx(brute, rel=1e-12, abs=1e-12), (c, got, brute)
    smallest = res["classes"][2]
    assert smallest["unique_rarefied"] == pytest.approx(smallest["unique"], rel=1e-12)  # m = n: the raw count
    # a subsample larger than a class: that class has no size-controlled count
    res6 = analyze(path, ["topk"], k=K, options={"rarefy_m": 6})["topk"].data["groups"]["train@0"]
    assert [c["unique_rarefied"] is None for c in res6["classes"]] == [False, True, True]
    with pytest.raises(AnalyzerError, match=r"rarefy_m=0 must be a positive number of rows"):
        analyze(path, ["topk"], k=K, options={"rarefy_m": 0})


def test_rarefied_unique_counts_agree_with_monte_carlo_on_larger_classes(tmp_path):
    """Classes too large to enumerate: a seeded Monte-Carlo mean over 4,000 random subsets agrees within 4
    standard errors (the formula is exact; the tolerance is the estimate's)."""
    path = make_random_store(tmp_path / "r.fragility", counts=(70, 40, 25), d=16, passes=(("train", 0),), seed=5)
    res = analyze(path, ["topk"], k=K)["topk"].data["groups"]["train@0"]
    top, _ = _row_sets(path)
    rng = np.random.default_rng(0)
    for c, entry in enumerate(res["classes"][:2]):
        draws = [len(frozenset().union(*(top[c][i] for i in rng.choice(len(top[c]), 25, replace=False)))) for _ in range(4000)]
        se = np.std(draws) / np.sqrt(len(draws))
        assert abs(np.mean(draws) - entry["unique_rarefied"]) <= 4 * se + 1e-9, (c, np.mean(draws), entry["unique_rarefied"], se)
        assert entry["unique_rarefied"] < entry["unique"]  # fewer rows see fewer distinct features


def test_class_and_correctness_selection(random_store):
    # the size-controlled counts rarefy to the smallest *selected* class by default: pin m to compare
    full = analyze(random_store, ["topk"], k=K, options={"rarefy_m": 2})["topk"].data["groups"]
    sub = analyze(random_store, ["topk"], k=K, classes=["c1", 2], options={"rarefy_m": 2})["topk"]
    for g, data in sub.data["groups"].items():
        for c, entry in enumerate(data["classes"]):
            if c in (1, 2):
                assert_close(entry, full[g]["classes"][c])
            else:
                assert entry["n"] == 0
    assert "selection: only classes c1, c2" in sub.notes
    rows, _ = _groups(Store(random_store))["test@1"]
    wrong = analyze(random_store, ["topk"], k=K, correct=False, split="test", epoch=1)["topk"].data["groups"]["test@1"]
    for c in range(4):
        sel = (rows["label"] == c) & (rows["label"] != rows["pred"])
        assert wrong["classes"][c]["n"] == sel.sum()
        if sel.any():
            assert list(wrong["classes"][c]["topk"]["all"]["indices"]) == _topk_ref(rows["ce_pred"][sel].mean(0), K)
    with pytest.raises(SelectionError, match=r"class 'c9' is not in store .*classes: c0, c1, c2, c3, c4"):
        analyze(random_store, ["topk"], classes=["c9"])
    check_analyzer("magnitude", random_store, k=K, classes=[0, 1])


def test_default_analyzers_on_a_store_without_training_rows(tmp_path):
    path = make_random_store(tmp_path / "t.fragility", passes=(("test", 0),))
    res = analyze(path, k=3)
    assert set(res) == {"topk", "diversity"}
    assert "magnitude skipped: no reference rows (split 'train')" in res["topk"].notes
    with pytest.raises(AnalyzerError, match="magnitude needs reference rows"):
        analyze(path, ["magnitude"], k=3)


def test_pass_selection(random_store):
    r = analyze(random_store, ["topk"], k=K, passes=["0001"])["topk"]
    assert list(r.data["groups"]) == ["test@0"]
    with pytest.raises(SelectionError, match=r"pass '0009' is not in store"):
        analyze(random_store, ["topk"], passes=["0009"])


# ----------------------------------------------------------------------------- exact per row (issue 7)


def test_magnitude_selection_never_filters_the_training_reference(random_store):
    """--incorrect compares misclassified test rows with the training distribution of *all* training rows."""
    full = analyze(random_store, ["magnitude"], k=K)["magnitude"]
    wrong = analyze(random_store, ["magnitude"], k=K, correct=False)["magnitude"]
    right = analyze(random_store, ["magnitude"], k=K, correct=True)["magnitude"]
    want = _magnitude_expected(Store(random_store))
    for r in (wrong, right):
        assert_close(r.data["train_mean"], full.data["train_mean"])
        assert_close(r.data["train_p5"], full.data["train_p5"])
        for c in range(4):
            assert_close(r.data["train_mean"][c], want[f"train_mean/{c}"], rtol=1e-7)
    for c in range(4):
        got = wrong.data["groups"]["test@1"]["classes"][c]["ratio_incorrect"]
        ref = want.get(f"groups/test@1/classes/{c}/mean_incorrect")
        assert_close(got, None if ref is None else ref / want[f"train_mean/{c}"], rtol=1e-7)
    # the reference is not reported against itself
    assert "train@1" not in full.data["groups"] and "train@0" in full.data["groups"]


def test_minimal_sets_use_each_rows_own_bias_when_weights_move(tmp_path):
    """Two training batches, b_0 raised by 1 between them: each row's set uses the bias of its forward."""
    import torch
    from torch import nn

    import fragility

    model = nn.Sequential(nn.Identity(), nn.Linear(2, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
        model[1].bias.copy_(torch.tensor([-1.5, 0.0]))
    x = torch.tensor([[1.0, 1.0]])
    path = tmp_path / "m.fragility"
    with fragility.Recorder(model, path, classifier=model[1], dtype="float32") as rec, rec.capture("train"):
        model(x)  # logits (0.5, 0): start -1.5 needs both entries -> |S| = 2
        rec.record(torch.tensor([0]))
        with torch.no_grad():
            model[1].bias.add_(torch.tensor([1.0, 0.0]))
        model(x)  # logits (1.5, 0): start -0.5 needs one entry -> |S| = 1
        rec.record(torch.tensor([0]))
    r = analyze(path, ["topk"], k=1)["topk"]
    assert r.data["groups"]["train@0"]["classes"][0]["mscs"]["mean_size"] == 1.5
    assert not any("approximate" in n for n in r.notes)


def test_results_shape_for_programs(random_store, tmp_path):
    r = analyze(random_store, ["topk"], k=K)["topk"]
    # tau = 0: no second, identical "unique" column; the field is null
    t = r.table("test@1")
    assert t.columns == ["class", "n", "accuracy", "unique", "unique@m", "mscs unique", "mscs unique@m", "mscs mean size",
                         "overlap correct/incorrect", "top-K features", "top-K sum"]
    assert all(c["unique_tau"] is None for c in r.data["groups"]["test@1"]["classes"])
    # tau > 0: one more column, whose name does not carry the option's value
    r2 = analyze(random_store, ["topk"], k=K, tau=0.25)["topk"]
    assert r2.table("test@1").columns[5] == "unique > tau"
    # an empty class's top-K is null everywhere (never -1)
    empty = r.data["groups"]["test@0"]["classes"][4]["topk"]
    assert all(empty[f] == {"indices": None, "values": None, "share": None} for f in ("all", "correct", "incorrect"))
    assert "-1" not in json.dumps(r.to_dict()["data"]["groups"]["test@0"]["classes"][4]["topk"])


def test_magnitude_says_why_a_class_without_training_rows_is_empty(tmp_path):
    path = make_random_store(tmp_path / "z.fragility", counts=(10, 10, 4), passes=(("train", 0), ("test", 0)), seed=3)
    # drop class 2 from the training pass: relabel its rows as class 0
    import h5py

    with h5py.File(f"{path}/passes/0000.h5", "r+") as f:
        lab = f["label"][...]
        lab[lab == 2] = 0
        f["label"][...] = lab
    r = analyze(path, ["magnitude"], k=2)["magnitude"]
    c2 = r.data["groups"]["test@0"]["classes"][2]
    assert c2["n"] == 4 and c2["mean"] is None and "no training rows of this class" in c2["reason"]
    assert r.data["groups"]["test@0"]["classes"][0]["reason"] is None
    assert any("classes c2 have rows but no training rows" in n for n in r.notes)


def test_an_unlabelled_split_alone_returns_its_group(tmp_path):
    path = make_random_store(tmp_path / "u.fragility", counts=(5, 5), passes=(("train", 0), ("pool", 0)), unlabelled=10)
    res = analyze(path, ["topk", "diversity"], k=2, split="pool")
    for name in ("topk", "diversity"):
        g = res[name].data["groups"]["pool@0"]
        assert [c["n"] for c in g["classes"]] == [0, 0]
        assert res[name].skipped["pool@0"] == {"nonfinite": 0, "unlabelled": 10}


def test_minimal_sets_can_be_skipped(random_store):
    r = analyze(random_store, ["topk"], k=K, options={"minimal_sets": False})["topk"]
    full = analyze(random_store, ["topk"], k=K)["topk"]
    g, f = r.data["groups"]["test@1"]["classes"], full.data["groups"]["test@1"]["classes"]
    assert all("mscs" not in c for c in g) and all("mscs" in c for c in f)
    assert [c["unique"] for c in g] == [c["unique"] for c in f]


def test_diversity_with_a_one_row_knn_sample(random_store):
    """A k-NN sample of one row has no neighbours: archetypes are null, the rest is unchanged."""
    r = analyze(random_store, ["diversity"], k=K, knn_max_rows=1, split="test", epoch=1)["diversity"]
    full = analyze(random_store, ["diversity"], k=K, split="test", epoch=1)["diversity"]
    for a, b in zip(r.data["groups"]["test@1"]["classes"], full.data["groups"]["test@1"]["classes"]):
        assert a["participation_ratio"] == b["participation_ratio"] and a["unique_share"] == b["unique_share"]
        if a["knn_rows"] < 2 and r.data["groups"]["test@1"]["knn_sampled"] < 2:
            assert all(v is None for v in a["archetypes"].values())


def test_diversity_keeps_only_the_open_group_in_memory(tmp_path, monkeypatch):
    """Each group is finished after its last rows: diversity's moments and k-NN sample of finished groups
    are dropped (memory flat in the number of epochs), with results equal to computing all at the end."""
    path = make_random_store(tmp_path / "e.fragility", passes=[(s, e) for e in range(4) for s in ("train", "test")])
    from fragility.analysis._engine import registry

    open_groups = []

    Diversity = registry().analyzers["diversity"]
    finish = Diversity.finish_group

    def spy(self, group):
        open_groups.append(sorted(self.state))
        finish(self, group)
        assert group not in self.state and group in self.summaries

    monkeypatch.setattr(Diversity, "finish_group", spy)
    got = analyze(path, ["diversity"], k=K)["diversity"]
    assert len(open_groups) == 8 and all(len(g) == 1 for g in open_groups)
    monkeypatch.setattr(Diversity, "finish_group", lambda self, group: None)  # the old way: all at the end
    assert_results_equal(got, analyze(path, ["diversity"], k=K)["diversity"])


def test_state_beyond_half_the_memory_is_refused_before_reading(random_store, monkeypatch):
    """A store's declared sizes (untrusted) must not make the analyzers allocate without bound: state that
    would take more than half of the machine's memory is refused in one line naming the fix."""
    from fragility.analysis import _base

    with Store(random_store) as s:
        C, D = s.num_classes, s.feature_dim
    monkeypatch.setattr(_base, "physical_memory", lambda: 2 * (2 * C * D * D * 8) - 2)  # diversity's moments: just too much
    with pytest.raises(AnalyzerError, match=r"diversity's per-class .* moments .*; leave diversity out \(-a topk -a magnitude\)"):
        analyze(random_store, ["diversity"], k=K)
    assert analyze(random_store, ["topk", "magnitude"], k=K)["topk"].data["groups"]  # the others still run
    monkeypatch.setattr(_base, "physical_memory", lambda: 64 * C * D)
    with pytest.raises(AnalyzerError, match=f"declares {C} classes x {D} features.*more memory, or check where the store came from"):
        analyze(random_store, ["topk"], k=K)


def test_units_go_group_by_group_also_for_rank_major_stores():
    """A multi-rank store lists each rank's passes in turn; the engine folds group by group (recording order
    within a group), so each group can be finished before the next begins."""
    from fragility.analysis import Plan
    from fragility.store import PassInfo

    def p(name, split, epoch, rank):
        return PassInfo(name, split, epoch, "eval", rank, 7, True, "", "", 0, ("fe",))

    passes = [p("r0/0000", "train", 0, 0), p("r0/0001", "test", 0, 0), p("r0/0002", "train", 1, 0),
              p("r1/0000", "train", 0, 1), p("r1/0001", "test", 0, 1), p("r1/0002", "train", 1, 1)]
    units = Plan.units(None, passes, rows=4)
    assert [(u[0].name, u[1], u[2]) for u in units] == [
        ("r0/0000", 0, 4), ("r0/0000", 4, 7), ("r1/0000", 0, 4), ("r1/0000", 4, 7),
        ("r0/0001", 0, 4), ("r0/0001", 4, 7), ("r1/0001", 0, 4), ("r1/0001", 4, 7),
        ("r0/0002", 0, 4), ("r0/0002", 4, 7), ("r1/0002", 0, 4), ("r1/0002", 4, 7),
    ]
    assert Plan.group_ends(units) == {3: ["train@0"], 7: ["test@0"], 11: ["train@1"]}


def test_wilson_intervals_cover_the_truth():
    """95 % Wilson intervals over seeded draws of class sizes seen in imbalanced runs (6 … 139 rows) and
    shares: at least 94 % cover the true share overall, and no (size, share) cell falls below 90 %."""
    from fragility.analysis._maths import wilson

    rng = np.random.default_rng(0)
    covered = []
    for _ in range(20000):
        n = int(rng.choice([6, 9, 13, 18, 26, 36, 51, 71, 99, 139]))
        p = rng.uniform(0.02, 0.98)
        lo, hi = wilson(int(rng.binomial(n, p)), n)
        covered.append(lo <= p <= hi)
    assert np.mean(covered) >= 0.94, np.mean(covered)
    for p in (0.05, 0.5, 0.95):
        for n in (6, 36, 139):
            cell = [wilson(int(x), n) for x in rng.binomial(n, p, 4000)]
            assert np.mean([lo <= p <= hi for lo, hi in cell]) >= 0.90, (p, n)
    assert wilson(0, 0) is None
    lo, hi = wilson(0, 6)  # hand-worked: [0, z²/(n + z²)]
    assert lo == 0 and hi == pytest.approx(1.959963984540054**2 / (6 + 1.959963984540054**2), rel=1e-12)


def test_shares_carry_their_wilson_interval(random_store):
    from fragility.analysis._maths import wilson

    r = analyze(random_store, ["topk", "magnitude"], k=K)
    for g in r["topk"].data["groups"].values():
        for c in g["classes"]:
            want = wilson(round(c["accuracy"] * c["n"]), c["n"]) if c["n"] else None
            assert c["accuracy_ci"] == (pytest.approx(want, rel=1e-12) if want else None)
    for g in r["magnitude"].data["groups"].values():
        for c in g["classes"]:
            if c["share_below_p5"] is None:
                assert c["share_below_p5_ci"] is None
            else:
                lo, hi = c["share_below_p5_ci"]
                assert lo <= c["share_below_p5"] <= hi
                assert (lo, hi) == pytest.approx(wilson(round(c["share_below_p5"] * c["n"]), c["n"]), rel=1e-12)


def test_size_matched_participation_ratio(tmp_path):
    """PR@m: the mean participation ratio of 20 seeded m-row subsamples of the class (m = smallest class), each
    from numpy's covariance; the smallest class's is its own PR with no spread."""
    from fragility.analysis._maths import participation_ratio_rows

    rng = np.random.default_rng(3)
    for m, d in ((5, 12), (40, 6)):  # the Gram and the covariance branch
        x = rng.normal(size=(m, d))
        cov = np.cov(x.T, bias=True)
        assert participation_ratio_rows(x) == pytest.approx(np.trace(cov) ** 2 / np.trace(cov @ cov), rel=1e-10)
    path = make_random_store(tmp_path / "d.fragility", counts=(30, 12, 7), d=8, passes=(("train", 0),), seed=6)
    res = analyze(path, ["diversity"], k=3)["diversity"].data["groups"]["train@0"]
    assert res["matched_m"] == 7
    s = Store(path)
    rows = s.read(s.passes[0], ["fe", "label"])
    for c, entry in enumerate(res["classes"]):
        x = rows["fe"][rows["label"] == c].astype(np.float64)
        got = entry["participation_ratio_matched"]
        if len(x) == 7:
            assert got["draws"] == 1 and got["mean"] == pytest.approx(entry["participation_ratio"], rel=1e-9)
            continue
        draw = np.random.default_rng(c)
        vals = []
        for _ in range(20):
            sub = x[draw.choice(len(x), 7, replace=False)]
            cov = np.cov(sub.T, bias=True)
            vals.append(np.trace(cov) ** 2 / np.trace(cov @ cov))
        assert got["mean"] == pytest.approx(np.mean(vals), rel=1e-9)
        assert got["interval"] == pytest.approx([np.percentile(vals, 2.5), np.percentile(vals, 97.5)], rel=1e-9)
        assert got["mean"] < entry["participation_ratio"]  # fewer rows span fewer directions


def test_magnitude_ratio_carries_a_seeded_bootstrap_interval(random_store):
    """ratio_correct_ci: 95 % percentile bootstrap of the correct rows' mean magnitude over the training mean,
    seeded per class (the same numbers every run), recomputed here from the rows."""
    r = analyze(random_store, ["magnitude"], k=K, split="test", epoch=1, options={"bootstrap": 50})["magnitude"].data
    again = analyze(random_store, ["magnitude"], k=K, split="test", epoch=1, options={"bootstrap": 50})["magnitude"].data
    assert json.dumps(r["groups"], default=str) == json.dumps(again["groups"], default=str)  # seeded: the same every run
    s = Store(random_store)
    ident = r["identity"]
    p = s.select(split="test", epoch=1)[0]
    rows = s.read(p, ["ce_pred", "label", "pred", "fe", "logits"])
    ok_rows = np.isfinite(rows["fe"]).all(1) & np.isfinite(rows["logits"]).all(1) & (rows["label"] >= 0)
    for c, entry in enumerate(r["groups"]["test@1"]["classes"]):
        if entry["ratio_correct_ci"] is None:
            continue
        sel = ok_rows & (rows["label"] == c) & (rows["pred"] == c)
        m = rows["ce_pred"][sel][:, ident[c]].astype(np.float64).mean(axis=1)
        draw = np.random.default_rng(c)
        boot = m[draw.integers(0, len(m), size=(50, len(m)))].mean(axis=1) / r["train_mean"][c]
        assert entry["ratio_correct_ci"] == pytest.approx([np.percentile(boot, 2.5), np.percentile(boot, 97.5)], rel=1e-6)


def test_bootstrap_interval_of_a_large_class_is_the_normal_approximation():
    from fragility.analysis._maths import BOOTSTRAP_MAX_ROWS, bootstrap_mean_ratio

    x = np.random.default_rng(0).gamma(2.0, size=BOOTSTRAP_MAX_ROWS + 1)
    half = 1.959963984540054 * x.std(ddof=1) / np.sqrt(len(x))
    assert bootstrap_mean_ratio(x, 2.0) == pytest.approx([(x.mean() - half) / 2, (x.mean() + half) / 2], rel=1e-12)
    small = x[:500]  # below the cap: the bootstrap agrees with the normal interval to a few percent of its width
    lo, hi = bootstrap_mean_ratio(small, 1.0, draws=400)
    h = 1.959963984540054 * small.std(ddof=1) / np.sqrt(len(small))
    assert abs(lo - (small.mean() - h)) < 0.15 * h and abs(hi - (small.mean() + h)) < 0.15 * h
    assert bootstrap_mean_ratio(x[:1], 1.0) is None and bootstrap_mean_ratio(x, 0.0) is None


def test_mean_cosine_carries_a_seeded_bootstrap_interval(tmp_path):
    path = make_random_store(tmp_path / "c.fragility", counts=(30, 12, 7), d=8, passes=(("train", 0),), seed=6)
    res = analyze(path, ["diversity"], k=3, options={"bootstrap": 64})["diversity"].data["groups"]["train@0"]
    s = Store(path)
    rows = s.read(s.passes[0], ["fe", "label"])
    for c, entry in enumerate(res["classes"]):
        x = rows["fe"][rows["label"] == c].astype(np.float64)
        u = x[np.linalg.norm(x, axis=1) > 0]
        u = u / np.linalg.norm(u, axis=1, keepdims=True)
        n = len(u)
        draw = np.random.default_rng(c)
        vals = []
        for size in (16, 16, 16, 16):
            for idx in draw.integers(0, n, size=(size, n)):
                t = u[idx].sum(axis=0)
                vals.append((t @ t - n) / (n * (n - 1)))
        assert entry["mean_cosine_ci"] == pytest.approx([np.percentile(vals, 2.5), np.percentile(vals, 97.5)], rel=1e-9)


def test_mean_cosine_interval_of_many_rows_is_the_u_statistics_normal_one():
    """Above COSINE_BOOTSTRAP_MAX_ROWS rows the interval is mean ± 1.96 · 2σ₁/√n (Hoeffding), σ₁ the spread of
    each row's mean cosine with the others: centred on the estimator itself, and within a few percent of
    the width of the seeded bootstrap it replaces."""
    from fragility.analysis._maths import COSINE_BOOTSTRAP_MAX_ROWS, bootstrap_mean_cosine, mean_pairwise_cosine

    rng = np.random.default_rng(3)
    x = np.abs(rng.normal(size=(COSINE_BOOTSTRAP_MAX_ROWS + 1, 12))) + rng.normal(size=12) ** 2
    lo, hi = bootstrap_mean_cosine(x)
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    n = len(u)
    assert (lo + hi) / 2 == pytest.approx(mean_pairwise_cosine(u.sum(axis=0), n), rel=1e-12)
    each = np.array([(u[i] @ u.sum(axis=0) - 1) / (n - 1) for i in range(n)])
    assert hi - lo == pytest.approx(2 * 1.959963984540054 * 2 * each.std(ddof=1) / np.sqrt(n), rel=1e-9)
    draw = np.random.default_rng(0)
    vals = []
    for _ in range(400):
        t = u[draw.integers(0, n, size=n)].sum(axis=0)
        vals.append((t @ t - n) / (n * (n - 1)))
    blo, bhi = np.percentile(vals, 2.5), np.percentile(vals, 97.5)
    assert abs(lo - blo) < 0.15 * (hi - lo) and abs(hi - bhi) < 0.15 * (hi - lo)


def test_one_epoch_prints_no_trajectory(random_store):
    """A single epoch is no trajectory (its overlap with the final top-K is 1 by definition): no table, the
    data entry stays; two epochs get the table."""
    one = analyze(random_store, ["magnitude"], k=K, epoch="last")["magnitude"]
    assert not any(t.title.startswith("trajectory over") for t in one.tables) and len(one.data["trajectory"]) == 1
    both = analyze(random_store, ["magnitude"], k=K)["magnitude"]
    assert any(t.title.startswith("trajectory over") for t in both.tables) and len(both.data["trajectory"]) == 2
