"""Demo data: digits imbalance profile, CIFAR-10/SVHN loaders on small files in the real on-disk formats,
and the demo itself end to end."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from fragility.paper.datasets import exponential_counts, imbalance, load
from fragility.errors import DataError

from .test_cli import _check_report, run
from .conftest import json_results


def test_exponential_profile_and_subset():
    assert exponential_counts(100, 3, 100) == [100, 10, 1]
    assert exponential_counts(144, 10, 1) == [144] * 10
    with pytest.raises(DataError, match="imbalance ratio 0.5 must be >= 1"):
        exponential_counts(10, 3, 0.5)
    d = load("digits")
    assert d.x_train.shape[1:] == (3, 32, 32) and len(d.classes) == 10
    assert len(d.y_train) + len(d.y_test) == 1797
    x, y = imbalance(d.x_train, d.y_train, 20)
    counts = torch.bincount(y).tolist()
    n_min = int(torch.bincount(d.y_train).min())
    assert counts == exponential_counts(n_min, 10, 20)
    assert counts == [139, 99, 71, 51, 36, 26, 18, 13, 9, 6]  # int(139 * 0.05 ** (c / 9.0)), truncated as in LDAM-DRW


def _write_cifar(root, n=6):
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, n))}
        with open(base / name, "wb") as fh:
            pickle.dump(d, fh)
    with open(base / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, fh)
    return d


def test_cifar10_loader_reads_torchvision_layout(tmp_path):
    last = _write_cifar(tmp_path)
    d = load("cifar10", str(tmp_path))
    assert d.x_train.shape == (30, 3, 32, 32) and d.x_test.shape == (6, 3, 32, 32)
    assert d.classes == [f"c{i}" for i in range(10)]
    np.testing.assert_array_equal(d.y_test.numpy(), last[b"labels"])
    # pixel (0, 0) of channel 1 of the first test image, normalised as the peers do (mean 0.4822, std 0.1994)
    assert d.x_test[0, 1, 0, 0].item() == pytest.approx((last[b"data"][0, 1024] / 255 - 0.4822) / 0.1994, abs=1e-5)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"data_batch_3 is not a CIFAR-10 batch"):
        load("cifar10", str(tmp_path))


def test_svhn_loader_reads_mat_files(tmp_path):
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    for split, n in (("train", 7), ("test", 3)):
        X = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = rng.integers(1, 11, (n, 1))
        savemat(tmp_path / f"{split}_32x32.mat", {"X": X, "y": y})
    d = load("svhn", str(tmp_path))
    assert d.x_train.shape == (7, 3, 32, 32)
    np.testing.assert_array_equal(d.y_test.numpy(), y.reshape(-1) % 10)
    assert d.x_test[2, 0, 5, 7].item() == pytest.approx(X[5, 7, 0, 2] / 255 * 2 - 1, abs=1e-6)
    (tmp_path / "test_32x32.mat").unlink()
    with pytest.raises(DataError, match=r"test_32x32.mat is missing"):
        load("svhn", str(tmp_path))


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, monkeypatch):
    # `make demo` as the README runs it (the defaults: resnet10t, 10 epochs, --out demo-report), piped at 160 columns
    p = run("demo", "--out", "demo-report", cwd=tmp_path, env={"COLUMNS": "160"})
    out = tmp_path / "demo-report"
    assert "imbalanced (imb) vs balanced (bal)" in p.stdout.replace("\n", " ")
    assert "test accuracy: imbalanced" in p.stdout and "index.html" in p.stdout
    # the README's demo block is this run's output (the demo is deterministic), the wall-clock time aside
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    block = re.search(r"progress with epoch, loss, accuracy and ETA on stderr\)\..*?output on an (.+?) CPU \(torch CPU kernels "
                      r"(\w+)\).*?\n\n```\n(.*?)```", readme, flags=re.S)
    assert block, "README: the demo's output block after `make demo` (and the CPU it comes from) is missing"
    cpu, capability, shown = block.group(1), block.group(2), block.group(3)
    # on the machine the README names: byte for byte, the wall-clock time aside. Elsewhere the CPU's float kernels
    # train a slightly different network: the layout, captions, headers, class names and sizes still match
    here = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")][:1]
    if here == [cpu] and torch.backends.cpu.get_cpu_capability() == capability:
        assert re.sub(r"\(\d+ s\)", "(N s)", shown) == re.sub(r"\(\d+ s\)", "(N s)", p.stdout), \
            "README.md's demo block is stale: paste the output of `COLUMNS=160 make demo`"
    else:
        def skeleton(text):
            return [" ".join(re.sub(r"\d+(\.\d+)?", "#", line).split()) for line in text.splitlines()]

        def sizes(text):  # class, n imb (and n bal in the first table): from the data, not the training
            return [line.split("│")[1:4] for line in text.splitlines() if line.startswith("│")]

        assert skeleton(shown) == skeleton(p.stdout) and [s[:2] for s in sizes(shown)] == [s[:2] for s in sizes(p.stdout)]
        assert sizes(shown)[:10] == sizes(p.stdout)[:10]
    # progress on stderr — without a terminal as plain lines: epoch, loss, accuracy, ETA
    lines = p.stderr.splitlines()
    final = [i for i, line in enumerate(lines) if line.startswith("train imbalanced 10 epochs (epoch 10: loss ")]
    assert len(final) == 1 and " acc " in lines[final[0]] and "ETA 0 s" in lines[final[0]], p.stderr[-3000:]
    # its clock stopped when it finished: not printed again (with the other run's time added) at the end
    assert final[0] < min(i for i, line in enumerate(lines) if line.startswith("train balanced"))
    _check_report(out, min_images=7)
    # the remedies row: tau-norm and EOS on the imbalanced run, next to the balanced control, saved next to its store
    assert "remedies for the imbalanced run" in p.stdout.replace("\n", " ") and "acc eos" in p.stdout and "acc bal" in p.stdout
    rem = json.loads((out / "stores" / "imbalanced.fragility.remedies" / "remedy.json").read_text())["data"]
    assert list(rem["remedies"]) == ["tau-norm", "eos"] and rem["remedies"]["tau-norm"]["options"]["tau"] == 1.0
    assert rem["test_rows"] == sum(c["n"] for c in rem["remedies"]["eos"]["classes"]) > 0  # every test row: tau given, no slice
    assert "Remedies: what a new head changes" in (out / "index.html").read_text()
    # the README's analysis snippet and docs/remedies.md's Python block run against the demo's store
    import shutil

    import timm

    import fragility

    work = tmp_path / "docs"
    shutil.copytree(out / "stores" / "imbalanced.fragility", work / "run.fragility")
    monkeypatch.chdir(work)
    readme = re.findall(r"```python\n(.*?)```", readme, flags=re.S)[1]
    remedies = re.findall(r"```python\n(.*?)```", (root / "docs" / "remedies.md").read_text(), flags=re.S)[0]
    model = timm.create_model("resnet10t", pretrained=False, num_classes=10)
    namespace = {"fragility": fragility, "epochs": 10, "model": model}
    exec(compile(readme, "README.md", "exec"), namespace)
    assert isinstance(namespace["results"]["topk"].data["groups"]["test@9"]["classes"][9]["unique"], int)
    exec(compile(remedies, "docs/remedies.md", "exec"), namespace)
    w, _, _ = fragility.remedies.read_head("run.fragility.remedies/eos.pt")
    assert torch.equal(model.get_classifier().weight.detach(), torch.from_numpy(w))  # the remedy is in the model
    cmp = json.loads((out / "results" / "compare.json").read_text())
    classes = cmp["data"]["classes"]
    n_imb = [c["n_train_imbalanced"] for c in classes]
    assert n_imb == sorted(n_imb, reverse=True) and n_imb[0] > 10 * n_imb[-1]
    assert len({c["n_train_balanced"] for c in classes}) > 1 and min(c["n_train_balanced"] for c in classes) > 100
    # the stores are real stores: inspect them
    info = json_results(run("inspect", out / "stores" / "imbalanced.fragility", "--json").stdout, "inspect")["inspect"]
    assert [p["split"] for p in info["passes"]] == ["train", "train_eval", "test"] * 10


def test_demo_cifar10_from_local_files(tmp_path):
    _write_cifar(tmp_path / "data", n=20)
    out = tmp_path / "c"
    p = run("demo", "--data", "cifar10", "--root", tmp_path / "data", "--epochs", "1", "--imbalance", "2",
            "--model", "test_resnet", "--out", out)
    assert "c0" in p.stdout and (out / "index.html").exists()
