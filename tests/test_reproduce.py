"""``fragility reproduce``: the CIFAR ResNets as timm models (and their checkpoints' layout), the normalised
head's tap, the data readers and imbalance profiles, each loss against a hand-worked value, the schedule,
and a two-configuration grid killed and resumed end to end."""

from __future__ import annotations

import json
import math
import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

import fragility
from fragility.paper import models
from fragility.paper.datasets import exponential_counts, imbalance, imbalance_counts, load, step_counts
from fragility.errors import DataError
from fragility.paper.losses import FocalLoss, LDAMLoss, class_balanced_weights, lr_at, make_loss
from fragility.paper.reproduce import augment, recorded_epochs
from fragility.store import Store

from .test_cli import _check_report
from .conftest import json_results


# ------------------------------------------------------------------------------------------------ models


@pytest.mark.parametrize("depth", sorted(models.DEPTHS))
def test_cifar_resnets_are_timm_models_with_the_published_layout(depth):
    m = timm.create_model(f"cifar_resnet{depth}", pretrained=False, num_classes=10)
    convs = [mod for mod in m.modules() if isinstance(mod, torch.nn.Conv2d)]
    assert len(convs) + 1 == depth  # 6n + 1 convs and the final linear: ResNet-(6n+2)
    assert m.get_classifier() is m.linear and m.linear.in_features == 64 and m.num_features == 64
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    keys = set(m.state_dict())
    assert {"conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer3.0.bn2.weight", "linear.weight", "linear.bias"} <= keys
    assert not any(k.startswith(("layer4", "fc.", "head")) for k in keys)


def test_published_checkpoint_layout_loads_strictly(tmp_path):
    """A state dict in the authors' layout (LDAM-DRW: DataParallel's module. prefix, under "state_dict",
    NormedLinear weight stored (in, out)) loads with strict=True and gives the same outputs."""
    src = timm.create_model("cifar_resnet32", num_classes=10, norm_head=True)
    state = {f"module.{k}": v.clone() for k, v in src.state_dict().items()}
    assert state["module.linear.weight"].shape == (64, 10)
    torch.save({"epoch": 200, "state_dict": state, "best_acc1": 0.7}, tmp_path / "ckpt.pth.tar")
    dst = timm.create_model("cifar_resnet32", num_classes=10, norm_head=True)
    models.load_checkpoint(dst, tmp_path / "ckpt.pth.tar")
    x = torch.randn(3, 3, 32, 32)
    src.eval(), dst.eval()
    assert torch.equal(src(x), dst(x))
    plain = timm.create_model("cifar_resnet20", num_classes=10)
    torch.save(plain.state_dict(), tmp_path / "plain.pt")
    with pytest.raises(DataError, match="does not fit cifar_resnet32"):
        models.load_checkpoint(timm.create_model("cifar_resnet32", num_classes=10), tmp_path / "plain.pt")
    with pytest.raises(DataError, match="has no downloadable weights"):
        timm.create_model("cifar_resnet20", pretrained=True)


@pytest.mark.parametrize("train", [False, True])
def test_normed_head_is_tapped_exactly(tmp_path, train):
    """FE = x/‖x‖ of the head's input, W = s·(W/‖W‖_col)ᵀ, b = 0: the stored logits and CE equal the model's."""
    torch.manual_seed(0)
    m = timm.create_model("cifar_resnet20", num_classes=4, norm_head=True, scale=30.0)
    m.train(train)
    seen = []
    m.linear.register_forward_hook(lambda mod, args, out: seen.append((args[0].detach().clone(), mod.weight.detach().clone(), out.detach().clone())))
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    path = tmp_path / "n.fragility"
    with fragility.Recorder(m, path) as rec, rec.capture("train", epoch=0):
        for _ in range(3):
            x, y = torch.randn(6, 3, 32, 32), torch.randint(0, 4, (6,))
            out = m(x)
            F.cross_entropy(out, y).backward()
            opt.step()  # weights move before record(): the stored map is the forward's
            opt.zero_grad()
            rec.record(y)
    with Store(path) as s:
        assert s.metadata["head"] == "cifar_resnet20.linear(NormedLinear)"
        (p,) = s.passes
        r = s.read(p, ["fe", "ce_pred", "logits", "pred", "bias_pred"])
    x = torch.cat([a for a, _, _ in seen])
    fe = x / x.norm(dim=1, keepdim=True)
    np.testing.assert_allclose(r["fe"].astype(np.float32), fe.numpy(), rtol=2e-3, atol=2e-3)  # float16 storage
    logits = torch.cat([o for _, _, o in seen])
    np.testing.assert_allclose(r["logits"].astype(np.float32), logits.numpy(), rtol=2e-3, atol=2e-2)
    for i, (xi, w, _) in enumerate(seen):
        weff = 30.0 * (w / w.norm(dim=0, keepdim=True)).t()
        rows = slice(6 * i, 6 * i + 6)
        ce = (fe[rows] * weff[r["pred"][rows]]).numpy()
        np.testing.assert_allclose(r["ce_pred"][rows].astype(np.float32), ce, rtol=2e-3, atol=2e-2)
    assert not r["bias_pred"].any()


