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
