"""The magnitude reference (issue 18): on a *balanced* run, against an eval sweep of the training set the test
rows look like the training rows and nothing is flagged; against the training pass itself — train mode
(dropout, batch statistics) while the weights move — the same data show a drift that is not there. That
artifact is why ``train_eval`` is the default reference (docs/analyzers.md)."""

from __future__ import annotations

import shutil

import pytest
import timm
import torch

import fragility
from fragility.watch import Watcher


def _blobs(n, seed):
    g = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for c in range(4):
        x = torch.randn(n, 3, 32, 32, generator=g) * 0.5
        x[:, c % 3] += 1.0 + 0.5 * c
        xs.append(x)
        ys.append(torch.full((n,), c))
    return torch.cat(xs), torch.cat(ys)


@pytest.fixture(scope="module")
def balanced(tmp_path_factory):
    """4 balanced classes of 64 rows, a timm ResNet with dropout before its classifier, 3 epochs; each epoch a
    training pass, an eval sweep of the training set and a test sweep (another draw of the same classes)."""
    path = tmp_path_factory.mktemp("bal") / "b.fragility"
    x, y = _blobs(64, 0)
    xt, yt = _blobs(64, 1)
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=4, drop_rate=0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    with fragility.Recorder(model, path) as rec:
        for epoch in range(3):
            model.train()
            perm = torch.randperm(len(y), generator=g)
            with rec.capture("train", epoch=epoch):
                for s in range(0, len(y), 32):
                    i = perm[s:s + 32]
                    out = model(x[i])
                    rec.record(y[i], index=i)
                    loss = torch.nn.functional.cross_entropy(out, y[i])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            rec.evaluate([(x, y, torch.arange(len(y)))], split="train_eval", epoch=epoch)
            rec.evaluate([(xt, yt)], split="test", epoch=epoch)
    return path


def test_a_balanced_run_against_its_eval_sweep_shows_no_drift(balanced):
    res = fragility.analyze(balanced, ["magnitude"], k=5, split="test", epoch="last")["magnitude"]
    assert res.data["reference"] == "train_eval@2" and not any("train mode" in n for n in res.notes)
    for c in res.data["groups"]["test@2"]["classes"]:
        assert abs(c["ratio_correct"] - 1) < 0.05, c
        lo, hi = c["share_below_p5_ci"]
        assert lo <= 0.05 or c["share_below_p5"] < 0.2  # not above the 5 % expected at the 95 % level
    metrics = Watcher(balanced, k=5)._metrics_for(fragility.Store(balanced))
    assert metrics["train"] == "train_eval@2" and not metrics["provisional"]
    assert not any(c["fragile"] for c in metrics["classes"])


def test_the_train_mode_reference_reproduces_the_artifact(balanced, tmp_path):
    res = fragility.analyze(balanced, ["magnitude"], k=5, split="test", epoch="last", reference_split="train")["magnitude"]
    ratios = [c["ratio_correct"] for c in res.data["groups"]["test@2"]["classes"]]
    assert max(abs(r - 1) for r in ratios) > 0.2, ratios  # a drift on a balanced run whose test rows match training
    assert any("was recorded in train mode" in n and "train_eval" in n for n in res.notes)
    # a store without the sweep: watch falls back to the training pass and marks its flags provisional
    copy = tmp_path / "no-sweep.fragility"
    shutil.copytree(balanced, copy)
    with fragility.Store(copy) as s:
        sweeps = [p.name for p in s.passes if p.split == "train_eval"]
    for name in sweeps:
        (copy / "passes" / f"{name}.h5").unlink()
    metrics = Watcher(copy, k=5)._metrics_for(fragility.Store(copy))
    assert metrics["train"] == "train@2" and metrics["provisional"]
