"""Runnable examples in docs/ are executed so they stay true."""

from __future__ import annotations

import re
from pathlib import Path


DOCS = Path(__file__).resolve().parents[1] / "docs"


def _blocks(name: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / name).read_text(), flags=re.S)


def test_quickstart_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}  # the page reads top to bottom: later blocks use what earlier ones defined
    for block in _blocks("quickstart.md"):
        exec(compile(block, "quickstart.md", "exec"), namespace)
    out = capsys.readouterr().out.split("\n")
    assert out[:6] == ["train 0 train 120 complete", "train_eval 0 eval 120 complete", "test 0 eval 120 complete",
                       "train 1 train 120 complete", "train_eval 1 eval 120 complete", "test 1 eval 120 complete"]
    # the Lightning block: 2 batches of 32, then the sweeps
    assert out[6] == "[('train', 0, 64), ('train_eval', 0, 120), ('test', 0, 120)]"


def test_readme_snippets_run(tmp_path, monkeypatch):
    """The README's two Python blocks, run top to bottom with a small timm model and loaders of its shape:
    the recording loop writes the store the analysis snippet then reads."""
    import timm
    import torch

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    x, y = torch.randn(40, 3, 32, 32), torch.arange(40) % 10
    namespace = {
        "model": timm.create_model("test_resnet", pretrained=False, num_classes=10),
        "epochs": 2,
        "loader": [(x[i : i + 20], y[i : i + 20], torch.arange(i, i + 20)) for i in (0, 20)],
        "train_eval_loader": [(x, y)],
        "test_loader": [(x, y)],
    }
    blocks = re.findall(r"```python\n(.*?)```", (DOCS.parent / "README.md").read_text(), flags=re.S)
    assert len(blocks) == 2
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    unique = namespace["results"]["topk"].data["groups"]["test@1"]["classes"][9]["unique"]
    assert isinstance(unique, int) and 10 <= unique <= 40  # 4 rows of class 9, each with its own top-10
