"""The ``authors`` analyzer: the paper authors' minimal sets (true class's bias, capped at D) and
``img_CE_top``'s ratios, against a brute-force re-implementation of their loops, row by row."""

from __future__ import annotations

import numpy as np
import pytest

import fragility
from fragility.store._writer import StoreWriter
from fragility.testing import check_analyzer, make_random_store

from fragility_plugins.authors import both_minimal_sets


def _authors_loop(ce: np.ndarray, logits: np.ndarray, pred: int, b_true: float) -> list[int]:
    """cif_CE_mag_all.py's loop for one row: start at b_c + the negative entries, add entries of CE_p from
    the largest (ties: lower index) until the total reaches the runner-up; past the positive ones it keeps
    adding, so a row they cannot settle ends with all D."""
    runner = max(float(v) for j, v in enumerate(logits) if j != pred)
    total = float(b_true) + sum(float(v) for v in ce if v < 0)
    chosen: list[int] = []
    if total >= runner:
        return chosen
    for j in sorted(range(len(ce)), key=lambda j: (-float(ce[j]), j)):
        chosen.append(j)
        if float(ce[j]) > 0:
            total += float(ce[j])
        if total >= runner and float(ce[j]) > 0:
            return chosen
    return chosen


def _fragility_loop(ce: np.ndarray, logits: np.ndarray, pred: int, b_pred: float) -> list[int]:
    """fragility's definition for one row: the same from b_p, stopping after the last positive entry."""
    runner = max(float(v) for j, v in enumerate(logits) if j != pred)
    total = float(b_pred) + sum(float(v) for v in ce if v < 0)
    chosen: list[int] = []
    for j in sorted(range(len(ce)), key=lambda j: (-float(ce[j]), j)):
        if total >= runner or float(ce[j]) <= 0:
            break
        chosen.append(j)
        total += float(ce[j])
    return chosen


def _hand_store(path, n: int = 240, d: int = 7, c: int = 3, seed: int = 0) -> tuple[str, dict]:
    """An eval sweep whose biases differ a lot between classes, so misclassified rows start far from their
    true class's bias and many cannot be settled by their positive entries (the cap)."""
    rng = np.random.default_rng(seed)
    weight = rng.normal(size=(c, d)).round(1).astype(np.float32)
    bias = np.array([2.0, -3.0, 0.5], dtype=np.float32)[:c]
    fe = np.abs(rng.normal(size=(n, d))).round(1).astype(np.float32)  # rounded: ties are common
    labels = rng.integers(0, c, n)
    logits = (fe.astype(np.float64) @ weight.T.astype(np.float64) + bias).astype(np.float32)
    pred = logits.argmax(axis=1)
    w = StoreWriter(path, {"model_name": "hand", "head": "fc(Linear)", "num_classes": c, "class_names": ["a", "b", "c"][:c],
                           "feature_dim": d, "rank": 0, "plugins": [], "fragility_version": "test"},
                    dtype="float32", chunk_rows=16, overwrite=True)
    w.begin_pass("0000", {"split": "test", "epoch": 0, "mode": "eval", "rank": 0})
    w.write_classifier("0000", weight, bias)
    rows = {"fe": fe, "ce_pred": fe * weight[pred], "ce_target": fe * weight[labels], "bias_pred": bias[pred], "logits": logits,
            "label": labels, "pred": pred, "index": np.arange(n), "step": np.zeros(n, np.int64), "rank": np.zeros(n, np.int32)}
    w.append("0000", rows)
    w.end_pass("0000", weight, bias)
    w.close()
    return path, {**rows, "bias": bias}