# ------------------------------------------------------------------------------------------------ data


def test_imbalance_profiles_by_hand():
    assert imbalance_counts([5000] * 10, 100) == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]  # CIFAR-10-LT
    assert imbalance_counts([500] * 100, 100)[-1] == 5 and imbalance_counts([500] * 100, 100)[0] == 500  # CIFAR-100-LT
    assert step_counts(5000, 10, 100) == [5000] * 5 + [50] * 5
    assert imbalance_counts([10, 12, 11], 1) == [10, 10, 10]
    assert exponential_counts(100, 3, 100) == [100, 10, 1]
    with pytest.raises(DataError, match="profile 'log' is unknown"):
        imbalance_counts([5, 5], 2, "log")
    y = torch.arange(40) % 4
    x = torch.arange(40).float()[:, None]
    xs, ys, ids = imbalance(x, y, 10, seed=3, profile="step", return_index=True)
    assert torch.bincount(ys).tolist() == [10, 10, 1, 1]
    assert torch.equal(xs[:, 0].long(), ids) and torch.equal(y[ids], ys)  # sample ids index the full set
    again = imbalance(x, y, 10, seed=3, profile="step", return_index=True)[2]
    assert torch.equal(ids, again)  # fixed seed


def test_cifar100_reader(tmp_path):
    base = tmp_path / "cifar-100-python"
    base.mkdir()
    rng = np.random.default_rng(0)
    parts = {}
    for name, n in (("train", 8), ("test", 4)):
        parts[name] = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"fine_labels": list(rng.integers(0, 100, n)),
                       b"coarse_labels": [0] * n}
        with open(base / name, "wb") as fh:
            pickle.dump(parts[name], fh)
    with open(base / "meta", "wb") as fh:
        pickle.dump({b"fine_label_names": [f"f{i}".encode() for i in range(100)]}, fh)
    d = load("cifar100", str(tmp_path))
    assert d.x_train.shape == (8, 3, 32, 32) and len(d.classes) == 100 and d.classes[7] == "f7"
    np.testing.assert_array_equal(d.y_test.numpy(), parts["test"][b"fine_labels"])
    # the peers' normalisation (LDAM-DRW cifar_train.py), channel 2: mean 0.4465, std 0.2010
    assert d.x_test[1, 2, 3, 4].item() == pytest.approx((parts["test"][b"data"][1, 2048 + 3 * 32 + 4] / 255 - 0.4465) / 0.2010, abs=1e-5)
    with open(base / "train", "wb") as fh:
        pickle.dump({**parts["train"], b"data": np.zeros((8, 100), dtype=np.uint8)}, fh)
    with pytest.raises(DataError, match=r"train does not hold 32x32 RGB images with one label each"):
        load("cifar100", str(tmp_path))
    (base / "meta").unlink()
    with pytest.raises(DataError, match="meta is missing"):
        load("cifar100", str(tmp_path))


