"""The timm matrix: ≥ 40 architectures across families, each in eval and in train mode.

For every architecture the test names, by hand, the layer(s) whose input is FE (the last affine operation
that really runs) — an independent reference, not fragility's own resolution — and checks:

* recording changes neither the outputs nor the gradients (bitwise);
* the stored logits are the model's own;
* FE is exactly what those layers consumed in that forward;
* the CE identity for the predicted and the target class, with ``W``/``b`` built from those layers.

Architectures that cannot be exact (VOLO adds an auxiliary head's token max to the logits) must be refused
by default with a ``HeadError``.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import timm
import torch
from torch import nn

import fragility

C = 5

# name, create_model kwargs, input size, the tapped layers (qualified names)
ARCHS = [
    ("resnet18", {}, 32, ["fc"]),
    ("test_resnet", {}, 32, ["fc"]),
    ("mobilenetv3_small_050", {}, 32, ["classifier"]),
    ("mobilenetv2_050", {}, 32, ["classifier"]),
    ("test_efficientnet", {}, 32, ["classifier"]),
    ("test_efficientnet_gn", {}, 32, ["classifier"]),
    ("regnetx_002", {}, 32, ["head.fc"]),
    ("densenet121", {"growth_rate": 8, "block_config": (1, 1, 1, 1)}, 32, ["classifier"]),
    ("test_convnext", {}, 32, ["head.fc"]),
    ("convnext_atto", {}, 32, ["head.fc"]),
    ("test_byobnet", {}, 32, ["head.fc"]),
    ("dla34", {}, 32, ["fc"]),  # 1x1 conv classifier
    ("dpn48b", {}, 32, ["classifier"]),  # 1x1 conv classifier
    ("ghostnet_050", {}, 32, ["classifier"]),
    ("ghostnetv2_100", {}, 64, ["classifier"]),
    ("mnasnet_050", {}, 32, ["classifier"]),
    ("lcnet_050", {}, 32, ["classifier"]),
    ("rexnet_100", {}, 32, ["head.fc"]),
    ("tinynet_e", {}, 32, ["classifier"]),
    ("repvgg_a0", {}, 32, ["head.fc"]),
    ("ese_vovnet19b_dw", {}, 32, ["head.fc"]),
    ("darknet17", {}, 32, ["head.fc"]),
    ("mobileone_s0", {}, 32, ["head.fc"]),
    ("test_nfnet", {}, 32, ["head.fc"]),
    ("hgnetv2_b0", {}, 32, ["head.fc"]),
    ("test_mambaout", {}, 32, ["head.fc"]),
    ("poolformer_s12", {}, 32, ["head.fc"]),
    ("convformer_s18", {}, 32, ["head.fc.fc2"]),  # MLP head: the final Linear
    ("caformer_s18", {}, 32, ["head.fc.fc2"]),  # MLP head
    ("inception_next_tiny", {"depths": (1, 1, 1, 1)}, 32, ["head.fc2"]),  # MLP head
    ("efficientvit_b0", {}, 64, ["head.classifier.4"]),  # Linear-norm-act-dropout-Linear head
    ("efficientvit_m0", {"img_size": 64}, 64, ["head.linear"]),  # BatchNorm + Linear
    ("repvit_m0_9", {}, 64, ["head.head.l", "head.head_dist.l"]),  # two BatchNorm + Linear heads, averaged
    ("iformer_t", {}, 64, ["head.head.l"]),  # RepVitClassifier without distillation
    ("sequencer2d_s", {}, 32, ["head.fc"]),  # get_classifier() returns the whole head
    ("levit_128s", {"img_size": 64}, 64, ["head.linear", "head_dist.linear"]),  # BatchNorm heads, distilled
    ("deit_tiny_distilled_patch16_224", {"img_size": 32, "depth": 1}, 32, ["head", "head_dist"]),  # two tokens
    ("deit_tiny_patch16_224", {"img_size": 32, "depth": 1}, 32, ["head"]),
    ("pit_ti_distilled_224", {"img_size": 64}, 64, ["head", "head_dist"]),
    ("efficientformer_l1", {}, 224, ["head", "head_dist"]),  # distilled, one shared input
    ("test_vit", {"img_size": 32}, 32, ["head"]),
    ("test_vit2", {}, 32, ["head"]),
    ("eva02_tiny_patch14_224", {"img_size": 28, "depth": 1}, 28, ["head"]),
    ("cait_xxs24_224", {"img_size": 32, "depth": 1}, 32, ["head"]),
    ("xcit_nano_12_p16_224", {"img_size": 32, "depth": 1}, 32, ["head"]),
    ("swin_tiny_patch4_window7_224", {"img_size": 56, "depths": (1, 1, 1, 1), "embed_dim": 24, "num_heads": (1, 1, 1, 1)}, 56, ["head.fc"]),
    ("pvt_v2_b0", {}, 32, ["head"]),
    ("coat_lite_tiny", {"img_size": 32}, 32, ["head"]),
    ("edgenext_xx_small", {}, 32, ["head.fc"]),
    ("mobilevit_xxs", {}, 64, ["head.fc"]),
    ("fastvit_t8", {}, 64, ["head.fc"]),
    ("mixer_s32_224", {"img_size": 64}, 64, ["head"]),
    ("starnet_s050", {}, 32, ["head"]),
]

REFUSED = [
    ("volo_d1_224", {"img_size": 32}, 32),  # logits add 0.5 * max over tokens of aux_head(tokens)
]


def _family(name: str) -> str:
    return name.split("_")[0].rstrip("0123456789")


def test_matrix_spans_forty_architectures_across_families():
    assert len(ARCHS) >= 40
    assert len({_family(a[0]) for a in ARCHS}) >= 30


def _run(model, x, y, recorder=None, taps=()):
    """One forward + backward; with a recorder, record after backward *and* after an optimizer step."""
    seen = {}
    handles = []
    for name in taps:
        module = model.get_submodule(name)
        handles.append(module.register_forward_hook(lambda m, a, o, name=name: seen.__setitem__(name, (a[0].detach().clone(), m, a[0].data_ptr()))))
    torch.manual_seed(1)  # same dropout / drop-path masks in both runs
    out = model(x)
    nn.functional.cross_entropy(out, y).backward()
    weights = {name: (m.weight.detach().flatten(1).clone(), m.bias.detach().clone()) for name, (_, m, _) in seen.items()}
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    if recorder is not None:
        torch.optim.SGD(model.parameters(), lr=0.5).step()  # the weights move before record(): rows must not
        recorder.record(y)
    for h in handles:
        h.remove()
    return out.detach().clone(), grads, seen, weights


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("name,kwargs,size,taps", ARCHS, ids=[a[0] for a in ARCHS])
def test_exact_rows_and_no_disturbance(tmp_path, name, kwargs, size, taps, mode):
    torch.manual_seed(0)
    reference = timm.create_model(name, pretrained=False, num_classes=C, **kwargs).train(mode == "train")
    model = copy.deepcopy(reference)
    x = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 3, 1, 4])

    out0, grads0 = _run(reference, x, y)[:2]
    with fragility.Recorder(model, tmp_path / "r.fragility", dtype="float32") as rec, rec.capture("s"):
        out1, grads1, seen, weights = _run(model, x, y, rec, taps)

    # recording disturbs nothing, bitwise
    assert torch.equal(out0, out1)
    assert len(grads0) == len(grads1) and all(torch.equal(a, b) for a, b in zip(grads0, grads1))

    store = fragility.Store(tmp_path / "r.fragility")
    (p,) = store.passes
    assert p.mode == mode and p.rows == 4
    rows = store.read(p, ["fe", "ce_pred", "ce_target", "logits", "bias_pred", "pred", "label"])
    np.testing.assert_array_equal(rows["logits"], out1.numpy())
    np.testing.assert_array_equal(rows["pred"], out1.argmax(1).numpy())

    # FE: what the hand-named layers consumed in that forward (one tensor if shared, else side by side)
    inputs = [seen[t][0].flatten(1) for t in taps]
    shared = len({seen[t][2] for t in taps}) == 1  # the very same tensor reached every head
    fe = inputs[0] if shared else torch.cat(inputs, dim=1)
    np.testing.assert_array_equal(rows["fe"], fe.numpy())

    # W, b of that forward (before the optimizer step), averaged over the heads
    ws = [weights[t][0].double() for t in taps]
    b = sum(weights[t][1].double() for t in taps) / len(taps)
    w = sum(ws) / len(ws) if shared else torch.cat([wi / len(ws) for wi in ws], dim=1)
    fe64, logits = fe.double(), out1.double()
    for col, cls in (("ce_pred", rows["pred"]), ("ce_target", rows["label"])):
        cls_t = torch.from_numpy(cls)
        want = (fe64 * w[cls_t]).numpy()
        np.testing.assert_allclose(rows[col], want, rtol=1e-5, atol=1e-6 * float(np.abs(want).max()))
        got = rows[col].astype(np.float64).sum(1) + b[cls_t].numpy()
        target = logits[torch.arange(4), cls_t].numpy()
        scale = (fe64.abs() * w[cls_t].abs()).sum(1).numpy() + b[cls_t].abs().numpy()
        assert np.all(np.abs(got - target) <= 1e-4 * scale + 1e-6), (col, got, target)
    np.testing.assert_array_equal(rows["bias_pred"], b[torch.from_numpy(rows["pred"])].float().numpy())


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("name,kwargs,size", REFUSED, ids=[a[0] for a in REFUSED])
def test_inexact_heads_are_refused(tmp_path, name, kwargs, size, mode):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=C, **kwargs).train(mode == "train")
    x = torch.randn(2, 3, size, size)
    rec = fragility.Recorder(model, tmp_path / "r.fragility")
    with pytest.raises(fragility.HeadError, match=rf"model {name}: head .* does not reproduce the model's logits .*check_head=False"):
        with rec.capture("s"):
            model(x)
            rec.record(torch.tensor([0, 1]))
    rec.close()
    assert fragility.Store(tmp_path / "r.fragility").passes[0].rows == 0
