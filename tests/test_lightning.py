"""The Lightning callback with a real ``Trainer`` on CPU: stored rows equal the classifier's own inputs,
weights and logits of each forward — with validation inside the epoch, the sanity check, gradient
accumulation, ``limit_train_batches``, eval sweeps and a resume from a checkpoint."""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest
import timm
import torch
from torch import nn

import lightning.pytorch as pl  # a test extra: installed by `make test`

import fragility
from fragility.integrations.lightning import FragilityCallback


class Classifier(pl.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.model = timm.create_model("test_resnet", pretrained=False, num_classes=3)
        self.seen = []  # (mode, fe, W, b, logits) of every forward of the classifier, in order
        self.model.fc.register_forward_hook(self._seen)

    def _seen(self, module, args, out):
        if not self.trainer.sanity_checking:
            self.seen.append((module.training, args[0].detach().clone(), module.weight.detach().clone(),
                              module.bias.detach().clone(), out.detach().clone()))

    def training_step(self, batch, batch_idx):
        x, y, _ = batch
        return nn.functional.cross_entropy(self.model(x), y)

    def validation_step(self, batch, batch_idx):
        x, y, _ = batch
        self.log("val_loss", nn.functional.cross_entropy(self.model(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


def _loader(n, seed, batch=4):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 32, 32, generator=g)
    y = torch.arange(n) % 3
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y, torch.arange(n)), batch_size=batch)


def _trainer(tmp_path, callback, epochs):
    return pl.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
        limit_train_batches=6, accumulate_grad_batches=2, val_check_interval=3, limit_val_batches=2, num_sanity_val_steps=1,
        default_root_dir=str(tmp_path), callbacks=[callback],
    )


def _check_rows(store, model_seen, wanted_modes):
    """Every stored row against the classifier's own forwards, in recording order."""
    rows = []
    for p in store.passes:
        if p.rows and p.split in wanted_modes:
            rows.append(store.read(p, ["fe", "ce_pred", "ce_target", "bias_pred", "logits", "pred", "label"]))
    seen = [s for s in model_seen if s[0] == (wanted_modes == {"train"})]
    assert len(rows) and sum(len(r["pred"]) for r in rows) == sum(len(s[1]) for s in seen)
    fe = np.concatenate([r["fe"] for r in rows])
    i = 0
    for training, x, w, b, out in seen:
        n = len(x)
        sl = slice(i, i + n)
        np.testing.assert_array_equal(fe[sl], x.numpy())
        np.testing.assert_array_equal(np.concatenate([r["logits"] for r in rows])[sl], out.numpy())
        pred = np.concatenate([r["pred"] for r in rows])[sl]
        label = np.concatenate([r["label"] for r in rows])[sl]
        np.testing.assert_array_equal(np.concatenate([r["ce_pred"] for r in rows])[sl], (x * w[pred]).numpy())
        np.testing.assert_array_equal(np.concatenate([r["ce_target"] for r in rows])[sl], (x * w[label]).numpy())
        np.testing.assert_array_equal(np.concatenate([r["bias_pred"] for r in rows])[sl], b[pred].numpy())
        i += n


