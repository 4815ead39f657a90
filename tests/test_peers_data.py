"""The authors' exact data: the images LDAM-DRW's ``IMBALANCECIFAR10/100`` keeps, and the peers' input
transforms, checked against independent re-implementations of the peers' code (kaidic/LDAM-DRW
``imbalance_cifar.py`` and ``cifar_train.py``) on folders in the real on-disk format."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import timm
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image

from fragility.paper import models
from fragility.paper.datasets import PEERS_CIFAR, imbalance, imbalanced_indices, load
from fragility.errors import DataError
from fragility.paper.reproduce import augment


def _write_cifar(root, name: str, per_class: int = 5000, test: int = 20, seed: int = 0) -> dict[str, np.ndarray]:
    """A CIFAR folder in the real format (random pixels, balanced shuffled labels); returns what it wrote."""
    rng = np.random.default_rng(seed)
    C = 10 if name == "cifar10" else 100
    labels = rng.permutation(np.repeat(np.arange(C), per_class))
    data = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
    y_test = rng.integers(0, C, test)
    x_test = rng.integers(0, 256, (test, 3072), dtype=np.uint8)
    if name == "cifar10":
        base = root / "cifar-10-batches-py"
        base.mkdir(parents=True)
        for i, part in enumerate(np.array_split(np.arange(len(labels)), 5)):
            with open(base / f"data_batch_{i + 1}", "wb") as fh:
                pickle.dump({b"data": data[part], b"labels": labels[part].tolist()}, fh)
        with open(base / "test_batch", "wb") as fh:
            pickle.dump({b"data": x_test, b"labels": y_test.tolist()}, fh)
    else:
        base = root / "cifar-100-python"
        base.mkdir(parents=True)
        for part, (x, y) in (("train", (data, labels)), ("test", (x_test, y_test))):
            with open(base / part, "wb") as fh:
                pickle.dump({b"data": x, b"fine_labels": y.tolist(), b"coarse_labels": [0] * len(y)}, fh)
        with open(base / "meta", "wb") as fh:
            pickle.dump({b"fine_label_names": [f"f{i}".encode() for i in range(100)]}, fh)
    return {"data": data, "labels": labels, "x_test": x_test, "y_test": y_test}


def _peers_selection(targets: list[int], cls_num: int, imb_type: str, imb_factor: float, rand_number: int) -> np.ndarray:
    """IMBALANCECIFAR10.__init__ / get_img_num_per_cls / gen_imbalanced_data, re-implemented from the
    peers' code, returning the kept rows' indices into the full training set in the dataset's order."""
    np.random.seed(rand_number)
    img_max = len(targets) / cls_num
    if imb_type == "exp":
        nums = [int(img_max * (imb_factor ** (i / (cls_num - 1.0)))) for i in range(cls_num)]
    else:
        nums = [int(img_max)] * (cls_num // 2) + [int(img_max * imb_factor)] * (cls_num // 2)
    targets_np = np.array(targets, dtype=np.int64)
    selected = []
    for the_class, the_img_num in zip(np.unique(targets_np), nums):
        idx = np.where(targets_np == the_class)[0]
        np.random.shuffle(idx)
        selected.extend(idx[:the_img_num])
    return np.array(selected)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_imbalanced_cifar_keeps_the_peers_images(tmp_path, name):
    """For seeds 0, 10, 100 and imbalance 0.01/0.02/0.1: the same sample indices, in the same order, as
    IMBALANCECIFAR10/100(rand_number=seed) — and the images behind them are those rows of the folder."""
    wrote = _write_cifar(tmp_path, name, per_class=5000 if name == "cifar10" else 500)
    ds = load(name, str(tmp_path))
    C = len(ds.classes)
    np.testing.assert_array_equal(ds.y_train.numpy(), wrote["labels"])
    for seed in (0, 10, 100):
        for imb_factor in (0.01, 0.02, 0.1):
            want = _peers_selection(wrote["labels"].tolist(), C, "exp", imb_factor, seed)
            x, y, ids = imbalance(ds.x_train, ds.y_train, 1 / imb_factor, seed=seed, return_index=True)
            np.testing.assert_array_equal(ids.numpy(), want)
            np.testing.assert_array_equal(y.numpy(), wrote["labels"][want])
            assert torch.equal(x[[0, -1]], ds.x_train[ids[[0, -1]]])
        if name == "cifar10":  # CIFAR-10-LT at 100:1: LDAM-DRW's published counts
            assert np.bincount(wrote["labels"][imbalanced_indices(ds.y_train, 100, seed)]).tolist() == [
                5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    want = _peers_selection(wrote["labels"].tolist(), C, "step", 0.1, 10)
    np.testing.assert_array_equal(imbalanced_indices(ds.y_train, 10, 10, profile="step"), want)
    state = np.random.get_state()[1].copy()
    imbalanced_indices(ds.y_train, 100, 3)
    assert np.array_equal(np.random.get_state()[1], state)  # numpy's global generator is left alone
    with pytest.raises(DataError, match=r"seed -1 must be an integer in 0\.\.2\*\*32-1"):
        imbalanced_indices(ds.y_train, 100, -1)


def test_cifar_input_equals_the_peers_transforms(tmp_path):
    """Test images: ToTensor + Normalize(PEERS_CIFAR) bit for bit; training images: RandomCrop(32,
    padding=4) + RandomHorizontalFlip + ToTensor + Normalize with the same crops and flips; a CIFAR
    ResNet-32 checkpoint gives the same logits on both."""
    wrote = _write_cifar(tmp_path, "cifar10", per_class=2, test=12)
    ds = load("cifar10", str(tmp_path))
    assert ds.stats == PEERS_CIFAR == ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
    peers_val = T.Compose([T.ToTensor(), T.Normalize((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))])
    hwc = wrote["x_test"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # torchvision's CIFAR10.data layout
    theirs = torch.stack([peers_val(Image.fromarray(img)) for img in hwc])
    assert torch.equal(ds.x_test, theirs)
    # a published-layout checkpoint (DataParallel prefix, under "state_dict") sees the same inputs
    src = timm.create_model("cifar_resnet32", num_classes=10)
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "ckpt.pth.tar")
    model = timm.create_model("cifar_resnet32", num_classes=10)
    models.load_checkpoint(model, tmp_path / "ckpt.pth.tar")
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(ds.x_test), model(theirs))
    # the training transform: the same crop offsets and flips, drawn as augment draws them
    x = ds.x_test
    out = augment(x, torch.Generator().manual_seed(5), True, ds.black)
    g = torch.Generator().manual_seed(5)
    dy, dx = torch.randint(0, 9, (len(x),), generator=g), torch.randint(0, 9, (len(x),), generator=g)
    flip = torch.rand(len(x), generator=g) < 0.5
    assert 0 < int(flip.sum()) < len(x)
    norm = T.Normalize((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
    for i, img in enumerate(hwc):
        pil = TF.crop(TF.pad(Image.fromarray(img), 4, fill=0), int(dy[i]), int(dx[i]), 32, 32)  # RandomCrop(32, padding=4)
        if flip[i]:
            pil = TF.hflip(pil)
        assert torch.equal(out[i], norm(T.ToTensor()(pil))), i


def test_published_checkpoints_are_analysed_on_their_own_images(tmp_path):
    """reproduce --checkpoints: each file is recorded on the images it was trained on (rand_number from its
    name's _N, else --seed) and the test set; the stored logits are the checkpoint's own on the peers'
    inputs; a LDAM checkpoint gets its normalised head; the report states files, rand_numbers and sources."""
    from fragility.store import Store

    from .test_cli import _check_report, run

    wrote = _write_cifar(tmp_path / "data", "cifar10", per_class=20, test=30)
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    torch.manual_seed(0)
    nets = {"ce_10": timm.create_model("cifar_resnet20", num_classes=10),
            "ldam_drw": timm.create_model("cifar_resnet20", num_classes=10, norm_head=True)}
    torch.save(nets["ce_10"].state_dict(), ckpts / "ce_10.pth")
    torch.save({"epoch": 200, "state_dict": {f"module.{k}": v for k, v in nets["ldam_drw"].state_dict().items()}},
               ckpts / "ldam_drw.pth.tar")
    (ckpts / "notes.txt").write_text("not a checkpoint")
    out = tmp_path / "out"
    p = run("reproduce", "--checkpoints", ckpts, "--data", "cifar10", "--root", tmp_path / "data",
            "--imbalance", "10", "--model", "cifar_resnet20", "--seed", "3", "--device", "cpu", "--out", out)
    stderr = p.stderr
    peers_val = T.Compose([T.ToTensor(), T.Normalize((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))])
    x_test = torch.stack([peers_val(Image.fromarray(img)) for img in wrote["x_test"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)])
    for name, rand_number in (("ce_10", 10), ("ldam_drw", 3)):
        with Store(out / "stores" / f"{name}.fragility") as s:
            (tr,), (te,) = s.select(split="train_eval"), s.select(split="test")
            ids = s.read(tr, ["index"])["index"]
            np.testing.assert_array_equal(ids, _peers_selection(wrote["labels"].tolist(), 10, "exp", 0.1, rand_number))
            r = s.read(te, ["logits", "label"])
        nets[name].eval()
        with torch.no_grad():
            want = nets[name](x_test).numpy()
        np.testing.assert_allclose(r["logits"].astype(np.float32), want, rtol=2e-3, atol=2e-3)  # float16 storage
        np.testing.assert_array_equal(r["label"], wrote["y_test"])
    _check_report(out / "report", min_images=2)
    html = (out / "report" / "index.html").read_text()
    assert "ce_10.pth" in html and "ldam_drw.pth.tar" in html and "NormedLinear (LDAM)" in html
    assert "imbalance_cifar.py IMBALANCECIFAR10/100" in html and "the paper authors&#x27; conventions" in html
    n_train = len(_peers_selection(wrote["labels"].tolist(), 10, "exp", 0.1, 10))
    assert f"ce_10: {n_train} training images (rand_number 10)" in stderr
    # a second run skips what is recorded; a checkpoint of another model is refused in one line, naming the fix
    p = run("reproduce", "--checkpoints", ckpts, "--data", "cifar10", "--root", tmp_path / "data", "--imbalance", "10",
            "--model", "cifar_resnet20", "--seed", "3", "--device", "cpu", "--out", out)
    assert "ce_10: recorded in" in p.stderr and "skipped" in p.stderr
    p = run("reproduce", "--checkpoints", ckpts, "--data", "cifar10", "--root", tmp_path / "data", "--imbalance", "10",
            "--model", "cifar_resnet32", "--device", "cpu", "--out", tmp_path / "other", check=False)
    assert p.returncode != 0 and "does not fit cifar_resnet32 with 10 classes" in p.stderr and "pass the --model and --data" in p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith("error: checkpoint") and "Traceback" not in p.stderr
    p = run("reproduce", "--checkpoints", tmp_path / "nowhere", "--out", tmp_path / "o3", check=False)
    assert p.returncode != 0 and "is not a folder" in p.stderr