def test_celeba_reader(tmp_path):
    from PIL import Image

    base = tmp_path / "celeba"
    (base / "img_align_celeba").mkdir(parents=True)
    attrs = ["5_o_Clock_Shadow", "Bald", "Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair", "Young"]
    rows = {  # name: (partition, attribute values in the order above)
        "000001.jpg": (0, [1, -1, 1, -1, -1, -1, 1]),   # Black_Hair
        "000002.jpg": (0, [-1, -1, -1, 1, -1, -1, 1]),  # Blond_Hair
        "000003.jpg": (0, [-1, -1, 1, 1, -1, -1, 1]),   # two hair colours: left out
        "000004.jpg": (1, [-1, 1, -1, -1, -1, -1, 1]),  # validation: left out
        "000005.jpg": (2, [-1, 1, -1, -1, -1, -1, -1]),  # Bald, test
    }
    rng = np.random.default_rng(0)
    pixels = {}
    for name in rows:
        pixels[name] = rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)
        Image.fromarray(pixels[name]).save(base / "img_align_celeba" / name, format="PNG")  # lossless stand-in
    with open(base / "list_attr_celeba.txt", "w") as fh:
        fh.write(f"{len(rows)}\n" + " ".join(attrs) + "\n")
        for name, (_, a) in rows.items():
            fh.write(name + " " + " ".join(f"{v:2d}" for v in a) + "\n")
    with open(base / "list_eval_partition.txt", "w") as fh:
        fh.writelines(f"{name} {part}\n" for name, (part, _) in rows.items())
    d = load("celeba", str(tmp_path))
    assert d.classes == ["Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair", "Bald"]
    assert d.y_train.tolist() == [0, 1] and d.y_test.tolist() == [4]
    crop = Image.fromarray(pixels["000005.jpg"]).crop((0, 20, 178, 198)).resize((32, 32), Image.BILINEAR)
    expect = np.asarray(crop, dtype=np.float32).transpose(2, 0, 1) / 255 * 2 - 1
    np.testing.assert_allclose(d.x_test[0].numpy(), expect, atol=1e-6)
    (base / "list_eval_partition.txt").unlink()
    with pytest.raises(DataError, match="list_eval_partition.txt is missing"):
        load("celeba", str(tmp_path))


def test_augment_crops_and_flips_by_hand():
    x = torch.arange(2 * 1 * 32 * 32, dtype=torch.float32).reshape(2, 1, 32, 32)
    g = torch.Generator().manual_seed(0)
    out = augment(x, g, flip=False, black=-7.0)
    g = torch.Generator().manual_seed(0)
    dy, dx = torch.randint(0, 9, (2,), generator=g), torch.randint(0, 9, (2,), generator=g)
    pad = F.pad(x, (4, 4, 4, 4), value=-7.0)
    for i in range(2):
        assert torch.equal(out[i], pad[i, :, dy[i] : dy[i] + 32, dx[i] : dx[i] + 32])


# ------------------------------------------------------------------------------------------------ losses


def test_losses_against_hand_worked_values():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    target = torch.tensor([0])
    lse = math.log(math.exp(2) + 1 + math.exp(-1))
    ce = lse - 2.0
    assert make_loss("ce", [10, 5, 1], 0, 5)(logits, target).item() == pytest.approx(ce, rel=1e-6)
    p = math.exp(-ce)
    assert FocalLoss(1.0)(logits, target).item() == pytest.approx((1 - p) * ce, rel=1e-6)
    assert FocalLoss(0.0)(logits, target).item() == pytest.approx(ce, rel=1e-6)
    # LDAM: margins n^-1/4 scaled so the largest is 0.5; class 0 (n=16) gets 0.5 * 16^-1/4 / 1^-1/4 = 0.25
    ldam = LDAMLoss([16, 4, 1], max_m=0.5, s=2.0)
    np.testing.assert_allclose(ldam.margins.numpy(), [0.25, 0.5 / math.sqrt(2), 0.5], rtol=1e-6)
    z = [2 * (2.0 - 0.25), 0.0, -2.0]
    want = math.log(sum(math.exp(v) for v in z)) - z[0]
    assert ldam(logits, target).item() == pytest.approx(want, rel=1e-5)  # float32
    # class-balanced weights (Cui et al.): (1-b)/(1-b^n), normalised to sum C
    b = 0.9999
    raw = [(1 - b) / (1 - b**n) for n in (10, 5, 1)]
    want_w = [3 * r / sum(raw) for r in raw]
    np.testing.assert_allclose(class_balanced_weights([10, 5, 1]).numpy(), want_w, rtol=1e-5)
    # weighted CE of one row is its plain CE (PyTorch divides by the summed weight)
    assert make_loss("cb", [10, 5, 1], 0, 5)(logits, target).item() == pytest.approx(ce, rel=1e-6)
    two = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    t2 = torch.tensor([0, 2])
    ce2 = [ce, math.log(2 + math.e)]
    w = want_w
    cb2 = (w[0] * ce2[0] + w[2] * ce2[1]) / (w[0] + w[2])
    assert make_loss("cb", [10, 5, 1], 0, 5)(two, t2).item() == pytest.approx(cb2, rel=1e-5)


