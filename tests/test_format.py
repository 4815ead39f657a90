"""docs/format.md is the spec: a recorded store matches every table; released schemas stay readable."""

from __future__ import annotations

import json
import re
from pathlib import Path

import h5py
import numpy as np
import timm
import torch

import fragility
from fragility import Store

ROOT = Path(__file__).resolve().parents[1]
SPEC = (ROOT / "docs" / "format.md").read_text()


def _table(heading: str) -> list[list[str]]:
    section = SPEC.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| ---")]
    return [[c.strip().strip("`") for c in r.strip("|").split("|")] for r in rows[1:]]


def _record(path, **kwargs):
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=3)
    with fragility.Recorder(model, path, **kwargs) as rec:
        with rec.capture("train", epoch=0):
            model(torch.randn(4, 3, 32, 32))
            rec.record(torch.tensor([0, 1, 2, 0]), index=torch.arange(4))
        rec.evaluate([(torch.randn(4, 3, 32, 32), torch.tensor([2, 1, 0, 0]))], split="test")


def test_the_spec_states_the_current_schema_version():
    row = next(r for r in _table("Root attributes") if r[0] == "schema_version")
    assert re.match(r"\d+", row[3]).group(0) == str(fragility.store.SCHEMA_VERSION), row
    assert SPEC.startswith(f"# The fragility store format (schema version {fragility.store.SCHEMA_VERSION})")


def test_recorded_store_matches_the_spec(store_path):
    _record(store_path)
    spec = {path: (kind, etype, req) for path, kind, etype, req, *_ in _table("Elements")}
    seen = set()
    files = {"store.h5": store_path / "store.h5"}
    files.update({f"passes/{p.name}": p for p in sorted((store_path / "passes").iterdir())})
    assert sorted(files) == ["passes/0000.h5", "passes/0001.h5", "store.h5"]
    for rel, path in files.items():
        generic_file = re.sub(r"passes/\d{4}\.h5", "passes/{pass}.h5", rel)
        with h5py.File(path, "r") as f:
            def check(name, obj):
                generic = f"{generic_file}:/{name}"
                assert generic in spec, f"{generic} is in the store but not specified in docs/format.md"
                kind, etype, _ = spec[generic]
                assert obj.attrs["encoding-type"] == etype, generic
                assert obj.attrs["encoding-version"] == "1.0", generic
                assert isinstance(obj, h5py.Group if kind == "group" else h5py.Dataset), generic
                seen.add(generic)

            check("", f)
            f.visititems(check)
            table = _table("Root attributes" if rel == "store.h5" else "Pass attributes")
            for name, typ, req, _ in table:
                if req == "MUST":
                    assert name in f.attrs, f"MUST attribute {name} missing in {rel}"
            assert set(f.attrs) <= {r[0] for r in table}, set(f.attrs) - {r[0] for r in table}
            if rel == "store.h5":
                assert f.attrs["schema_version"] == fragility.store.SCHEMA_VERSION
                assert len(json.loads(f.attrs["class_names"])) == f.attrs["num_classes"]
            else:
                committed, complete, nonfinite, finished = f["status"][...]
                assert committed == 4 and complete == 1 and nonfinite == 0 and finished > 0
    for path, (kind, etype, req) in spec.items():
        if req == "MUST":
            assert path in seen, f"MUST element {path} missing"


def test_released_v1_store_stays_readable():
    """tests/data/store-v1 was written by fragility 0.1.0 (schema 1) and must read forever."""
    s = Store(ROOT / "tests" / "data" / "store-v1")
    assert s.metadata["schema_version"] == 1
    assert [(p.split, p.epoch, p.rows, p.complete) for p in s.passes] == [("train", 0, 4, True), ("test", 0, 4, True)]
    rows = s.read(s.passes[1], ["ce_pred", "logits", "pred"])
    w, b = s.classifier(s.passes[1])
    pred = rows["pred"]
    np.testing.assert_allclose(
        rows["ce_pred"].astype(np.float32).sum(1) + b[pred],
        rows["logits"][np.arange(4), pred].astype(np.float32), rtol=2e-2, atol=2e-2,
    )


def test_released_v2_store_stays_readable_and_exact_per_row():
    """tests/data/store-v2 was written by fragility 0.2.0 (schema 2): a training pass whose weights moved
    between its two batches (an SGD step before each record()), then a test sweep."""
    s = Store(ROOT / "tests" / "data" / "store-v2")
    assert s.metadata["schema_version"] == 2
    assert [(p.split, p.epoch, p.mode, p.rows, p.complete) for p in s.passes] == [
        ("train", 0, "train", 8, True), ("test", 0, "eval", 4, True)]
    for p in s.passes:
        rows = s.read(p, ["ce_pred", "bias_pred", "logits", "pred"])
        pred = rows["pred"]
        n = len(pred)
        np.testing.assert_allclose(
            rows["ce_pred"].astype(np.float64).sum(1) + rows["bias_pred"],
            rows["logits"][np.arange(n), pred].astype(np.float64), rtol=2e-2, atol=2e-2,
        )
    # the end-of-pass snapshot differs from the bias the training rows were computed with
    _, b = s.classifier(s.passes[0])
    first = s.read(s.passes[0], ["bias_pred", "pred"], 0, 4)
    assert not np.array_equal(first["bias_pred"], b[first["pred"]])
    assert s.verify() == []  # every committed row is covered by an intact checksum


def test_v1_store_rows_are_reported_unverified():
    s = Store(ROOT / "tests" / "data" / "store-v1")
    assert [(f["pass"], f["start"], f["stop"], f["problem"]) for f in s.verify()] == [
        ("0000", 0, 4, "unverified"), ("0001", 0, 4, "unverified")]
