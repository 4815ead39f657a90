"""Exact or refused: every stored value comes from the forward that produced it (issue 7, capture items)."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from torch import nn

import fragility
from fragility import HeadError, RecorderError, Store


def _model(num_classes=4, seed=0, **kw):
    torch.manual_seed(seed)
    return timm.create_model("test_resnet", pretrained=False, num_classes=num_classes, **kw)


def _rows(path, columns=("fe", "ce_pred", "ce_target", "bias_pred", "logits", "pred", "label", "step")):
    s = Store(path)
    return s, [s.read(p, list(columns)) for p in s.passes if p.rows]


def test_record_after_optimizer_step_stores_the_forwards_values(store_path):
    """Lightning records in on_train_batch_end, after the step: the rows must be those of the forward."""
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    x, y = torch.randn(8, 3, 32, 32), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    seen = []
    with fragility.Recorder(model, store_path, dtype="float32") as rec, rec.capture("train"):
        for _ in range(3):
            out = model(x)
            w, b = model.fc.weight.detach().clone(), model.fc.bias.detach().clone()
            nn.functional.cross_entropy(out, y).backward()
            opt.step()  # W and b move ...
            opt.zero_grad()
            assert not torch.equal(w, model.fc.weight)
            rec.record(y)  # ... before record()
            seen.append((out.detach().clone(), w, b))
    _, (rows,) = _rows(store_path)
    for i, (out, w, b) in enumerate(seen):
        r = {k: v[8 * i : 8 * i + 8] for k, v in rows.items()}
        np.testing.assert_array_equal(r["logits"], out.numpy())
        fe = torch.from_numpy(r["fe"])
        pred, label = torch.from_numpy(r["pred"]), torch.from_numpy(r["label"])
        np.testing.assert_array_equal(r["ce_pred"], (fe * w[pred]).numpy())
        np.testing.assert_array_equal(r["ce_target"], (fe * w[label]).numpy())
        np.testing.assert_array_equal(r["bias_pred"], b[pred].numpy())
        np.testing.assert_allclose(r["ce_pred"].sum(1) + r["bias_pred"], out.numpy()[np.arange(8), r["pred"]], rtol=1e-5, atol=1e-5)


def test_two_forwards_before_one_record_are_refused_and_paused_forwards_ignored(store_path):
    model = _model().train()
    x = torch.randn(4, 3, 32, 32)
    y = torch.tensor([0, 1, 2, 3])
    with fragility.Recorder(model, store_path) as rec, rec.capture("train"):
        model(x)
        model(x.flip(-1))  # a second augmented view
        with pytest.raises(RecorderError, match=r"^2 forwards reached classifier test_resnet.fc\(Linear\) since the last record\(\); .*recorder.paused"):
            rec.record(y)
        # one record() per view works
        model(x)
        assert rec.record(y) == 4
        model(x.flip(-1))
        assert rec.record(y) == 4
        # forwards under paused() are not captured (e.g. a validation loop inside the pass)
        model(x)
        with rec.paused():
            model(torch.randn(6, 3, 32, 32))
        assert rec.record(y) == 4
    s, (rows,) = _rows(store_path)
    assert s.passes[0].rows == 12


def test_classifier_snapshot_is_a_copy_not_the_live_weights(store_path, monkeypatch):
    from fragility.store import StoreWriter

    # a busy writer thread: it reaches the pass's end only after the loop went on and changed the weights
    slow_end = StoreWriter._on_end
    monkeypatch.setattr(StoreWriter, "_on_end", lambda self, *a: (__import__("time").sleep(0.3), slow_end(self, *a)))
    model = _model().eval()
    with torch.no_grad():
        w0, b0 = model.fc.weight.clone(), model.fc.bias.clone()
    rec = fragility.Recorder(model, store_path, flush_interval=60)
    with rec.capture("test"), torch.no_grad():
        model(torch.randn(4, 3, 32, 32))
        rec.record(torch.tensor([0, 1, 2, 3]))
    with torch.no_grad():
        model.fc.weight.add_(1)  # e.g. the next checkpoint's load_state_dict
        model.fc.bias.add_(1)
    rec.close()
    s = Store(store_path)
    w, b = s.classifier(s.passes[0])
    np.testing.assert_array_equal(w, w0.numpy())
    np.testing.assert_array_equal(b, b0.numpy())


class AuxLogits(nn.Module):
    """Adds a second, non-affine term to the head's output (like VOLO's auxiliary token head)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(8, 3)
        self.aux = nn.Linear(8, 3)

    def forward(self, x):
        f = self.body(x)
        return self.fc(f) + 0.5 * self.aux(f).relu()