def test_drw_switches_at_its_epoch():
    counts = [100, 10, 1]
    two = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    t2 = torch.tensor([0, 2])
    before, after = make_loss("ldam-drw", counts, 159, 160), make_loss("ldam-drw", counts, 160, 160)
    assert before.weight is None and torch.allclose(after.weight, class_balanced_weights(counts))
    assert before(two, t2).item() != pytest.approx(after(two, t2).item())
    assert make_loss("ce-drw", counts, 159, 160).weight is None and make_loss("ce-drw", counts, 160, 160).weight is not None
    with pytest.raises(DataError, match="loss 'focla' is unknown"):
        make_loss("focla", counts, 0, 1)


def test_schedule_is_ldam_drws_at_200_epochs():
    # LDAM-DRW: epoch+1 <= 5 -> lr*(epoch+1)/5; > 180 -> lr*1e-4; > 160 -> lr*1e-2
    assert [lr_at(e, 200, 0.1) for e in (0, 4, 5, 159, 160, 179, 180, 199)] == pytest.approx(
        [0.02, 0.1, 0.1, 0.1, 0.001, 0.001, 1e-5, 1e-5])
    from fragility.paper.losses import Recipe

    assert Recipe(200).drw_epoch == 160
    assert recorded_epochs(10, 4) == [3, 7, 9] and recorded_epochs(3, 20) == [2]


# ------------------------------------------------------------------------------------------------ the command