@pytest.mark.slow
def test_trainer_records_exact_rows_and_resumes(tmp_path):
    path = tmp_path / "run.fragility"
    module = Classifier()
    callback = FragilityCallback(path, dtype="float32", sweeps={"test": _loader(8, seed=3)})
    _trainer(tmp_path, callback, epochs=2).fit(module, _loader(24, seed=1), _loader(8, seed=2))

    store = fragility.Store(path)
    groups = [(p.split, p.epoch, p.mode, p.rows) for p in store.passes if p.rows]
    # validation ran inside each epoch (after 3 batches and after 6): the training pass was split around it
    # then the eval sweep of the whole training set (the magnitude reference), then the other sweeps
    assert groups == [
        ("train", 0, "train", 12), ("val", 0, "eval", 8), ("train", 0, "train", 12), ("val", 0, "eval", 8),
        ("train_eval", 0, "eval", 24), ("test", 0, "eval", 8),
        ("train", 1, "train", 12), ("val", 1, "eval", 8), ("train", 1, "train", 12), ("val", 1, "eval", 8),
        ("train_eval", 1, "eval", 24), ("test", 1, "eval", 8),
    ]
    assert all(p.complete for p in store.passes)
    _check_rows(store, module.seen, {"train"})  # recorded after each optimizer step, exact all the same
    _check_rows(store, module.seen, {"val", "train_eval", "test"})
    res = fragility.analyze(path, ["topk"], k=3, split="train")["topk"]
    assert res.data["groups"]["train@1"]["classes"][0]["n"] == 8  # both parts of the epoch, one group
    before = [(p.name, p.split, p.epoch, p.rows) for p in store.passes if p.rows]
    store.close()

    # resume from the last checkpoint for a third epoch: the store continues, epochs stay right
    ckpt = sorted(glob.glob(os.path.join(tmp_path, "**", "*.ckpt"), recursive=True))[-1]
    module2 = Classifier()
    callback2 = FragilityCallback(path, dtype="float32")
    _trainer(tmp_path, callback2, epochs=3).fit(module2, _loader(24, seed=1), _loader(8, seed=2), ckpt_path=ckpt)
    store = fragility.Store(path)
    after = [(p.name, p.split, p.epoch, p.rows) for p in store.passes if p.rows]
    assert after[: len(before)] == before  # the earlier passes are kept as they were
    assert [(s, e) for _, s, e, _ in after[len(before):]] == [("train", 2), ("val", 2), ("train", 2), ("val", 2), ("train_eval", 2)]
    assert len({n for n, *_ in after}) == len(after)
    _check_rows_tail(store, module2.seen, len(groups))


def _check_rows_tail(store, seen, skip):
    passes = [p for p in store.passes if p.rows][skip:]
    train = [p for p in passes if p.split == "train"]
    fe = np.concatenate([store.read(p, ["fe"])["fe"] for p in train])
    want = np.concatenate([s[1].numpy() for s in seen if s[0]])
    np.testing.assert_array_equal(fe, want)


def test_callback_refuses_a_module_it_cannot_tap(tmp_path):
    class NoModel(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Linear(3, 2)

    cb = FragilityCallback(tmp_path / "x.fragility")
    with pytest.raises(fragility.RecorderError, match=r"NoModel has no get_classifier\(\) and no .model; pass FragilityCallback\(model="):
        cb.on_fit_start(None, NoModel())


@pytest.mark.slow
def test_ddp_writes_one_exact_store_per_rank(tmp_path):
    """A real 2-process DDP Trainer (gloo on CPU): one store per rank, each rank's rows equal to what its own
    classifier saw, and the two read back as one store covering every training sample each epoch."""
    import subprocess
    import sys

    env = {**os.environ, "FRAGILITY_DISABLE_PLUGIN_AUTOLOAD": "1"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.run([sys.executable, "-m", "tests.lightning_ddp_worker", str(tmp_path)], cwd=root, env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    path = tmp_path / "run.fragility"
    assert sorted(q.name for q in path.iterdir()) == ["rank0", "rank1"]
    for rank in (0, 1):
        seen = torch.load(tmp_path / f"seen{rank}.pt", weights_only=False)
        with fragility.Store(path / f"rank{rank}") as one:
            assert {q.rank for q in one.passes} == {rank}
            _check_rows(one, seen, {"train"})
            _check_rows(one, seen, {"val", "train_eval"})
    with fragility.Store(path) as both:
        for epoch in (0, 1):
            idx = np.concatenate([both.read(q, ["index"])["index"] for q in both.select(split="train", epoch=epoch)])
            assert sorted(idx.tolist()) == list(range(24))  # DistributedSampler split the epoch between the ranks
