"""Damaged stores (issue 17): no open hangs, a damaged pass is quarantined (never fatal to the rest), `repair`
salvages every committed block whose checksum holds, and every command ends (deadline, Ctrl-C)."""

from __future__ import annotations

import contextlib
import faulthandler
import io
import os
import shutil
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest

from fragility import Store, StoreError
from fragility.analysis import analyze
from fragility.cli import main
from fragility.store import repair
from fragility.store._format import block_order
from fragility.testing import assert_close, make_random_store

from . import crash_writer as cw
from .test_crash import _expected, make_killed_store
from .conftest import json_results

FRACTIONS = [(1, 3), (1, 2), (2, 3), (3, 4)]


def _cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    """A store whose writer was SIGKILLed inside its third pass: passes 0000-0001 complete, 0002 not.
    Returns (path, acknowledged rows per pass)."""
    path = tmp_path_factory.mktemp("killed") / "k.fragility"
    return path, make_killed_store(path)


def _truncated(killed, tmp_path, frac) -> Path:
    src, _ = killed
    path = Path(shutil.copytree(src, tmp_path / "t.fragility"))
    f = path / "passes" / "0002.h5"
    os.truncate(f, os.path.getsize(f) * frac[0] // frac[1])
    return path


@pytest.mark.parametrize("frac", FRACTIONS, ids=[f"{a}of{b}" for a, b in FRACTIONS])
def test_truncated_killed_pass_is_quarantined_at_once(killed, tmp_path, frac):
    """A partial copy of a live run: the truncated pass is named in one line, the rest is analysed, nothing hangs
    (before the bounded opens, `inspect` of these stores never answered)."""
    path = _truncated(killed, tmp_path, frac)
    faulthandler.dump_traceback_later(300, exit=True)  # a hang ends the run loudly
    try:
        s = Store(path)
        assert [d.name for d in s.damaged] == ["0002"] and "\n" not in s.damaged[0].reason
        assert [(p.name, p.complete) for p in s.passes] == [("0000", True), ("0001", True)]
        s.close()
        code, out, err = _cli("inspect", path)
        assert code == 0 and "damaged passes" in out and "0002" in out, (out, err)
        code, out, err = _cli("verify", path)
        assert code == 1 and "0002 (" in out and "DAMAGED" in out, out
        res = analyze(path, ["topk"], k=3)
        assert any(n.startswith("pass 0002 (") and "is damaged and was left out" in n for n in res["topk"].notes)
        assert sorted(res["topk"].data["groups"]) == ["train@0", "train@1"]
        code, out, err = _cli("analyze", path, "-a", "topk", "--k", "3", "--verify")
        assert code == 2 and err.count("\n") == 1 and "pass 0002" in err and "is damaged" in err, err
    finally:
        faulthandler.cancel_dump_traceback_later()


_UNBOUNDED = """
import sys
import fragility.store._hdf5 as h
h.READ_ATTEMPTS = 100  # HDF5's own SWMR default: the endless back-off the bounded opens avoid
from fragility.cli import main
print("READY", flush=True)
sys.exit(main(sys.argv[1:]))
"""


def _stuck(path, env=None):
    """`fragility inspect` with HDF5's default read attempts on a truncated killed pass: it sleeps in C code."""
    return subprocess.Popen([sys.executable, "-c", _UNBOUNDED, "inspect", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **(env or {})}, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def test_a_command_stuck_in_hdf5_ends_at_its_deadline(killed, tmp_path):
    path = _truncated(killed, tmp_path, (1, 2))
    proc = _stuck(path, {"FRAGILITY_IO_TIMEOUT": "2"})
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: opening pass file") and "did not finish within 2 s" in lines[0], err


def test_ctrl_c_ends_a_command_stuck_in_hdf5(killed, tmp_path):
    path = _truncated(killed, tmp_path, (1, 2))
    proc = _stuck(path)
    assert proc.stdout.readline().strip() == "READY"
    time.sleep(3)  # into the stuck open (a signal that lands earlier is handled by Python: the same outcome)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode in (130, -signal.SIGKILL), (proc.returncode, err)
    assert err.strip().splitlines()[-1] == "interrupted", err


def test_bad_io_timeout_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("FRAGILITY_IO_TIMEOUT", "soon")
    code, out, err = _cli("inspect", tmp_path)
    assert code == 2 and err.count("\n") == 1 and "FRAGILITY_IO_TIMEOUT='soon' must be a positive number of seconds" in err


# ------------------------------------------------------------------------------------- quarantine


@pytest.fixture
def four(tmp_path):
    return make_random_store(tmp_path / "s.fragility", counts=(9, 5, 3), d=6, seed=3)


def _damage_status(path: Path, name: str) -> None:
    with h5py.File(path / "passes" / f"{name}.h5", "r+", locking=False) as f:
        f["status"][1] = 7  # `complete` must be 0 or 1: the validation layer refuses the file


def test_a_damaged_pass_among_intact_ones(four, tmp_path):
    path = Path(four)
    reference = Path(shutil.copytree(path, tmp_path / "ref.fragility"))
    os.remove(reference / "passes" / "0002.h5")  # train@1 moved out: what the rest alone gives
    _damage_status(path, "0002")
    with Store(path) as s:
        assert [(d.name, d.label) for d in s.damaged] == [("0002", "train@1")]
        assert "status" in s.damaged[0].reason and "inconsistent" in s.damaged[0].reason
        assert [p.name for p in s.passes] == ["0000", "0001", "0003"]
    got = analyze(path, k=3)
    want = analyze(reference, k=3)
    for name in want:
        assert_close(got[name].data, want[name].data, rtol=0, atol=0, where=name)
        assert any("pass 0002 (train@1) is damaged and was left out" in n for n in got[name].notes), got[name].notes
    # a selection the damaged pass cannot belong to: no note, and verify=True does not refuse it
    res = analyze(path, ["topk"], split="test", k=3, verify=True)
    assert not any("damaged" in n for n in res["topk"].notes)
    with pytest.raises(StoreError, match=r"pass 0002 \(train@1\) of the selection is damaged, and verify asks for every selected row"):
        analyze(path, ["topk"], k=3, verify=True)
    code, out, err = _cli("verify", path)
    assert code == 1 and "0002 (train@1): DAMAGED" in out
    code, out, err = _cli("inspect", path, "--json")
    import json

    info = json_results(out, "inspect")["inspect"]
    assert code == 0 and [d["name"] for d in info["damaged"]] == ["0002"] and [p["name"] for p in info["passes"]] == ["0000", "0001", "0003"]


def test_resume_never_reuses_a_damaged_pass_number(four):
    from fragility.store import StoreWriter

    path = Path(four)
    os.truncate(path / "passes" / "0003.h5", 100)
    with Store(path) as s:
        meta = {k: s.metadata[k] for k in ("model_name", "num_classes", "class_names", "head")}
        dtype = s.metadata["storage_dtype"]
        assert [d.name for d in s.damaged] == ["0003"]
    w = StoreWriter(path, meta, dtype=dtype, resume=True)
    try:
        assert w.first_pass == 4  # after the damaged 0003, which may hold acknowledged rows
    finally:
        w.close()
    assert os.path.getsize(path / "passes" / "0003.h5") == 100


# ------------------------------------------------------------------------------------- repair


def _blocks_that_verify(path: Path) -> list[tuple[int, int]]:
    """Brute force with plain h5py + zlib: the committed blocks of a pass file whose CRC-32 still holds."""
    from fragility.store._reader import open_raw  # bounded: plain h5py would retry a bad block for ever

    out = []
    try:
        f = open_raw(str(path), "pass file")
    except StoreError:
        return out
    with f:
        try:
            committed = int(f["status"][0])
            blocks = f["checksums"][...].tolist()
        except Exception:  # noqa: BLE001 - unreadable: nothing verifies
            return out
        for start, stop, crc in blocks:
            if not start < stop <= committed:
                continue
            got = 0
            try:
                for c in block_order([k for k in f if k not in ("status", "checksums", "classifier")]):
                    got = zlib.crc32(np.ascontiguousarray(f[c][start:stop]), got)
            except Exception:  # noqa: BLE001
                continue
            if got == crc:
                out.append((start, stop))
    return out


@pytest.mark.parametrize("frac", FRACTIONS, ids=[f"{a}of{b}" for a, b in FRACTIONS])
def test_repair_salvages_every_block_whose_checksum_holds(killed, tmp_path, frac):
    _, acked = killed
    path = _truncated(killed, tmp_path, frac)
    original = (path / "passes" / "0002.h5").read_bytes()
    verifiable = _blocks_that_verify(path / "passes" / "0002.h5")
    code, out, err = _cli("repair", path)
    assert code == 0, (out, err)
    assert (path / "damaged" / "0002.h5").read_bytes() == original  # nothing deleted
    with Store(path) as s:
        assert not s.damaged and [p.name for p in s.passes] == ["0000", "0001", "0002"]
        p = s.pass_info("0002")
        assert not p.complete
        got = s.read(p, ["fe", "logits", "label", "index"]) if p.rows else {}
    import json

    with h5py.File(path / "passes" / "0002.h5", "r") as f:
        note = json.loads(f.attrs["repaired"])
    assert note["committed"] is None or note["committed"] >= acked["0002"]
    kept = _ranges_kept(note)
    assert _merge(verifiable) == kept  # exactly the committed blocks whose checksum holds
    assert sum(b - a for a, b in kept) == p.rows
    if not kept:
        return
    fe, logits, labels = _expected(2, kept[-1][1])
    at = 0
    for a, b in kept:
        np.testing.assert_array_equal(got["fe"][at:at + b - a], fe[a:b])
        np.testing.assert_array_equal(got["logits"][at:at + b - a], logits[a:b])
        np.testing.assert_array_equal(got["label"][at:at + b - a], labels[a:b])
        start = 2 * cw.BATCHES_PER_PASS * cw.BATCH
        np.testing.assert_array_equal(got["index"][at:at + b - a], np.arange(start + a, start + b))
        at += b - a
    code, out, err = _cli("verify", path)
    assert code == 0, out


def _merge(blocks):
    out = []
    for a, b in blocks:
        if out and out[-1][1] == a:
            out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def _ranges_kept(note):
    dropped, pos, out = note["dropped"], 0, []
    for a, b in dropped:
        if a > pos:
            out.append((pos, a))
        pos = b
    if note["committed"] is not None and pos < note["committed"]:
        out.append((pos, note["committed"]))
    return out


def test_repair_drops_only_the_corrupt_block(tmp_path):
    path = Path(make_random_store(tmp_path / "s.fragility", counts=(30, 20, 10), d=6, passes=(("train", 0),), seed=5))
    pass_file = path / "passes" / "0000.h5"
    with h5py.File(pass_file, "r") as f:
        blocks = f["checksums"][...].tolist()
        before = {c: f[c][...] for c in f if c not in ("status", "checksums", "classifier")}
        weight = f["classifier/weight"][...]
        off = f["fe"].id.get_chunk_info(0).byte_offset
        row_bytes = f["fe"].dtype.itemsize * f["fe"].shape[1]
    assert len(blocks) >= 3
    bad = blocks[1]
    data = bytearray(pass_file.read_bytes())
    data[off + bad[0] * row_bytes + 3] ^= 0x40  # one byte of fe in the second block
    pass_file.write_bytes(bytes(data))
    reports = repair(path)
    assert [(r["pass"], r["outcome"], r["dropped"]) for r in reports] == [("0000", "repaired", [[bad[0], bad[1]]])]
    assert (path / "damaged" / "0000.h5").read_bytes() == bytes(data)
    keep = np.r_[0:bad[0], bad[1]:len(before["fe"])]
    with Store(path) as s:
        p = s.passes[0]
        assert p.rows == len(keep) and not p.complete  # a block is missing: the pass is no longer whole
        got = s.read(p, list(before))
        for c in before:
            np.testing.assert_array_equal(got[c], before[c][keep])
        np.testing.assert_array_equal(s.classifier(p)[0], weight)
        assert s.verify() == []
    assert repair(path) == []  # nothing left to repair


def test_repair_of_unreadable_status_keeps_every_verified_row(four):
    path = Path(four)
    with Store(path) as s:
        p = s.pass_info("0002")
        want = s.read(p, list(p.columns))
    _damage_status(path, "0002")
    code, out, err = _cli("repair", path)
    assert code == 0 and "0002 (train@1): kept" in out, out
    with Store(path) as s:
        assert not s.damaged
        got = s.read(s.pass_info("0002"), list(want))
    for c in want:
        np.testing.assert_array_equal(got[c], want[c])


def test_repair_leaves_what_it_cannot_place_and_refuses_a_live_writer(four, tmp_path):
    path = Path(four)
    with h5py.File(path / "passes" / "0001.h5", "r+", locking=False) as f:
        del f.attrs["split"]
    code, out, err = _cli("repair", path)
    assert code == 1 and "0001 (?): left in place: its attributes (split, epoch, mode) cannot be read" in out, out
    code, out, err = _cli("repair", path, "--json")
    assert code == 1 and not json_results(out, "repair")["repair"]["ok"]
    assert (path / "passes" / "0001.h5").exists() and not (path / "damaged").exists()
    from fragility.store._writer import _acquire_writer_lock, _HELD

    handle, key = _acquire_writer_lock(str(path))
    try:
        code, out, err = _cli("repair", path)
        assert code == 2 and err.count("\n") == 1 and "is already being written by another Recorder in this process" in err, err
    finally:
        _HELD.pop(key, None)
        handle.close()


def test_a_damaged_pass_of_one_rank(tmp_path):
    root = tmp_path / "ddp.fragility"
    root.mkdir()
    for r in (0, 1):
        make_random_store(root / f"rank{r}", counts=(5, 3, 2), d=4, seed=r)
    _damage_status(root / "rank1", "0001")
    with Store(root) as s:
        assert [(d.name, d.label) for d in s.damaged] == [("r1/0001", "test@0")]
        assert "r1/0001" not in [p.name for p in s.passes] and "r0/0001" in [p.name for p in s.passes]
    code, out, _ = _cli("verify", root)
    assert code == 1 and "r1/0001 (test@0): DAMAGED" in out
    assert [(r["pass"], r["outcome"]) for r in repair(root)] == [("r1/0001", "repaired")]
    with Store(root) as s:
        assert not s.damaged and s.verify() == []
