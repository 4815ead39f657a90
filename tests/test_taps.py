"""Taps across timm families: FE equals the head's input, CE sums to the logit, nothing is disturbed."""

from __future__ import annotations

import gc
import re

import pytest
import timm
import torch
from torch import nn

import fragility
from fragility import HeadError

def _crossvit():
    from timm.models.crossvit import CrossVit

    # two branches of different widths (24 and 48) whose heads are averaged
    return CrossVit(
        img_size=48, img_scale=(1.0, 1.0), patch_size=[12, 16], embed_dim=[24, 48], depth=[[1, 1, 0]],
        num_heads=[2, 2], mlp_ratio=[1.0, 1.0, 1.0], num_classes=5,
    )


def _resolve(pm, model, classifier=None):
    head = pm.hook.fragility_resolve_head(model=model, classifier=classifier)
    assert head is not None
    return head


def _check_invariants(model, head, x, expected_fe):
    with torch.no_grad():
        logits = model(x)
        fe = head.features()
        w, b = head.weight_bias()
    assert torch.equal(fe, expected_fe)
    pred = logits.argmax(1)
    ce = fe * w[pred]
    got = ce.sum(-1) + b[pred]
    want = logits[torch.arange(len(pred)), pred]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    # every class, not only the predicted one: the effective map reproduces all logits
    torch.testing.assert_close(fe @ w.T + b, logits, rtol=1e-4, atol=1e-5)


def test_crossvit_branches_of_different_widths(pm):
    torch.manual_seed(0)
    model = _crossvit().eval()
    head = _resolve(pm, model)
    head.attach()
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        expected = model.forward_head(model.forward_features(x), pre_logits=True)
    _check_invariants(model, head, x, expected)
    assert head.weight_bias()[0].shape == (5, 24 + 48)


class CifarResNet(nn.Module):
    """The authors' style of model: no timm contract, classifier called ``linear``."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.linear = nn.Linear(8, 3)

    def forward(self, x):
        return self.linear(self.body(x))


def test_explicit_classifier_for_non_timm_model(pm):
    model = CifarResNet().eval()
    assert pm.hook.fragility_resolve_head(model=model, classifier=None) is None
    head = _resolve(pm, model, classifier=model.linear)
    head.attach()
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        expected = model.body(x)
    _check_invariants(model, head, x, expected)


def test_non_timm_model_without_classifier_is_refused_with_fix(store_path):
    with pytest.raises(HeadError, match=r"CifarResNet has no get_classifier\(\).*classifier=model.linear"):
        fragility.Recorder(CifarResNet(), store_path)


def test_the_suggested_classifier_is_valid_python(store_path):
    """A Sequential's head is ``model[3]`` (not ``model.3``); the suggestion must run as written."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(HeadError) as info:
        fragility.Recorder(model, store_path)
    suggestion = re.search(r"classifier=(model\S*)\)", str(info.value)).group(1)
    assert suggestion == "model[3]" and eval(suggestion, {"model": model}) is model[3]
    assert "the final nn.Linear or 1x1 nn.Conv2d" in str(info.value)


def test_num_classes_zero_is_refused(store_path):
    model = timm.create_model("test_resnet", pretrained=False, num_classes=0)
    with pytest.raises(HeadError, match=r"model test_resnet has no classifier \(fc is Identity.*num_classes>0"):
        fragility.Recorder(model, store_path)
    assert not store_path.exists()


def test_mlp_head_taps_its_final_linear(pm):
    # FE is the input of the last affine operation that runs: the MLP's hidden activation
    mlp = nn.Sequential(nn.Linear(8, 6), nn.GELU(), nn.Linear(6, 3))
    model = nn.Sequential(nn.Flatten(), mlp).eval()
    head = _resolve(pm, model, classifier=mlp)
    assert head.leaves == [mlp[2]]
    head.attach(model)
    x = torch.randn(4, 8)
    with torch.no_grad():
        expected = mlp[1](mlp[0](x))
    _check_invariants(model, head, x, expected)


def test_heads_without_an_affine_layer_are_refused_naming_module(pm):
    model = nn.Sequential(nn.Flatten(), nn.Sequential(nn.LayerNorm(8), nn.Softmax(dim=1)))
    with pytest.raises(HeadError, match=r"model Sequential: classifier 1: Sequential holds no nn.Linear .*classifier="):
        _resolve(pm, model, classifier=model[1])
    conv = nn.Conv2d(8, 3, 3)
    with pytest.raises(HeadError, match=r"only dense 1x1"):
        _resolve(pm, nn.Sequential(conv), classifier=nn.Sequential(conv))


def test_batchnorm_head_is_exact_in_train_mode(tmp_path):
    # BatchNorm then Linear: FE is what the Linear consumed, so CE is exact with batch statistics too
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.BatchNorm1d(6), nn.Dropout(0.3), nn.Linear(6, 4)).train()
    seen = []
    model[4].register_forward_hook(lambda m, a, o: seen.append(a[0].detach().clone()))
    with fragility.Recorder(model, tmp_path / "r.fragility", classifier=model[2:], dtype="float32") as rec:
        with rec.capture("train"):
            out = model(torch.randn(10, 12))
            rec.record(torch.arange(10) % 4)
    st = fragility.Store(tmp_path / "r.fragility")
    rows = st.read(st.passes[0], ["fe", "ce_pred", "bias_pred", "pred", "logits"])
    assert torch.equal(torch.from_numpy(rows["fe"]), seen[0])
    w, b = model[4].weight.detach(), model[4].bias.detach()
    pred = torch.from_numpy(rows["pred"])
    assert torch.equal(torch.from_numpy(rows["ce_pred"]), seen[0] * w[pred])
    assert torch.equal(torch.from_numpy(rows["bias_pred"]), b[pred])
    want = out.detach()[torch.arange(10), pred]
    got = torch.from_numpy(rows["ce_pred"]).sum(1) + torch.from_numpy(rows["bias_pred"])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert st.passes[0].mode == "train"