def test_self_check_refuses_a_head_whose_map_misses_the_logits_and_can_be_turned_off(tmp_path):
    torch.manual_seed(0)
    model = AuxLogits()
    x = torch.randn(4, 3, 8, 8)
    rec = fragility.Recorder(model, tmp_path / "a.fragility", classifier=model.fc)
    with pytest.raises(HeadError, match=r"^model AuxLogits: head AuxLogits.fc\(Linear\) does not reproduce the model's logits \(error .* of the logit scale, tolerance 0.001\).*check_head=False"):
        with rec.capture("s"):
            model(x)
            rec.record(torch.tensor([0, 1, 2, 0]))
    rec.close()
    # the self-check runs on the first batch of *every* pass
    rec = fragility.Recorder(model, tmp_path / "b.fragility", classifier=model.fc)
    with rec.capture("s", epoch=0):
        with torch.no_grad():
            model.aux.weight.zero_()
            model.aux.bias.zero_()
        model(x)
        rec.record(torch.tensor([0, 1, 2, 0]))
    with torch.no_grad():
        model.aux.bias.fill_(3.0)
    with pytest.raises(HeadError, match="does not reproduce"):
        with rec.capture("s", epoch=1):
            model(x)
            rec.record(torch.tensor([0, 1, 2, 0]))
    rec.close()
    with fragility.Recorder(model, tmp_path / "c.fragility", classifier=model.fc, check_head=False) as rec:
        with rec.capture("s"):
            model(x)
            assert rec.record(torch.tensor([0, 1, 2, 0])) == 4


def test_refusal_messages_suggest_the_real_final_linear(store_path):
    import torchvision

    model = torchvision.models.resnet18(num_classes=3)
    with pytest.raises(HeadError, match=r"model ResNet has no get_classifier\(\).*classifier=model\.fc\)$"):
        fragility.Recorder(model, store_path)


def test_pass_mode_comes_from_the_forwards(store_path):
    """validate() leaves the model in eval; the loop calls model.train() inside the pass."""
    model = _model()
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    with fragility.Recorder(model, store_path, every=2) as rec:
        model.eval()  # left there by a validation step
        with rec.capture("train", epoch=0):
            model.train()
            for _ in range(4):
                model(x)
                rec.record(y)
        # a pass whose forwards switch mode is refused
        with pytest.raises(RecorderError, match=r"^pass train@1 mixes train-mode and eval-mode forwards"):
            with rec.capture("train", epoch=1):
                model(x)
                rec.record(y)
                model.eval()
                model(x)
                rec.record(y)
        model.train()
        with pytest.raises(RecorderError, match=r"started with mode='eval' but the model ran in train mode"):
            with rec.capture("test", epoch=1, mode="eval"):
                model(x)
                rec.record(y)
    s, rows = _rows(store_path)
    p = s.passes[0]
    assert (p.mode, p.rows) == ("train", 8)  # every=2 applied: 2 of 4 steps kept
    assert sorted(set(rows[0]["step"].tolist())) == [1, 3]


def test_class_counts_written_for_a_pass_started_in_eval_mode(store_path):
    model = _model()
    with fragility.Recorder(model, store_path) as rec:
        model.eval()
        with rec.capture("train", epoch=0):
            model.train()
            model(torch.randn(4, 3, 32, 32))
            rec.record(torch.tensor([0, 0, 1, 3]))
    assert Store(store_path).metadata["class_counts"] == [2, 1, 0, 1]


def test_autocast_bf16_ce_is_float32_from_the_heads_input(store_path):
    model = _model()
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    with fragility.Recorder(model, store_path, dtype="float32") as rec, rec.capture("train"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
        assert out.dtype == torch.bfloat16
        rec.record(y)
    _, (rows,) = _rows(store_path)
    w = model.fc.weight.detach().float()
    fe = torch.from_numpy(rows["fe"])  # bf16 values, exactly representable in float32
    pred = torch.from_numpy(rows["pred"])
    np.testing.assert_array_equal(rows["ce_pred"], (fe * w[pred]).numpy())
    np.testing.assert_array_equal(rows["ce_target"], (fe * w[torch.from_numpy(rows["label"])]).numpy())
    np.testing.assert_array_equal(rows["logits"], out.float().detach().numpy())


def test_empty_batch_is_refused_in_one_line(store_path):
    model = _model()
    with fragility.Recorder(model, store_path) as rec, rec.capture("train"):
        model(torch.randn(0, 3, 32, 32))
        with pytest.raises(RecorderError, match=r"^the batch of the last forward has 0 rows"):
            rec.record(torch.zeros(0, dtype=torch.long))


def test_rows_are_copied_even_when_no_dtype_conversion_copies_them(store_path):
    """float16 features stored as float16: the tensor the head consumed is changed in place after record()."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Identity(), nn.Linear(8, 3)).half()
    seen = []
    model[1].register_forward_hook(lambda m, a, o: seen.append(a[0]))
    x = torch.randn(5, 8).half()
    want = x.clone()
    with fragility.Recorder(model, store_path, classifier=model[1], flush_interval=60) as rec, rec.capture("test"):
        with torch.no_grad():
            model(x)
        rec.record(torch.tensor([0, 1, 2, 0, 1]))
        seen[0].add_(100)  # e.g. an in-place op of the next step reusing the buffer
    s = Store(store_path)
    np.testing.assert_array_equal(s.read(s.passes[0], ["fe"])["fe"], want.numpy())
