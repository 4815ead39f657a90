"""Crash safety: SIGKILL a recording subprocess at random moments; the store must open with every
acknowledged row intact and equal to what was fed, and the interrupted pass marked incomplete."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fragility import Store

from . import crash_writer as cw

KILLS = 12


def _expected(pass_no: int, rows: int):
    model = cw.make_model()
    fe, logits, labels = [], [], []
    with torch.no_grad():
        for b in range(pass_no * cw.BATCHES_PER_PASS, pass_no * cw.BATCHES_PER_PASS + -(-rows // cw.BATCH)):
            x, y = cw.batch(b)
            fe.append(x)
            logits.append(model(x))
            labels.append(y)
    return torch.cat(fe)[:rows].numpy(), torch.cat(logits)[:rows].numpy(), torch.cat(labels)[:rows].numpy()


def kill_and_check(path: Path, delay: float) -> Store:
    """Start a recording subprocess, SIGKILL it after ``delay`` s, check the store; return it (open)."""
    script = Path(cw.__file__)
    env = {**os.environ, "PYTHONPATH": str(script.parent.parent) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "READY"
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    out, _ = proc.communicate()
    acked: dict[str, int] = {}
    begun = [line.split()[1] for line in out.splitlines() if line.startswith("BEGIN")]
    for line in out.splitlines():
        if line.startswith("ACK"):
            _, name, rows = line.split()
            acked[name] = max(acked.get(name, 0), int(rows))
    s = Store(path)  # must open
    by_name = {p.name: p for p in s.passes}
    for name, rows in acked.items():
        assert by_name[name].rows >= rows, f"pass {name} lost acknowledged rows"
    for i, p in enumerate(s.passes):
        assert p.name == f"{i:04d}"
        if p.complete:
            assert p.rows == cw.BATCH * cw.BATCHES_PER_PASS
        if p.rows:
            got = s.read(p, ["fe", "logits", "label", "index"])
            fe, logits, labels = _expected(i, p.rows)
            np.testing.assert_array_equal(got["fe"], fe)
            np.testing.assert_array_equal(got["logits"], logits)
            np.testing.assert_array_equal(got["label"], labels)
            start = i * cw.BATCHES_PER_PASS * cw.BATCH
            np.testing.assert_array_equal(got["index"], np.arange(start, start + p.rows))
    assert begun and begun[-1] in by_name, "a pass whose start returned must be in the store"
    assert all(p.complete for p in s.passes[:-1]), "only the last pass may be interrupted"
    return s


def test_sigkill_at_random_moments_never_loses_acknowledged_rows(tmp_path):
    rnd = random.Random(1234)
    interrupted = 0
    for k in range(KILLS):
        s = kill_and_check(tmp_path / f"crash{k}.fragility", rnd.uniform(0.0, 1.5))
        interrupted += not s.passes[-1].complete  # killed inside a pass (not between two)
        s.close()
    assert interrupted >= KILLS // 2, f"only {interrupted} of {KILLS} kills landed inside a pass"


def test_live_reading_from_another_process_while_it_records(tmp_path):
    """A second process opens the store of a running recorder (live analysis) and sees its flushed rows."""
    script = Path(cw.__file__)
    env = {**os.environ, "PYTHONPATH": str(script.parent.parent) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    path = tmp_path / "live.fragility"
    proc = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "READY"
        acked: dict[str, int] = {}
        while len(acked) < 3:  # let it write a few passes
            line = proc.stdout.readline()
            if line.startswith("ACK"):
                _, name, rows = line.split()
                acked[name] = int(rows)
        s = Store(path)
        for name, rows in acked.items():
            p = s.pass_info(name)
            assert p.rows >= rows
            got = s.read(p, ["fe", "logits"])
            fe, logits, _ = _expected(int(name), p.rows)
            np.testing.assert_array_equal(got["fe"], fe)
            np.testing.assert_array_equal(got["logits"], logits)
        before = sum(p.rows for p in s.passes)
        time.sleep(0.3)
        s.refresh()
        assert sum(p.rows for p in s.passes) > before  # the writer kept going and the reader sees it
        s.close()
    finally:
        proc.kill()
        proc.communicate()
