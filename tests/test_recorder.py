"""Recorder in a real loop: contents checked against the model's own outputs; options; bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import timm
import torch
from torch import nn

import fragility
from fragility import RecorderError, Store

from .conftest import imbalanced_data


def _loader(x, y, batch=16, with_index=True):
    out = []
    for i in range(0, len(y), batch):
        sl = slice(i, i + batch)
        out.append((x[sl], y[sl], torch.arange(i, min(i + batch, len(y)))) if with_index else (x[sl], y[sl]))
    return out


def test_three_epoch_run_matches_the_models_own_outputs(store_path):
    torch.manual_seed(0)
    x, y = imbalanced_data()
    xt, yt = imbalanced_data(seed=1)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    expected_train = []
    with fragility.Recorder(model, store_path, dtype="float32", class_names=["a", "b", "c", "d"]) as rec:
        for epoch in range(3):
            model.train()
            with rec.capture("train", epoch=epoch):
                for xb, yb, ib in _loader(x, y):
                    logits = model(xb)
                    expected_train.append((epoch, logits.detach().clone(), yb, ib))
                    loss = nn.functional.cross_entropy(logits, yb)
                    rec.record(yb, index=ib)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            rec.evaluate(_loader(xt, yt, with_index=False), split="test", epoch=epoch)
            assert model.training, "evaluate() must restore train mode"
    model.eval()
    with torch.no_grad():
        test_logits = model(xt)
        test_fe = model.forward_head(model.forward_features(xt), pre_logits=True)
    w = model.fc.weight.detach()

    store = Store(store_path)
    assert store.metadata["model_name"] == "test_resnet"
    assert store.class_names == ["a", "b", "c", "d"]
    assert store.metadata["class_counts"] == [48, 24, 12, 6]
    assert store.feature_dim == w.shape[1]
    assert [(p.split, p.epoch, p.mode, p.complete, p.rows) for p in store.passes] == [
        (s, e, m, True, 90) for e in range(3) for s, m in (("train", "train"), ("test", "eval"))
    ]
    # final test sweep == the trained model's own eval outputs
    last = store.select(split="test", epoch=2)[0]
    rows = store.read(last, ["fe", "ce_pred", "ce_target", "logits", "label", "pred", "index"])
    np.testing.assert_array_equal(rows["logits"], test_logits.numpy())
    np.testing.assert_array_equal(rows["fe"], test_fe.numpy())
    np.testing.assert_array_equal(rows["pred"], test_logits.argmax(1).numpy())
    np.testing.assert_array_equal(rows["label"], yt.numpy())
    np.testing.assert_array_equal(rows["index"], np.arange(len(yt)))
    np.testing.assert_allclose(rows["ce_pred"], (test_fe * w[test_logits.argmax(1)]).numpy(), rtol=1e-6)
    np.testing.assert_allclose(rows["ce_target"], (test_fe * w[yt]).numpy(), rtol=1e-6)
    ws, bs = store.classifier(last)
    np.testing.assert_array_equal(ws, w.numpy())
    pred = rows["pred"]
    np.testing.assert_allclose(rows["ce_pred"].sum(1) + bs[pred], rows["logits"][np.arange(len(pred)), pred], rtol=1e-4)
    # training rows == logits the loop saw at each step
    train_rows = [store.read(p, ["logits", "label", "index", "step"]) for p in store.select(split="train")]
    got = np.concatenate([r["logits"] for r in train_rows])
    want = torch.cat([e[1] for e in expected_train]).numpy()
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(np.concatenate([r["index"] for r in train_rows]), torch.cat([e[3] for e in expected_train]).numpy())
    steps = np.concatenate([r["step"] for r in train_rows])
    assert steps[0] == 1 and steps[-1] == 3 * 6 and np.all(np.diff(steps) >= 0)


def test_every_n_steps_and_per_class_caps(store_path):
    torch.manual_seed(0)
    x, y = imbalanced_data()
    model = timm.create_model("test_resnet", pretrained=False, num_classes=4)
    with fragility.Recorder(model, store_path, every=2) as rec, rec.capture("train"):
        for xb, yb, ib in _loader(x, y):
            model(xb)
            rec.record(yb, index=ib)
    s = Store(store_path)
    idx = s.read(s.passes[0], ["index"])["index"]
    # batches 0, 2, 4 of 6 (16 rows each, the last one 10)
    np.testing.assert_array_equal(idx, np.concatenate([np.arange(0, 16), np.arange(32, 48), np.arange(64, 80)]))
    s.close()

    path2 = store_path.with_name("caps.h5")
    with fragility.Recorder(model, path2, max_rows_per_class=10) as rec:
        with rec.capture("train"):
            for xb, yb, ib in _loader(x, y):
                model(xb)
                rec.record(yb, index=ib)
        rec.evaluate(_loader(x, y), split="test")
    s = Store(path2)
    labels = s.read(s.select(split="train")[0], ["label"])["label"]
    np.testing.assert_array_equal(np.bincount(labels, minlength=4), [10, 10, 10, 6])  # minority keeps all 6
    assert s.select(split="test")[0].rows == len(y)  # eval sweeps are never capped


def test_bad_labels_and_lengths(store_path, tiny_model):
    with fragility.Recorder(tiny_model, store_path) as rec, rec.capture("train"):
        tiny_model(torch.randn(4, 3, 32, 32))
        with pytest.raises(RecorderError, match=r"label 7 is outside \[0, 4\).*num_classes"):
            rec.record(torch.tensor([0, 1, 7, 2]))
        tiny_model(torch.randn(4, 3, 32, 32))
        with pytest.raises(RecorderError, match=r"labels has shape \(3,\) but the batch has 4 rows"):
            rec.record(torch.tensor([0, 1, 2]))
        tiny_model(torch.randn(4, 3, 32, 32))
        with pytest.raises(RecorderError, match=r"label -1 is outside"):
            rec.record(np.array([0, -1, 1, 1]))
        tiny_model(torch.randn(4, 3, 32, 32))
        assert rec.record(torch.tensor([0, 1, 2, 3])) == 4
    assert Store(store_path).passes[0].rows == 4


def test_misuse_errors(store_path, tiny_model):
    with pytest.raises(RecorderError, match="class_names has 2 names but classifier test_resnet.fc"):
        fragility.Recorder(tiny_model, store_path, class_names=["a", "b"])
    with pytest.raises(RecorderError, match="every=0 must be >= 1"):
        fragility.Recorder(tiny_model, store_path, every=0)
    with pytest.raises(RecorderError, match="dtype='int8' is not a storage dtype"):
        fragility.Recorder(tiny_model, store_path, dtype="int8")
    rec = fragility.Recorder(tiny_model, store_path)
    tiny_model(torch.randn(2, 3, 32, 32))
    with pytest.raises(RecorderError, match=r"record\(\) called outside a pass"):
        rec.record(torch.tensor([0, 1]))
    rec.start_pass("train")
    with pytest.raises(RecorderError, match="still open"):
        rec.start_pass("test")
    rec.close()
    with pytest.raises(RecorderError, match="is closed"):
        rec.start_pass("train")


def test_nonfinite_features_are_recorded_counted_and_reported(store_path):
    model = timm.create_model("test_resnet", pretrained=False, num_classes=4).eval()
    x = torch.randn(6, 3, 32, 32)
    x[2] = float("nan")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with fragility.Recorder(model, store_path) as rec:
            rec.evaluate([(x, torch.tensor([0, 1, 2, 3, 0, 1]))], split="test")
    assert any("1 recorded rows" in str(w.message) and "non-finite" in str(w.message) for w in caught)
    s = Store(store_path)
    p = s.passes[0]
    assert p.rows == 6 and p.nonfinite_rows == 1
    fe = s.read(p, ["fe"])["fe"]
    assert np.isnan(fe[2]).all() and np.isfinite(fe[[0, 1, 3, 4, 5]]).all()


def test_float16_storage_and_compression(store_path, tiny_model):
    tiny_model.eval()
    x = torch.randn(8, 3, 32, 32)
    with fragility.Recorder(tiny_model, store_path, dtype="float16", compression="gzip") as rec:
        rec.evaluate([(x, torch.zeros(8, dtype=torch.long))], split="test")
    with torch.no_grad():
        logits = tiny_model(x)
    s = Store(store_path)
    rows = s.read(s.passes[0], ["logits"])
    assert rows["logits"].dtype == np.float16
    np.testing.assert_allclose(rows["logits"], logits.numpy(), rtol=2e-3, atol=2e-3)
    ds = {d["path"]: d for d in s.datasets()}
    assert ds["passes/0000.h5:fe"]["compression"] == "gzip"


def test_unlabelled_sweep_has_no_ce_target(store_path, tiny_model):
    tiny_model.eval()
    with fragility.Recorder(tiny_model, store_path) as rec:
        rec.evaluate([torch.randn(5, 3, 32, 32)], split="unlabelled")
    s = Store(store_path)
    p = s.passes[0]
    assert "ce_target" not in p.columns
    np.testing.assert_array_equal(s.read(p, ["label"])["label"], -1)


def test_lifecycle_hooks_called_once_per_batch(store_path, tiny_model):
    events = []

    class Spy:
        @fragility.hookimpl
        def fragility_recording_start(self, store_path, model, metadata):
            events.append("recording_start")

        @fragility.hookimpl
        def fragility_pass_start(self, pass_info):
            events.append(f"pass_start {pass_info['split']}")

        @fragility.hookimpl
        def fragility_batch_recorded(self, pass_info, batch):
            events.append(f"batch {len(batch['pred'])}")

        @fragility.hookimpl
        def fragility_pass_end(self, pass_info):
            events.append(f"pass_end {pass_info['rows']}")

        @fragility.hookimpl
        def fragility_recording_end(self, store_path, summary):
            events.append(f"recording_end {summary['rows']}")

    pm = fragility.make_plugin_manager(autoload=False)
    pm.register(Spy())
    with fragility.Recorder(tiny_model, store_path, plugin_manager=pm) as rec:
        rec.evaluate([(torch.randn(3, 3, 32, 32), torch.zeros(3, dtype=torch.long))] * 2, split="test")
    assert events == ["recording_start", "pass_start test", "batch 3", "batch 3", "pass_end 6", "recording_end 6"]


def test_exception_in_the_loop_keeps_rows_and_leaves_the_pass_incomplete(store_path, tiny_model):
    tiny_model.eval()
    with pytest.raises(ZeroDivisionError):
        with fragility.Recorder(tiny_model, store_path) as rec:
            rec.evaluate([(torch.randn(3, 3, 32, 32), torch.tensor([0, 1, 2]))], split="test")
            with rec.capture("train", epoch=0):
                tiny_model(torch.randn(4, 3, 32, 32))
                rec.record(torch.tensor([0, 1, 2, 3]))
                1 / 0
    s = Store(store_path)
    assert [(p.split, p.rows, p.complete) for p in s.passes] == [("test", 3, True), ("train", 4, False)]


# ------------------------------------------------------------------ the column builder and the pass state


def test_build_columns_against_numpy_by_hand():
    """The stored columns of a batch, recomputed in numpy from their definitions: pred = argmax of the logits,
    CE = FE times the weight row of the predicted / true class (float32), bias of the predicted class, -1
    where labels or ids are not given, and the rows with a non-finite FE or logit flagged."""
    from fragility.recorder import build_columns

    rng = np.random.default_rng(3)
    n, d, c = 9, 6, 4
    fe = rng.normal(size=(n, d)).astype(np.float32)
    w, b = rng.normal(size=(c, d)).astype(np.float32), rng.normal(size=c).astype(np.float32)
    logits = fe @ w.T + b
    fe[2, 1], logits[5, 0] = np.nan, np.inf
    y = rng.integers(0, c, size=n)
    cols = build_columns(torch.from_numpy(fe), torch.from_numpy(w), torch.from_numpy(b), torch.from_numpy(logits),
                         torch.from_numpy(y), torch.arange(10, 10 + n), step=7, rank=2)
    pred = np.argmax(np.where(np.isnan(logits), np.inf, logits), axis=1)  # torch's argmax takes NaN as the largest
    np.testing.assert_array_equal(cols["pred"].numpy(), pred)
    for i in range(n):
        np.testing.assert_array_equal(cols["ce_pred"][i].numpy(), fe[i] * w[pred[i]])
        np.testing.assert_array_equal(cols["ce_target"][i].numpy(), fe[i] * w[y[i]])
        assert cols["bias_pred"][i].item() == b[pred[i]]
    np.testing.assert_array_equal(cols["label"].numpy(), y)
    np.testing.assert_array_equal(cols["index"].numpy(), np.arange(10, 10 + n))
    assert cols["step"].tolist() == [7] * n and cols["rank"].tolist() == [2] * n and cols["rank"].dtype == torch.int32
    assert np.flatnonzero(cols["nonfinite"].numpy()).tolist() == [2, 5]
    np.testing.assert_array_equal(cols["fe"].numpy(), fe)  # as given (NaN included)
    np.testing.assert_array_equal(cols["logits"].numpy(), logits)
    bare = build_columns(torch.from_numpy(fe), torch.from_numpy(w), torch.from_numpy(b), torch.from_numpy(logits))
    assert "ce_target" not in bare and bare["label"].tolist() == [-1] * n and bare["index"].tolist() == [-1] * n
    # half-precision FE (autocast): CE still float32, from the values the head consumed
    half = build_columns(torch.from_numpy(fe).half(), torch.from_numpy(w).half(), torch.from_numpy(b).half(),
                         torch.from_numpy(logits).half())
    assert half["ce_pred"].dtype == torch.float32 and half["fe"].dtype == torch.float16
    hp = half["pred"].numpy()
    np.testing.assert_array_equal(half["ce_pred"][0].numpy(), fe.astype(np.float16)[0].astype(np.float32)
                                  * w.astype(np.float16)[hp[0]].astype(np.float32))


def test_class_cap_keeps_the_first_rows_of_each_class():
    from fragility.recorder import class_cap

    rng = np.random.default_rng(0)
    counts = np.zeros(5, dtype=np.int64)
    want = np.zeros(5, dtype=np.int64)
    for _ in range(6):
        y = rng.integers(0, 5, size=rng.integers(1, 30))
        expected = []
        for label in y:  # the rule by hand, row by row
            expected.append(bool(want[label] < 7))
            want[label] += expected[-1]
        assert class_cap(y, counts, 7).tolist() == expected
        assert counts.tolist() == want.tolist()


def test_record_is_named_steps_and_integrations_use_the_public_pass():
    """record() is a short list of named steps around build_columns; the open pass is public to read
    (current_pass) and to abort (abort_pass), and the Lightning callback uses nothing private of the Recorder."""
    import ast
    import inspect
    import textwrap

    from fragility.integrations import lightning
    from fragility.recorder import Recorder

    fn = ast.parse(textwrap.dedent(inspect.getsource(Recorder.record))).body[0]
    assert fn.end_lineno - fn.lineno + 1 <= 40, fn.end_lineno - fn.lineno + 1  # docstring included
    tree = ast.parse(inspect.getsource(lightning))
    private = sorted({n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr.startswith("_")
                      and isinstance(n.value, (ast.Name, ast.Attribute))
                      and (getattr(n.value, "id", None) == "rec" or getattr(n.value, "attr", None) == "recorder")})
    assert private == [], private


def test_abort_pass_keeps_rows_and_leaves_the_pass_incomplete(tmp_path):
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).eval()
    path = tmp_path / "a.fragility"
    with fragility.Recorder(model, path, classifier=model[1], dtype="float32") as rec:
        assert rec.current_pass is None
        with torch.no_grad():
            rec.start_pass("test", 0)
            model(torch.randn(5, 4))
            rec.record(torch.tensor([0, 1, 2, 0, 1]))
            assert rec.current_pass == {"name": "0000", "split": "test", "epoch": 0, "mode": "eval", "rank": 0, "rows": 5}
            rec.abort_pass()
            assert rec.current_pass is None
            rec.abort_pass()  # nothing open: nothing to do
            with rec.capture("test", 0):
                model(torch.randn(2, 4))
                rec.record(torch.tensor([2, 2]))
    with Store(path) as s:
        first, second = s.passes
        assert (first.rows, first.complete, second.rows, second.complete) == (5, False, 2, True)
