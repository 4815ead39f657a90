from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("FRAGILITY_DISABLE_PLUGIN_AUTOLOAD", "")
# the validation cache of the tests' stores (and of their subprocesses) lives with the test run, not in ~/.cache
if "FRAGILITY_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["FRAGILITY_CACHE_DIR"] = tempfile.mkdtemp(prefix="fragility-cache-")

import fragility  # noqa: E402


@pytest.fixture
def pm():
    """A fresh plugin manager with built-ins only (no third-party autoload)."""
    return fragility.make_plugin_manager(autoload=False)


@pytest.fixture
def store_path(tmp_path):
    return tmp_path / "run.fragility"


@pytest.fixture
def tiny_model():
    import timm

    torch.manual_seed(0)
    return timm.create_model("test_resnet", pretrained=False, num_classes=4)


def imbalanced_data(n_per_class=(48, 24, 12, 6), size=32, seed=0):
    """Synthetic images whose class shifts the mean of one colour channel, exponentially imbalanced."""
    g = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for c, n in enumerate(n_per_class):
        x = torch.randn(n, 3, size, size, generator=g) * 0.5
        x[:, c % 3] += 1.0 + 0.5 * c
        xs.append(x)
        ys.append(torch.full((n,), c, dtype=torch.int64))
    x, y = torch.cat(xs), torch.cat(ys)
    perm = torch.randperm(len(y), generator=g)
    return x[perm], y[perm]


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def json_results(text, command):
    """A command's --json output: checked against the shipped JSON Schema (the envelope and every built-in
    result in it), its ``results`` returned."""
    import json

    import jsonschema

    from fragility.analysis._results import SCHEMA_PATH

    doc = json.loads(text)
    with open(SCHEMA_PATH) as fh:
        jsonschema.validate(doc, json.load(fh))
    assert doc["command"] == command and doc["fragility_version"] == fragility.__version__
    return doc["results"]
