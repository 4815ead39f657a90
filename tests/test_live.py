"""Per-epoch fragility metrics logged while training: TensorBoard event files read back with TensorBoard's
own reader, and a Lightning logger, against the analyzers run afterwards on the same passes."""

from __future__ import annotations

import csv
import glob

import pytest
import timm
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

import fragility
from fragility.live import LiveMetrics

from .conftest import imbalanced_data


def _run(path, pm, epochs=2):
    torch.manual_seed(0)
    x, y = imbalanced_data(n_per_class=(24, 12, 6, 3))
    xt, yt = imbalanced_data(n_per_class=(8, 8, 8, 8), seed=1)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with fragility.Recorder(model, path, plugin_manager=pm) as rec:
        for epoch in range(epochs):
            model.train()
            with rec.capture("train", epoch=epoch):
                for i in range(0, len(y), 15):
                    loss = nn.functional.cross_entropy(model(x[i : i + 15]), y[i : i + 15])
                    rec.record(y[i : i + 15])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            rec.evaluate([(xt, yt)], split="test", epoch=epoch)


def test_tensorboard_scalars_equal_the_analyzers(tmp_path, pm):
    live = LiveMetrics(log_dir=str(tmp_path / "tb"), k=5)
    pm.register(live)
    path = tmp_path / "run.fragility"
    _run(path, pm)
    acc = EventAccumulator(glob.glob(str(tmp_path / "tb"))[0])
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"fragility/test/accuracy/0", "fragility/train/unique_topk/3", "fragility/test/share_below_train_p5/2",
            "fragility/train/participation_ratio/1"} <= tags
    # one chart per metric and split with a line per class (the custom-scalars layout), not one per tag
    import re

    from tensorboard.plugins.custom_scalar import layout_pb2

    layout = layout_pb2.Layout.FromString(acc.Tensors("custom_scalars__config__")[-1].tensor_proto.string_val[0])
    charts = {c.title: c.multiline.tag[0] for cat in layout.category for c in cat.chart}
    assert {"accuracy (test)", "unique_topk (train)", "share_below_train_p5 (test)", "participation_ratio (train)"} <= set(charts)
    for title, pattern in charts.items():
        lines = [t for t in tags if re.search(pattern, t)]
        assert 1 <= len(lines) <= 4 and all(t.rsplit("/", 1)[0] == lines[0].rsplit("/", 1)[0] for t in lines), (title, lines)
    assert len([t for t in tags if re.search(charts["accuracy (test)"], t)]) == 4  # a line per class
    assert len(charts) < len(tags) / 3
    for epoch, (train, test) in enumerate((("0000", "0001"), ("0002", "0003"))):
        res = fragility.analyze(path, ["topk", "magnitude", "diversity"], passes=[train, test], k=5, reference_epoch=epoch)
        top, mag, div = (res[n].data["groups"] for n in ("topk", "magnitude", "diversity"))
        for c in range(4):
            def logged(tag):
                return {e.step: e.value for e in acc.Scalars(tag)}[epoch]

            assert logged(f"fragility/test/accuracy/{c}") == pytest.approx(top[f"test@{epoch}"]["classes"][c]["accuracy"])
            assert logged(f"fragility/train/unique_topk/{c}") == top[f"train@{epoch}"]["classes"][c]["unique"]
            share = mag[f"test@{epoch}"]["classes"][c]["share_below_p5"]
            assert logged(f"fragility/test/share_below_train_p5/{c}") == pytest.approx(share)
            pr = div[f"train@{epoch}"]["classes"][c]["participation_ratio"]
            assert logged(f"fragility/train/participation_ratio/{c}") == pytest.approx(pr, rel=1e-6)


def test_lightning_logger_receives_the_metrics(tmp_path):
    import lightning.pytorch as pl

    from fragility.integrations.lightning import FragilityCallback

    from .test_lightning import Classifier, _loader

    logger = pl.loggers.CSVLogger(str(tmp_path), name="csv")
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=logger, enable_progress_bar=False, enable_model_summary=False,
                         limit_train_batches=4, limit_val_batches=2, num_sanity_val_steps=0, enable_checkpointing=False,
                         callbacks=[FragilityCallback(tmp_path / "l.fragility", live_metrics=True)])
    trainer.fit(Classifier(), _loader(16, seed=1), _loader(8, seed=2))
    rows = list(csv.DictReader(open(glob.glob(str(tmp_path / "csv" / "*" / "metrics.csv"))[0])))
    columns = set(rows[0])
    assert {"fragility/val/accuracy/0", "fragility/train/unique_topk/2", "fragility/val/share_below_train_p5/1"} <= columns
    res = fragility.analyze(tmp_path / "l.fragility", ["topk"], k=10, epoch=0)["topk"].data["groups"]
    got = [float(r["fragility/val/accuracy/0"]) for r in rows if r.get("fragility/val/accuracy/0")]
    assert got == [pytest.approx(res["val@0"]["classes"][0]["accuracy"])]