def _train_steps(model, x, y, steps, recorder=None):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    outs, grads = [], []
    for _ in range(steps):
        out = model(x)
        loss = nn.functional.cross_entropy(out, y)
        opt.zero_grad()
        loss.backward()
        if recorder is not None:
            recorder.record(y)
        outs.append(out.detach().clone())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]).clone())
        opt.step()
    return outs, grads


def test_recording_changes_no_output_or_gradient_bitwise(tmp_path):
    x = torch.randn(8, 3, 32, 32)
    y = torch.randint(0, 4, (8,))
    results = []
    for record in (False, True):
        torch.manual_seed(0)
        model = timm.create_model("test_resnet", pretrained=False, num_classes=4, drop_rate=0.2)
        model.train()
        torch.manual_seed(1)  # same dropout masks in both runs
        if record:
            with fragility.Recorder(model, tmp_path / "r.h5") as rec, rec.capture("train"):
                results.append(_train_steps(model, x, y, 3, rec))
        else:
            results.append(_train_steps(model, x, y, 3))
    (o1, g1), (o2, g2) = results
    for a, b in zip(o1 + g1, o2 + g2):
        assert torch.equal(a, b)


def test_train_mode_fe_is_what_the_classifier_saw_after_dropout(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=4, drop_rate=0.5).train()
    with fragility.Recorder(model, tmp_path / "r.h5", dtype="float32") as rec, rec.capture("train"):
        x = torch.randn(6, 3, 32, 32)
        logits = model(x)
        fe = rec.head.features()
        w, b = rec.head.weight_bias(rec.head.last)
        torch.testing.assert_close(fe @ w.T + b, logits.detach(), rtol=1e-5, atol=1e-6)
        rec.record(torch.zeros(6, dtype=torch.long))


def test_no_graph_kept_alive_and_no_memory_growth(tmp_path):
    import psutil

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=4)
    x = torch.randn(16, 3, 32, 32)
    y = torch.randint(0, 4, (16,))
    proc = psutil.Process()
    with fragility.Recorder(model, tmp_path / "r.h5", flush_interval=0.5) as rec, rec.capture("train"):
        _train_steps(model, x, y, 20, rec)
        gc.collect()
        rss0 = proc.memory_info().rss
        n0 = sum(1 for o in gc.get_objects() if torch.is_tensor(o))
        for _ in range(200):
            out = model(x)
            nn.functional.cross_entropy(out, y).backward()
            rec.record(y)
            # what the taps hold is detached: no autograd graph is reachable from them
            f = rec.head.last
            held = [] if f is None else [t for t in f.inputs + f.outputs + [f.logits] if t is not None]
            assert all(t.grad_fn is None and not t.requires_grad for t in held)
            model.zero_grad()
        rec.flush()
        gc.collect()
        n1 = sum(1 for o in gc.get_objects() if torch.is_tensor(o))
        growth = proc.memory_info().rss - rss0
    assert n1 - n0 <= 5, f"live tensors grew from {n0} to {n1}"
    assert growth < 64 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB over 200 steps"


def test_hooks_removed_on_close(tmp_path, tiny_model):
    def count():
        return len(tiny_model.fc._forward_hooks), len(tiny_model._forward_pre_hooks), len(tiny_model._forward_hooks)

    before = count()
    rec = fragility.Recorder(tiny_model, tmp_path / "r.h5")
    assert count() == tuple(n + 1 for n in before)
    rec.close()
    assert count() == before


def test_record_without_forward_fails_loudly(tmp_path, tiny_model):
    with fragility.Recorder(tiny_model, tmp_path / "r.h5") as rec, rec.capture("train"):
        with pytest.raises(HeadError, match=r"no forward pass of the model reached the classifier since the last record\(\).*torch.compile"):
            rec.record(torch.zeros(2, dtype=torch.long))


@pytest.mark.slow
def test_taps_registered_before_torch_compile_keep_firing(tmp_path):
    model = timm.create_model("test_resnet", pretrained=False, num_classes=4).eval()
    path = tmp_path / "c.h5"
    rec = fragility.Recorder(model, path, dtype="float32")
    compiled = torch.compile(model)
    x = torch.randn(4, 3, 32, 32)
    with rec.capture("test", mode="eval"), torch.no_grad():
        out = compiled(x)
        rec.record(torch.zeros(4, dtype=torch.long))
    rec.close()
    s = fragility.Store(path)
    rows = s.read(s.passes[0], ["fe", "logits"])
    with torch.no_grad():
        ref = model.forward_head(model.forward_features(x), pre_logits=True)
    torch.testing.assert_close(torch.from_numpy(rows["fe"]), ref)
    torch.testing.assert_close(torch.from_numpy(rows["logits"]), out)