def test_authors_sets_equal_their_loop_row_by_row(tmp_path):
    path, r = _hand_store(str(tmp_path / "h.fragility"))
    n, d = r["fe"].shape
    ours, theirs, capped = both_minimal_sets(r["ce_pred"], r["logits"], r["pred"], r["bias_pred"].astype(np.float64),
                                             r["bias"][r["label"]].astype(np.float64))
    wrong = r["label"] != r["pred"]
    for i in range(n):
        want = _authors_loop(r["ce_pred"][i], r["logits"][i], int(r["pred"][i]), r["bias"][r["label"][i]])
        assert sorted(np.flatnonzero(theirs[i])) == sorted(want), i
        assert capped[i] == (len(want) == d and sum(r["ce_pred"][i] > 0) < d), i
        assert sorted(np.flatnonzero(ours[i])) == sorted(_fragility_loop(r["ce_pred"][i], r["logits"][i], int(r["pred"][i]),
                                                                          r["bias_pred"][i])), i
    # the rows exercise what differs: misclassified rows, capped rows, and sets that differ between conventions
    assert wrong.sum() > 20 and capped.sum() > 5 and (ours != theirs).any(axis=1).sum() > 20
    assert not (ours != theirs)[~wrong & ~capped].any()  # correct, uncapped rows: the same set

    # per class through the analyzer: frequencies, unique counts, mean sizes and capped rows of the brute force
    res = fragility.analyze(path, ["authors", "topk"], k=3)
    g = res["authors"].data["groups"]["test@0"]
    tk = res["topk"].data["groups"]["test@0"]
    for c, entry in enumerate(g["classes"]):
        rows = r["label"] == c
        np.testing.assert_array_equal(entry["sets"]["freq"], theirs[rows].mean(axis=0))
        assert entry["sets"]["unique"] == int(theirs[rows].any(axis=0).sum())
        assert entry["sets"]["mean_size"] == pytest.approx(theirs[rows].sum(axis=1).mean())
        assert entry["sets"]["capped"] == int(capped[rows].sum())
        # fragility's own definition is unchanged: the same as topk's minimal sets
        assert entry["fragility_sets"]["unique"] == tk["classes"][c]["mscs"]["unique"]
        np.testing.assert_array_equal(entry["fragility_sets"]["freq"], tk["classes"][c]["mscs"]["freq"])
        # img_CE_top's ratios: the class's mean CE over its correct rows, top int(0.1 * D) = 0 features at D = 7
        assert entry["top_share"] is None
    assert any("int(0.1 · D) = 0" in note for note in res["authors"].notes)


def test_img_ce_top_ratios_by_hand(tmp_path):
    """D = 20: the top int(0.1 · 20) = 2 features of the mean CE of the correctly classified rows, as a share
    of the summed mean CE and of its positive entries."""
    path = make_random_store(tmp_path / "r.fragility", counts=(30, 20, 10), d=20, passes=[("test", 0)], ties=False)
    res = fragility.analyze(path, ["authors"])
    g = res["authors"].data["groups"]["test@0"]
    with fragility.Store(path) as s:
        r = s.read(s.passes[0], ["ce_pred", "label", "pred"])
    assert res["authors"].data["k_top"] == 2
    for c, entry in enumerate(g["classes"]):
        ok = (r["label"] == c) & (r["pred"] == c)
        assert entry["n_correct"] == int(ok.sum())
        if not ok.any():
            assert entry["top_share"] is None
            continue
        m = r["ce_pred"][ok].astype(np.float64).mean(axis=0)
        top = np.sort(m)[::-1][:2].sum()
        assert entry["top_share"] == pytest.approx(top / m.sum(), rel=1e-9)
        assert entry["top_share_positive"] == pytest.approx(top / m[m > 0].sum(), rel=1e-9)


def test_authors_refuses_train_mode_sets_and_is_chunk_invariant(tmp_path):
    path = make_random_store(tmp_path / "m.fragility", counts=(30, 12, 5), d=15, passes=[("train", 0), ("test", 0)])
    res = fragility.analyze(path, ["authors"])
    train = res["authors"].data["groups"]["train@0"]
    assert all("sets" not in c for c in train["classes"]) and all("sets" in c for c in res["authors"].data["groups"]["test@0"]["classes"])
    assert any("train@0: the authors' minimal sets need the true class's bias" in n for n in res["authors"].notes)
    check_analyzer("authors", path)  # chunk sizes and merged partial states give the same result
