"""A full disk during recording (issue 17): the recording stops with one line, every acknowledged row reads
back bit-equal in the same process and in a fresh one, ``verify`` raises no false alarm, and the recording
process exits 1 — not 139 (HDF5 used to crash at exit after a failed write, h5py issue #914).

Two ways to fill it: a real 2 MiB tmpfs (mounted as root, as CI runs; where mounting is not permitted the
test says so and uses the second way), where the writer's free-space check stops before any write fails;
and a per-file size limit (RLIMIT_FSIZE), where writes fail with EFBIG past a free-space check that cannot
see the limit, so the writer's failed-write path (a file closed without crashing) is exercised too.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fragility import Store
from fragility.cli import main

from . import crash_writer as cw
from .diskfull_writer import expected


@contextlib.contextmanager
def small_filesystem(where: Path, size: str = "2m"):
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True, text=True)
    if done.returncode != 0:
        yield None
        return
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _record(path: Path, *extra: str):
    script = Path(__file__).parent / "diskfull_writer.py"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(script.parent), str(script.parent.parent), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, str(script), str(path), *extra], capture_output=True, text=True, env=env, timeout=600)


def _check(done, path: Path, why: str) -> None:
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])  # 139 was a segfault at exit
    assert "Segmentation" not in done.stderr and "Traceback" not in done.stderr, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    acked: dict[str, int] = {}
    for line in lines:
        if line.startswith("ACK "):
            _, name, rows = line.split()
            acked[name] = int(rows)
    errors = [line for line in lines if line.startswith("ERROR ")]
    assert len(errors) == 1 and why in errors[0] and "rows flushed before it are kept" in errors[0], errors
    assert f"INPROCESS {sum(acked.values())}" in lines, lines[-3:]
    assert len(acked) >= 1 and sum(acked.values()) >= 3 * cw.BATCH
    # a fresh process (this one) reads every acknowledged row back, bit-equal
    with Store(path) as s:
        assert not s.damaged, s.damaged
        for name, rows in acked.items():
            p = s.pass_info(name)
            assert p.rows >= rows
            got = s.read(p, ["fe", "logits"], 0, rows)
            fe, logits = expected(int(name), rows)
            np.testing.assert_array_equal(got["fe"], fe)
            np.testing.assert_array_equal(got["logits"], logits)
        assert not s.passes[-1].complete
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["verify", str(path)])
    assert code == 0 and "every checksummed block intact" in out.getvalue(), out.getvalue()


def test_a_full_disk_keeps_every_acknowledged_row(tmp_path):
    with small_filesystem(tmp_path / "fs") as fs:
        if fs is None:
            print("mounting a tmpfs is not permitted here: the file-size limit stands in for the full disk")
            path = tmp_path / "full.fragility"
            _check(_record(path, "--fsize", str(600_000)), path, "File too large")
            return
        path = fs / "full.fragility"
        _check(_record(path), path, "is full")


def test_a_write_that_fails_past_the_free_space_check(tmp_path):
    path = tmp_path / "limited.fragility"
    _check(_record(path, "--fsize", str(250_000)), path, "File too large")
