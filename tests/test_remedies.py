"""Remedies on a store: the published formulas by brute force, re-scoring bit for bit, EOS's procedure,
cRT / reweight against scikit-learn, saved heads, bad input, the command."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os

import numpy as np
import pytest
import torch

from fragility import Store
from fragility.analysis import analyze
from fragility.cli import main
from fragility.remedies import (
    REMEDIES,
    RemedyError,
    Rescored,
    class_balanced_weights,
    eos_features,
    eos_rows,
    load_head,
    objective,
    read_head,
    remedy,
    rescore,
    train_head,
)
from fragility.store import StoreWriter
from fragility.testing import assert_results_equal, make_random_store
from .conftest import json_results

C, D = 4, 12
COUNTS_TRAIN = (40, 20, 10, 5)
COUNTS_TEST = (30, 30, 30, 30)


def _columns(fe, labels, weight, bias):
    """A store's columns for rows ``fe`` under head ``(weight, bias)``, written out longhand (float64 sums)."""
    logits = (fe.astype(np.float64) @ weight.T.astype(np.float64) + bias.astype(np.float64)).astype(np.float32)
    pred = logits.argmax(axis=1)
    return {"fe": fe, "ce_pred": fe * weight[pred], "ce_target": fe * weight[labels], "bias_pred": bias[pred], "logits": logits,
            "label": labels, "pred": pred, "index": np.arange(len(labels)), "step": np.zeros(len(labels), dtype=np.int64),
            "rank": np.zeros(len(labels), dtype=np.int32)}


def _data(seed=0, counts_train=COUNTS_TRAIN, counts_test=COUNTS_TEST, d=D, spread=1.0):
    rng = np.random.default_rng(seed)
    c = len(counts_train)
    centres = rng.normal(size=(c, d)) * 2

    def rows(counts):
        y = np.repeat(np.arange(c), counts)
        rng.shuffle(y)
        return (np.abs(centres[y] + rng.normal(size=(len(y), d)) * spread)).astype(np.float32), y

    (ftr, ytr), (fte, yte) = rows(counts_train), rows(counts_test)
    weight = rng.normal(size=(c, d)).astype(np.float32) * np.array([3, 1.5, 1, 0.5], dtype=np.float32)[:c, None] if c == 4 else \
        rng.normal(size=(c, d)).astype(np.float32)
    bias = rng.normal(size=c).astype(np.float32)
    return ftr, ytr, fte, yte, weight, bias


def _store(path, ftr, ytr, fte, yte, weight, bias, *, head="toy.fc(Linear)", train_eval=True, test=True, **meta):
    c = len(bias)
    w = StoreWriter(os.fspath(path), {"model_name": "toy", "head": head, "num_classes": c, "class_names": [f"k{i}" for i in range(c)],
                                      "feature_dim": ftr.shape[1], "rank": 0, "plugins": [], "fragility_version": "test", **meta},
                    dtype="float32", chunk_rows=16, overwrite=True)
    sweeps = ([("train_eval", ftr, ytr)] if train_eval else []) + ([("test", fte, yte)] if test else [])
    for i, (split, fe, y) in enumerate(sweeps):
        name = f"{i:04d}"
        w.begin_pass(name, {"split": split, "epoch": 3, "mode": "eval", "rank": 0})
        w.write_classifier(name, weight, bias)
        cols = _columns(fe, y, weight, bias)
        for s in range(0, len(y), 25):
            w.append(name, {k: v[s : s + 25] for k, v in cols.items()})
        w.end_pass(name, weight, bias)
    w.close()
    return os.fspath(path)