def _cli(*args, **kw):
    env = {**os.environ, "NO_COLOR": "1", "FRAGILITY_DISABLE_PLUGIN_AUTOLOAD": "1"}
    return subprocess.Popen([sys.executable, "-m", "fragility", "reproduce", *map(str, args)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def test_checkpoint_selection_against_brute_force(tmp_path):
    """--select picks the recorded epoch with the best test accuracy / macro-F1 (first on ties) or the last,
    scored from the stored test sweeps; macro-F1 by hand: mean over the labels present of 2tp / (2tp + fp + fn)."""
    from fragility.paper.reproduce import select_epoch
    from fragility.testing import make_random_store

    path = make_random_store(tmp_path / "s.fragility", counts=(30, 20, 10, 5), passes=[("test", e) for e in (0, 2, 4, 6, 8)] + [("train", 8)])
    acc, f1 = {}, {}
    with Store(path) as s:
        for p in s.select(split="test"):
            r = s.read(p, ["label", "pred"])
            y, pred = r["label"], r["pred"]
            acc[p.epoch] = float(np.mean(y == pred))
            present = sorted(set(y) | set(pred))
            f1[p.epoch] = float(np.mean([2 * np.sum((y == c) & (pred == c)) / (np.sum(y == c) + np.sum(pred == c)) for c in present]))
    for how, score in (("best-acc", acc), ("best-f1", f1)):
        best = max(score.values())
        epoch, scores = select_epoch(path, how)
        assert epoch == min(e for e, v in score.items() if v == best), how
        assert [r["epoch"] for r in scores] == [0, 2, 4, 6, 8]
        assert all(r["accuracy"] == pytest.approx(acc[r["epoch"]]) and r["macro_f1"] == pytest.approx(f1[r["epoch"]]) for r in scores)
    assert select_epoch(path, "last")[0] == 8
    empty = make_random_store(tmp_path / "t.fragility", passes=[("train", 0)])
    with pytest.raises(DataError, match="holds no complete test sweep"):
        select_epoch(empty, "best-f1")


@pytest.mark.slow
def test_grid_is_killed_resumed_and_reported(tmp_path):
    """Two configurations (ce and the balanced control) on digits: SIGKILL while the second trains, run again:
    the first is skipped, the second resumes from its checkpoint, and every recorded pass counts once."""
    out = tmp_path / "grid"
    args = ["--data", "digits", "--imbalance", "20", "--losses", "ce", "--epochs", "3", "--record-every", "1",
            "--model", "cifar_resnet20", "--batch-size", "256", "--out", out]
    proc = _cli(*args)
    ckpt = out / "checkpoints" / "balanced.pt"
    passes = out / "stores" / "balanced.fragility" / "passes"

    def into_epoch_1() -> bool:  # train@0, train_eval@0 and test@0 recorded, train@1 begun: two epochs before the end
        return ckpt.exists() and passes.is_dir() and len([n for n in os.listdir(passes) if n.endswith(".h5") and not n.startswith(".")]) >= 4

    deadline = time.monotonic() + 400
    while not into_epoch_1() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert into_epoch_1(), proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = proc.stderr.read()
    # the ETA covers the grid (ce's epochs, then the balanced control's rows); lines are never hard-wrapped
    ce_lines = [line for line in first.splitlines() if line.startswith("ce: epoch ")]
    assert ce_lines and all("ETA" in line and "(grid " in line for line in ce_lines), first[-2000:]
    assert any(line.startswith("fragility reproduce: digits") and "balanced control 139 per class), cifar_resnet20" in line
               for line in first.splitlines()), first[:1000]
    assert (out / "checkpoints" / "ce.done.json").exists() and not (out / "checkpoints" / "balanced.done.json").exists()
    killed_at = torch.load(ckpt, weights_only=True)["epoch"]
    proc = _cli(*args)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    assert "ce: complete in" in stderr and "skipped" in stderr
    assert f"balanced: resuming from the checkpoint of epoch {killed_at}" in stderr
    assert "(grid " not in stderr  # the last configuration: its own ETA is the grid's
    assert "device cpu" in stderr and "device cpu" in stdout
    n_test = len(load("digits").y_test)
    for cfg, n_train in (("ce", sum(exponential_counts(139, 10, 20))), ("balanced", 1390)):
        with Store(out / "stores" / f"{cfg}.fragility") as s:
            groups = {}
            for p in s.select():
                groups.setdefault((p.split, p.epoch), 0)
                groups[(p.split, p.epoch)] += p.rows
            assert groups == {**{("train", e): n_train for e in range(3)}, **{("train_eval", e): n_train for e in range(3)},
                              **{("test", e): n_test for e in range(3)}}, cfg
            assert all(p.complete for p in s.select())
            assert s.metadata["class_counts"] == (exponential_counts(139, 10, 20) if cfg == "ce" else [139] * 10)
    res = fragility.analyze(out / "stores" / "balanced.fragility", ["topk"], split="train", epoch=killed_at + 1, k=3)
    assert sum(c["n"] for c in res["topk"].data["groups"][f"train@{killed_at + 1}"]["classes"]) == 1390
    _check_report(out / "report", min_images=4)
    html = (out / "report" / "index.html").read_text()
    assert "per class and run at the kept checkpoint&#x27;s epoch" in html and "overlap w/ balanced" in html
    # the recipe's sources and the checkpoint selection are stated (the default: best test macro-F1, a test-set selection)
    assert "recipe: each setting" in html and "imbalance_cifar.py IMBALANCECIFAR10/100" in html
    assert "dd1github/EOS cifar_train.py FocalLoss(gamma=2)" in html and "checkpoint per run (best-f1" in html
    assert "selected on the test set" in html
    summary = json.loads((out / "checkpoints" / "ce.done.json").read_text())
    assert summary["train_counts"] == exponential_counts(139, 10, 20)
    # an incomplete pass the kill left behind is superseded, and analyze says so
    with Store(out / "stores" / "balanced.fragility") as s:
        left = s.superseded
    if left:
        assert any("recorded again" in n for n in res["topk"].notes)
    # a damaged summary of a finished configuration is refused in one line, naming the fix
    from fragility.paper.reproduce import _done_summary

    (tmp_path / "bad.json").write_text('{"test_accuracy": "[red]x"}')
    with pytest.raises(DataError, match=r"bad.json is not a summary this command wrote .*; delete it"):
        _done_summary(str(tmp_path / "bad.json"))
    assert _done_summary(str(out / "checkpoints" / "ce.done.json"))["test_accuracy"] == summary["test_accuracy"]
    # the same folder with other options is refused in one line, before any training
    other = _cli(*[a if a != "3" else "4" for a in args])
    _, err = other.communicate(timeout=120)
    assert other.returncode != 0 and "holds a run with other options (epochs 3 vs 4;" in err.strip().splitlines()[-1]


_KILLED_WRITER = """
import os, sys, torch
from torch import nn
import fragility
torch.manual_seed(0)
model = nn.Sequential(nn.Flatten(), nn.Linear(8, 3)).eval()
rec = fragility.Recorder(model, sys.argv[1], classifier=model[1], dtype="float32")
g = torch.Generator().manual_seed(0)
with torch.no_grad():
    with rec.capture("train", epoch=0, mode="eval"):
        for _ in range(2):
            model(torch.randn(10, 8, generator=g)); rec.record(torch.arange(10) % 3)
    rec.start_pass("train", 1, mode="eval")
    for _ in range(2):
        model(torch.randn(10, 8, generator=g)); rec.record(torch.arange(10) % 3)
    rec.flush()
    os._exit(0)  # killed inside train@1: its 20 rows are committed, the pass stays incomplete
"""


def test_a_killed_pass_recorded_again_is_superseded(tmp_path):
    from torch import nn

    path = tmp_path / "r.fragility"
    subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(path)], check=True, timeout=120)
    with Store(path) as s:
        assert [(p.label, p.rows) for p in s.passes] == [("train@0", 20), ("train@1 (incomplete)", 20)]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 3)).eval()
    with fragility.Recorder(model, path, classifier=model[1], dtype="float32", resume=True) as rec, torch.no_grad():
        with rec.capture("train", epoch=1, mode="eval"):
            for _ in range(3):
                model(torch.randn(10, 8))
                rec.record(torch.arange(10) % 3)
    with Store(path) as s:
        old, new = s.passes[1].name, s.passes[2].name
        assert s.superseded == {old: new}
        assert [(p.label, p.rows) for p in s.select()] == [("train@0", 20), ("train@1", 30)]
        assert [p.name for p in s.select(split="train", epoch="last")] == [new]
    res = fragility.analyze(path, ["topk"], epoch=1, k=2)
    assert sum(c["n"] for c in res["topk"].data["groups"]["train@1"]["classes"]) == 30  # not 50
    assert any(f"pass {old} (incomplete) was recorded again as {new}" in n for n in res["topk"].notes)


def test_inspect_names_the_pass_that_supersedes_an_interrupted_one(tmp_path):
    from torch import nn

    from fragility.cli import main

    path = tmp_path / "r.fragility"
    subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(path)], check=True, timeout=120)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 3)).eval()
    with fragility.Recorder(model, path, classifier=model[1], dtype="float32", resume=True) as rec, torch.no_grad():
        with rec.capture("train", epoch=1, mode="eval"):
            model(torch.randn(10, 8))
            rec.record(torch.arange(10) % 3)
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["inspect", str(path)]) == 0
    assert "no (superseded by 0002)" in out.getvalue()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["inspect", str(path), "--json"]) == 0
    info = json_results(out.getvalue(), "inspect")["inspect"]
    assert [p["superseded_by"] for p in info["passes"]] == [None, "0002", None] and info["writer"] in ("none", "gone")
