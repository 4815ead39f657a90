"""`fragility watch` against a live writer in another process, including the writer being killed."""

from __future__ import annotations

import contextlib
import io
import re
import signal
import subprocess
import sys
import time

import fragility
from fragility.cli import main

WRITER = """
import os, sys, time, torch, timm, fragility
torch.manual_seed(0)
m = timm.create_model("test_resnet", pretrained=False, num_classes=3)
g = torch.Generator().manual_seed(1)
x = torch.randn(24, 3, 32, 32, generator=g); y = torch.arange(24) % 3
with fragility.Recorder(m, sys.argv[1], flush_interval=0.1) as rec:
    for epoch in range(1000):
        with rec.capture("train", epoch=epoch):
            for i in range(0, 24, 8):
                m(x[i:i + 8]); rec.record(y[i:i + 8]); time.sleep(0.05)
        rec.evaluate([(x, y)], split="test", epoch=epoch)
        with rec.capture("train", epoch=epoch + 1000):  # a pass that stays open while we watch
            m(x[:8]); rec.record(y[:8]); rec.flush()
            if os.path.exists(sys.argv[1] + ".stop"):  # the test kills us here, inside this pass
                open(sys.argv[1] + ".open", "w").close()
                time.sleep(600)
"""


def _watch(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["watch", *map(str, argv)])
    return code, out.getvalue().strip().splitlines(), err.getvalue()


def test_watch_follows_a_live_writer_and_survives_its_kill(tmp_path):
    path = tmp_path / "live.fragility"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:  # until a training and a test pass are complete
            try:
                with fragility.Store(path) as s:
                    if len([p for p in s.passes if p.complete and p.rows]) >= 2:
                        break
            except fragility.FragilityError:
                pass
            time.sleep(0.2)
        seen: list[int] = []
        deadline = time.time() + 120
        while time.time() < deadline:  # new rows arrive while we watch (however slowly this machine runs today)
            code, lines, err = _watch(path, "--interval", "0.4", "--count", "2", "--k", "3")
            assert code == 0, err
            assert len(lines) == 2 and all("writer writing" in line for line in lines), lines
            assert all("fragile at test@" in line for line in lines)
            rows = [int(re.search(r"(\d+) rows, newest", line).group(1)) for line in lines]
            assert rows == sorted(rows), rows
            seen += rows
            if seen[-1] > seen[0]:
                break
        assert seen[-1] > seen[0], seen
        (tmp_path / "live.fragility.stop").touch()
        flag = tmp_path / "live.fragility.open"  # the writer waits inside its open pass until killed
        deadline = time.time() + 120
        while not flag.exists() and time.time() < deadline:
            time.sleep(0.01)
        assert flag.exists()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        code, lines, err = _watch(path, "--interval", "0.2", "--until-idle")
        assert code == 0 and len(lines) == 1 and "writer gone (killed inside a pass)" in lines[0], lines
        with fragility.Store(path) as s:
            assert not all(p.complete for p in s.passes)  # the interrupted pass reads incomplete
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_watch_waits_for_a_store_and_says_why_it_gives_up(tmp_path):
    code, lines, err = _watch(tmp_path / "not-yet.fragility", "--interval", "0.1", "--count", "2")
    assert code == 2 and "does not exist" in err and err.count("\n") == 1
    assert len(lines) == 2 and all("does not exist" in line for line in lines)


def test_watch_tells_a_finished_writer_from_a_killed_one(tmp_path):
    import timm
    import torch

    path = tmp_path / "done.fragility"
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=3)
    with fragility.Recorder(model, path) as rec:
        rec.evaluate([(torch.randn(6, 3, 32, 32), torch.arange(6) % 3)], split="test")
    code, lines, err = _watch(path, "--interval", "0.1", "--until-idle")
    assert code == 0 and len(lines) == 1 and "writer finished" in lines[0], lines