def _same(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert_results_equal(a[name], b[name], rtol=0, atol=0)


@pytest.fixture
def hand(tmp_path):
    data = _data()
    return _store(tmp_path / "h.fragility", *data), data


# ------------------------------------------------------------------------------------ formulas, exactly


def test_tau_norm_and_logit_adjust_equal_their_formulas_and_rescore_exactly(hand, tmp_path):
    path, (ftr, ytr, fte, yte, weight, bias) = hand
    r = remedy(path, ["tau-norm", "logit-adjust"], tau=0.7, out=tmp_path / "heads")
    # the published formulas, brute force (float64, one class at a time)
    w_tau = np.stack([weight[c].astype(np.float64) / math.sqrt(sum(float(x) ** 2 for x in weight[c])) ** 0.7 for c in range(C)])
    n = np.bincount(ytr, minlength=C)
    b_la = np.array([float(bias[c]) - 0.7 * math.log(n[c] / n.sum()) for c in range(C)])
    w1, b1, _ = read_head(tmp_path / "heads" / "tau-norm.pt")
    w2, b2, _ = read_head(tmp_path / "heads" / "logit-adjust.pt")
    assert np.array_equal(w1, w_tau.astype(np.float32))  # the float64 formula, stored as float32: exactly
    assert np.array_equal(b1, bias) and np.array_equal(w2, weight)
    assert np.array_equal(b2, b_la.astype(np.float32))
    for name, (w, b) in {"tau-norm": (w1, b1), "logit-adjust": (w2, b2)}.items():
        # per-class accuracy after = brute force over the test rows with that head
        pred = [max(range(C), key=lambda c: (sum(float(fte[i, j]) * float(w[c, j]) for j in range(D)) + float(b[c]), -c))
                for i in range(len(yte))]
        got = r.data["remedies"][name]["classes"]
        for c in range(C):
            rows = [i for i in range(len(yte)) if yte[i] == c]
            assert got[c]["accuracy"][1] == pytest.approx(sum(pred[i] == c for i in rows) / len(rows), abs=0)
            assert got[c]["n_train"] == n[c]
        # every analyzer runs on the remedied head unchanged: equal, bit for bit, to a store recorded with that head
        other = _store(tmp_path / f"{name}.fragility", ftr, ytr, fte, yte, w, b)
        st = Store(path)
        view = Rescored(st, st.passes, w, b)
        for names in (["topk", "magnitude"], ["diversity"], ["authors"]):
            _same(analyze(view, names), analyze(other, names))
        st.close()
    # the recorded head, for comparison, is what the store analyses to
    before = analyze(path, ["topk"])["topk"].data["groups"]["test@3"]["classes"]
    assert [c["accuracy"][0] for c in r.data["remedies"]["tau-norm"]["classes"]] == [c["accuracy"] for c in before]


def test_rescoring_with_the_recorded_head_is_bit_for_bit(tmp_path):
    path = make_random_store(tmp_path / "r.fragility", passes=(("train", 0), ("train_eval", 0), ("test", 0)), ties=True)
    st = Store(path)
    for p in st.select(split=["train_eval", "test"]):
        w, b = st.classifier(p)
        view = Rescored(st, [p], w, b)
        cols = ["logits", "pred", "ce_pred", "ce_target", "bias_pred", "fe", "label"]
        got, stored = view.read(p, cols), st.read(p, cols)
        for c in cols:
            assert got[c].dtype == stored[c].dtype or c == "pred", c
            assert np.array_equal(got[c].astype(stored[c].dtype), stored[c]), c
    sel = st.select(split=["train_eval", "test"])
    w, b = st.classifier(sel[-1])
    view = Rescored(st, sel, *st.classifier(sel[0]))
    _same(analyze(view, ["topk", "magnitude", "diversity"], split="train_eval"),
          analyze(st, ["topk", "magnitude", "diversity"], split="train_eval"))
    st.close()


def test_rescoring_a_recorded_model_matches_its_logits(tmp_path, tiny_model):
    import fragility

    torch.manual_seed(1)
    x, y = torch.randn(40, 3, 32, 32), torch.arange(40) % 4
    with fragility.Recorder(tiny_model, tmp_path / "m.fragility", dtype="float32") as rec:
        tiny_model.eval()
        rec.evaluate([(x, y)], split="test")
    st = Store(tmp_path / "m.fragility")
    p = st.passes[0]
    w, b = st.classifier(p)
    got, stored = Rescored(st, [p], w, b).read(p, ["logits", "pred", "ce_pred"]), st.read(p, ["logits", "pred", "ce_pred"])
    np.testing.assert_allclose(got["logits"], stored["logits"], rtol=1e-5, atol=1e-5)  # float64 sums vs the model's float32
    assert np.array_equal(got["pred"], stored["pred"])
    assert np.array_equal(got["ce_pred"], stored["ce_pred"])  # fe * W[pred] in float32, as the recorder computes it
    st.close()


def test_tau_is_chosen_on_held_out_rows_which_every_number_leaves_out(hand, tmp_path):
    path, (ftr, ytr, fte, yte, weight, bias) = hand
    r = remedy(path, ["tau-norm"], out=tmp_path / "o")
    tuning = r.data["tuning"]
    assert [t for t, _ in tuning["grid"]] == [round(0.1 * i, 1) for i in range(21)]
    best = max(s for _, s in tuning["grid"])
    assert tuning["chosen"] == min(t for t, s in tuning["grid"] if s == best)
    held = sum(int(n * 0.2) for n in COUNTS_TEST)
    assert r.data["test_rows"] == len(yte) - held
    assert sum(c["n"] for c in r.data["remedies"]["tau-norm"]["classes"]) == len(yte) - held
    # the documented slice (seeded permutation of each class's rows, the first 20 %) and every tau's score on it, by hand
    rng = np.random.RandomState(0)
    held = np.concatenate([rng.permutation(np.flatnonzero(yte == c))[: int((yte == c).sum() * 0.2)] for c in range(C)])
    for tau, score in tuning["grid"]:
        norm = np.sqrt((weight.astype(np.float64) ** 2).sum(axis=1))
        w = (weight / norm[:, None] ** tau).astype(np.float32)
        pred = (fte[held].astype(np.float64) @ w.T.astype(np.float64) + bias).astype(np.float32).argmax(axis=1)
        assert score == pytest.approx(np.mean([(pred[yte[held] == c] == c).mean() for c in range(C)]), abs=1e-12)
    assert any("held-out test rows" in n for n in r.notes)
    # the evaluated rows are the others: the recorded head's accuracy there, by hand
    pred0 = (fte.astype(np.float64) @ weight.T.astype(np.float64) + bias).astype(np.float32).argmax(axis=1)
    rest = np.setdiff1d(np.arange(len(yte)), held)
    for c, entry in enumerate(r.data["remedies"]["tau-norm"]["classes"]):
        assert entry["accuracy"][0] == pytest.approx((pred0[rest][yte[rest] == c] == c).mean(), abs=0)


# ----------------------------------------------------------------------------------------------- EOS


def test_eos_follows_the_authors_procedure(tmp_path):
    from sklearn.neighbors import NearestNeighbors

    rng = np.random.default_rng(3)
    counts = np.array([60, 25, 12, 6, 3])
    y = np.repeat(np.arange(5), counts)
    fe = (rng.normal(size=(len(y), 6)) + y[:, None] * 0.8).astype(np.float32)
    # EOS.py, re-implemented from its description: 10 nearest neighbours of every row (itself excluded), a base is a
    # minority row with at least one enemy among them
    nn = NearestNeighbors(n_neighbors=11).fit(fe.astype(np.float64))
    _, ind = nn.kneighbors(fe.astype(np.float64))
    neighbours = {i: [j for j in ind[i] if j != i][:10] for i in range(len(y))}
    bases = {i for i in range(len(y)) if counts[y[i]] < counts.max() and any(y[j] != y[i] for j in neighbours[i])}
    for seed in (0, 1):
        syn = eos_rows(fe, y, 5, k=10, seed=seed)
        got = np.bincount(syn["label"], minlength=5)
        assert got.tolist() == (counts.max() - counts).tolist()  # up to the largest class; the majority gets none
        x = eos_features(fe, syn, np.arange(len(syn["label"])))
        for i in range(len(syn["label"])):
            b, nb, c = int(syn["base"][i]), int(syn["neighbour"][i]), int(syn["label"][i])
            assert b in bases and y[b] == c
            assert nb in neighbours[b] and y[nb] != c  # an enemy among the base's 10 nearest
            r = float(syn["r"][i])
            assert 0.0 <= r < 1.0
            np.testing.assert_allclose(x[i], fe[b] + r * (fe[nb] - fe[b]), rtol=1e-6, atol=1e-6)  # on the segment
    # a class without any enemy near it (12 rows far from the rest: each one's 10 nearest are its own) gets no rows, and says so
    far = fe.copy()
    far[y == 2] += 100.0
    syn = eos_rows(far, y, 5, seed=0)
    assert syn["no_base"].tolist() == [2] and 2 not in syn["label"].tolist()


def test_nearest_rows_equal_sklearn():
    from sklearn.neighbors import NearestNeighbors

    from fragility.analysis._maths import nearest_rows

    rng = np.random.default_rng(5)
    x = rng.normal(size=(300, 7)).astype(np.float32)
    rows = np.array([0, 5, 17, 299, 150])
    got = nearest_rows(x, rows, 10, block=2, col_block=64)
    _, ind = NearestNeighbors(n_neighbors=11).fit(x.astype(np.float64)).kneighbors(x[rows].astype(np.float64))
    for g, want, r in zip(got, ind, rows):
        assert g.tolist() == [j for j in want if j != r][:10]


# --------------------------------------------------------------------------------- cRT and reweight


def _separable(seed=0):
    return _data(seed, counts_train=(200, 60, 20, 8), counts_test=(50, 50, 50, 50), spread=0.15)


@pytest.mark.parametrize("name", ["crt", "reweight"])
def test_retrained_heads_match_scikit_learn(tmp_path, name):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    ftr, ytr, fte, yte, weight, bias = _separable()
    path = _store(tmp_path / "s.fragility", ftr, ytr, fte, yte, weight, bias)
    r = remedy(path, [name], out=tmp_path / "o")
    counts = np.bincount(ytr, minlength=C)
    sw = (1.0 / counts if name == "crt" else class_balanced_weights(counts))[ytr]
    lr = LogisticRegression(C=1e4, max_iter=5000).fit(ftr, ytr, sample_weight=sw)
    pred = lr.predict(fte)
    ours = r.data["remedies"][name]["classes"]
    for c in range(C):
        ref = float((pred[yte == c] == c).mean())
        assert abs(ours[c]["accuracy"][1] - ref) <= 0.01, (c, ours[c]["accuracy"], ref)
    # the same loss value on identical parameters: ours and scikit-learn's weighted log-loss
    for w, b in ((lr.coef_, lr.intercept_), read_head(tmp_path / "o" / f"{name}.pt")[:2]):
        z = ftr.astype(np.float64) @ np.asarray(w, np.float64).T + np.asarray(b, np.float64)
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        assert objective(name, ftr, ytr, w, b, counts) == pytest.approx(log_loss(ytr, p, sample_weight=sw, labels=range(C)), rel=1e-9)
    if name == "reweight":  # and torch's weighted cross-entropy, which the training minimises, is the same function
        w, b = read_head(tmp_path / "o" / "reweight.pt")[:2]
        loss = torch.nn.CrossEntropyLoss(weight=torch.tensor(class_balanced_weights(counts)))(
            torch.from_numpy(ftr.astype(np.float64)) @ torch.from_numpy(w.astype(np.float64)).T + torch.from_numpy(b.astype(np.float64)),
            torch.from_numpy(ytr))
        assert float(loss) == pytest.approx(objective(name, ftr, ytr, w, b, counts), rel=1e-12)


def test_retraining_is_deterministic_and_saved_heads_are_reused(hand, tmp_path):
    path, _ = hand
    a = remedy(path, ["crt", "eos"], seed=4, out=tmp_path / "a")
    b = remedy(path, ["crt", "eos"], seed=4, out=tmp_path / "b")
    for name in ("crt", "eos"):
        wa, ba, oa = read_head(tmp_path / "a" / f"{name}.pt")
        wb, bb, ob = read_head(tmp_path / "b" / f"{name}.pt")
        assert np.array_equal(wa, wb) and np.array_equal(ba, bb) and oa == ob
    assert a.data["remedies"] == {k: {**v, "head": v["head"].replace(os.sep + "b" + os.sep, os.sep + "a" + os.sep)}
                                  for k, v in b.data["remedies"].items()}
    mtime = os.stat(tmp_path / "a" / "crt.pt").st_mtime_ns
    again = remedy(path, ["crt"], seed=4, out=tmp_path / "a")
    assert again.data["remedies"]["crt"]["reused"] and os.stat(tmp_path / "a" / "crt.pt").st_mtime_ns == mtime
    assert again.data["remedies"]["crt"]["classes"] == a.data["remedies"]["crt"]["classes"]
    other = remedy(path, ["crt"], seed=5, out=tmp_path / "a")
    assert not other.data["remedies"]["crt"]["reused"]
    # the default folder sits next to the store, which is never modified
    before = sorted(os.listdir(path))
    remedy(path, ["logit-adjust"])
    assert os.path.exists(path + ".remedies/logit-adjust.pt") and os.path.exists(path + ".remedies/remedy.json")
    assert sorted(os.listdir(path)) == before


def test_load_head_puts_the_remedy_into_the_model(hand, tmp_path):
    path, (ftr, ytr, fte, yte, weight, bias) = hand
    remedy(path, ["tau-norm"], tau=1.0, out=tmp_path / "o")

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(D, C)

        def get_classifier(self):
            return self.fc

        def forward(self, x):
            return self.fc(x)

    net = Net()
    load_head(net, tmp_path / "o" / "tau-norm.pt")
    w, b, _ = read_head(tmp_path / "o" / "tau-norm.pt")
    with torch.no_grad():
        out = net(torch.from_numpy(fte)).numpy()
    np.testing.assert_allclose(out, rescore(fte, w, b)["logits"], rtol=1e-5, atol=1e-5)
    with pytest.raises(RemedyError, match="3 x 12"):

        class Small(Net):
            def __init__(self):
                super().__init__()
                self.fc = torch.nn.Linear(D, 3)

        load_head(Small(), tmp_path / "o" / "tau-norm.pt")
    with pytest.raises(RemedyError, match="not a remedied head"):
        (tmp_path / "junk.pt").write_bytes(b"not a head")
        read_head(tmp_path / "junk.pt")


# --------------------------------------------------------------------------------------------- bad input


def test_bad_input_is_one_line_with_the_fix(tmp_path):
    ftr, ytr, fte, yte, weight, bias = _data()
    no_sweep = _store(tmp_path / "n.fragility", ftr, ytr, fte, yte, weight, bias, train_eval=False)
    with pytest.raises(RemedyError, match=r"rec\.evaluate\(train_loader, split='train_eval'\)"):
        remedy(no_sweep, ["tau-norm"], tau=1)
    normed = _store(tmp_path / "l.fragility", ftr, ytr, fte, yte, weight, bias, head="toy.linear(NormedLinear)")
    with pytest.raises(RemedyError, match="NormedLinear.*not a plain nn.Linear"):
        remedy(normed, ["tau-norm"], tau=1)
    two = _store(tmp_path / "t.fragility", ftr, ytr, fte, yte, weight, bias, head="deit.head(Linear)+deit.head_dist(Linear)")
    with pytest.raises(RemedyError, match="averages several classifier layers"):
        remedy(two, ["crt"])
    good = _store(tmp_path / "g.fragility", ftr, ytr, fte, yte, weight, bias)
    with pytest.raises(RemedyError, match=r"'tau-nrm' is unknown \(did you mean 'tau-norm'\?\)"):
        remedy(good, ["tau-nrm"])
    with pytest.raises(RemedyError, match=r"out of range for tau-norm: it must lie in \[0, 2\]"):
        remedy(good, ["tau-norm"], tau=2.5)
    with pytest.raises(RemedyError, match="out of range for logit-adjust"):
        remedy(good, ["logit-adjust"], tau=-1)
    with pytest.raises(RemedyError, match="epoch 9 .* epochs with both: 3"):
        remedy(good, ["tau-norm"], tau=1, epoch=9)
    gap = _store(tmp_path / "z.fragility", ftr[ytr != 3], ytr[ytr != 3], fte, yte, weight, bias)
    with pytest.raises(RemedyError, match="class 'k3' has no rows .* prior is 0"):
        remedy(gap, ["logit-adjust"])
    with pytest.raises(RemedyError, match="tau applies to tau-norm and logit-adjust only; leave it out for eos"):
        remedy(good, ["eos"], tau=1)
    for argv, want in (([no_sweep], "train_eval"), ([good, "-r", "tau-norm", "--tau", "9"], "out of range"),
                       ([good, "-r", "bogus"], "unknown")):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            assert main(["remedy", *argv]) == 2
        lines = err.getvalue().strip().splitlines()
        assert len(lines) == 1 and want in lines[0] and "Traceback" not in err.getvalue(), err.getvalue()


def test_remedy_command_prints_and_writes_json(hand, tmp_path, capsys):
    path, _ = hand
    assert main(["remedy", path, "-r", "logit-adjust", "--tau", "0.5", "--json", "--out", os.fspath(tmp_path / "o")]) == 0
    doc = json_results(capsys.readouterr().out, "remedy")["remedy"]
    direct = remedy(path, ["logit-adjust"], tau=0.5, out=tmp_path / "o")
    assert doc["data"]["remedies"]["logit-adjust"]["classes"] == json.loads(direct.to_json())["data"]["remedies"]["logit-adjust"]["classes"]
    assert main(["remedy", path, "-r", "tau-norm", "--tau", "0", "--out", os.fspath(tmp_path / "o")]) == 0
    text = capsys.readouterr().out
    assert "tau-norm vs the recorded head" in text and "balanced acc" in text
    assert set(REMEDIES) == {"tau-norm", "logit-adjust", "crt", "reweight", "eos"}


# ---------------------------------------------------------------------------------------------- the report


def test_report_shows_remedies_saved_next_to_the_store_and_distrusts_the_file(hand, tmp_path):
    from fragility.report import build_report

    path, _ = hand
    r = remedy(path, ["tau-norm", "eos"], tau=1.0)
    index = build_report([path], tmp_path / "rep")
    page = open(index).read()
    assert "Remedies: what a new head changes" in page and os.path.exists(tmp_path / "rep" / "plots" / "remedies-00.png")
    for name, entry in r.data["remedies"].items():  # the caption names each remedy and the classes its intervals move
        assert f"{name}: helps" in page
        for e in entry["classes"]:
            if e["accuracy_changed"]:
                assert f"{e['class']}" in page and f"{e['accuracy'][0]:.2f} → {e['accuracy'][1]:.2f}" in page
    # the caption's pooled share below p5 of the minority classes, by hand, with its Wilson intervals
    from fragility.analysis._maths import wilson
    from fragility_plugins.report_sections import minority

    minor = sorted(minority(r.data["train_counts"]))
    for name, entry in r.data["remedies"].items():
        for side in (0, 1):
            below = sum(round(entry["classes"][c]["share_below_p5"][side] * entry["classes"][c]["n"]) for c in minor)
            n = sum(entry["classes"][c]["n"] for c in minor)
            lo, hi = wilson(below, n)
            assert f"{below / n:.3g} [{lo:.3g}–{hi:.3g}]" in page, (name, side)
    saved = path + ".remedies/remedy.json"
    doc = json.load(open(saved))
    # a tampered file: markup in a name, strings for numbers, a remedy that does not exist
    doc["data"]["remedies"]["tau-norm"]["classes"][0] = {"class": "<script>x</script>", "accuracy": ["a", {}], "share_below_p5": 7}
    doc["data"]["remedies"]["<b>evil</b>"] = doc["data"]["remedies"]["eos"]
    doc["data"]["recorded"] = "nope"
    open(saved, "w").write(json.dumps(doc))
    page = open(build_report([path], tmp_path / "rep2")).read()
    assert "<script>x</script>" not in page and "<b>evil</b>" not in page and "Remedies:" in page
    # a file that no longer describes the store's sweeps (another head) is not shown
    doc["data"]["remedies"]["eos"]["options"]["fingerprint"] = "0" * 16
    doc["data"]["remedies"]["tau-norm"]["options"]["fingerprint"] = "0" * 16
    open(saved, "w").write(json.dumps(doc))
    assert "Remedies:" not in open(build_report([path], tmp_path / "rep3")).read()
    from fragility.remedies import saved_results

    with Store(path) as st:  # what the report reads: nothing from junk, and no exception
        for junk in (b"[" * 100000, b"\xff\xfe", b'{"data": {"epoch": "x"}}', b'{"data": {"epoch": 3, "remedies": []}}'):
            open(saved, "wb").write(junk)
            assert saved_results(st) is None
