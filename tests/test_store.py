"""Store reader/writer: selection, live reading, one writer, and every kind of bad file."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import h5py
import numpy as np
import pytest
import timm
import torch

import fragility
from fragility import SelectionError, Store, StoreError, StoreVersionError
from fragility.store import StoreWriter

from .test_format import _record


@pytest.fixture
def recorded(store_path):
    _record(store_path)
    return store_path


def test_selection_by_split_epoch_class_and_correctness(recorded):
    s = Store(recorded)
    assert [p.split for p in s.select(split="test")] == ["test"]
    assert len(s.select(epoch=0)) == 2
    assert [p.split for p in s.select(epoch="last", split=["train", "test"])] == ["train", "test"]
    p = s.select(split="test")[0]
    full = s.read(p, ["label", "pred", "fe"])
    for chunk in (1, 3, 100):
        for cls in ([0], [1, 2]):
            for correct in (None, True, False):
                got = list(s.iter_rows([p], ["fe", "label"], chunk_rows=chunk, classes=cls, correct=correct))
                mask = np.isin(full["label"], cls)
                if correct is not None:
                    mask &= (full["label"] == full["pred"]) == correct
                fe = np.concatenate([r["fe"] for _, r in got]) if got else np.zeros((0, full["fe"].shape[1]))
                np.testing.assert_array_equal(fe, full["fe"][mask])


def test_selection_errors_name_what_exists(recorded):
    s = Store(recorded)
    with pytest.raises(SelectionError, match=r"split 'tset' is not in store .*did you mean 'test'.*holds: test, train"):
        s.select(split="tset")
    with pytest.raises(SelectionError, match=r"epoch 7 is not in store .*epochs: 0"):
        s.select(epoch=7)
    with pytest.raises(SelectionError, match=r"column 'fee' is not in pass 0000"):
        s.read(s.passes[0], ["fee"])


def test_live_reading_while_a_writer_appends(store_path, tiny_model):
    tiny_model.eval()
    rec = fragility.Recorder(tiny_model, store_path, flush_interval=0)
    rec.start_pass("test")
    tiny_model(torch.randn(5, 3, 32, 32))
    rec.record(torch.zeros(5, dtype=torch.long))
    rec.flush()
    live = Store(store_path)
    assert [(p.rows, p.complete) for p in live.passes] == [(5, False)]
    tiny_model(torch.randn(3, 3, 32, 32))
    rec.record(torch.ones(3, dtype=torch.long))
    rec.flush()
    live.refresh()
    assert [(p.rows, p.complete) for p in live.passes] == [(8, False)]
    np.testing.assert_array_equal(live.read(live.passes[0], ["label"])["label"], [0] * 5 + [1] * 3)
    rec.close()
    live.refresh()
    assert [(p.rows, p.complete) for p in live.passes] == [(8, True)]


def test_second_writer_is_refused(store_path, tiny_model):
    rec = fragility.Recorder(tiny_model, store_path)
    other = timm.create_model("test_resnet", pretrained=False, num_classes=4)
    # the same process: not "another process (pid <our own pid>)"
    with pytest.raises(StoreError, match=r"is already being written by another Recorder in this process; close\(\) it first"):
        fragility.Recorder(other, store_path, overwrite=True)
    code = (
        "import sys, timm, fragility\n"
        "m = timm.create_model('test_resnet', pretrained=False, num_classes=4)\n"
        "try:\n"
        f"    fragility.Recorder(m, {str(store_path)!r}, overwrite=True)\n"
        "except fragility.StoreError as e:\n"
        "    print(e); sys.exit(3)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 3, out.stderr
    assert f"is being written by another process (pid {os.getpid()})" in out.stdout
    rec.close()
    with pytest.raises(StoreError, match="already exists; pass overwrite=True"):
        fragility.Recorder(other, store_path)
    fragility.Recorder(other, store_path, overwrite=True).close()


def test_lock_is_sound_when_a_writer_opens_it_during_anothers_close(store_path, tiny_model):
    """A opens the lock file, B closes (releases) meanwhile, A locks it: a third writer must still be refused."""
    import fcntl

    from fragility.store import _writer

    os.makedirs(store_path)
    handle_b = _writer._acquire_writer_lock(str(store_path))  # B holds the store
    fd_a = open(os.path.join(store_path, ".writer.lock"), "a+")  # A opens the lock file ...
    handle_b[0].close()  # ... B closes ...
    _writer._HELD.pop(handle_b[1])
    fcntl.flock(fd_a.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # ... A locks what it opened
    fd_a.seek(0)
    fd_a.truncate()
    fd_a.write("4242")
    fd_a.flush()
    code = (
        "import sys, fragility.store._writer as w\n"
        "try:\n"
        f"    w._acquire_writer_lock({str(store_path)!r})\n"
        "except Exception as e:\n"
        "    print(e); sys.exit(3)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 3 and "another process (pid 4242)" in out.stdout, out.stdout + out.stderr
    fd_a.close()


def test_missing_and_not_a_store(tmp_path):
    with pytest.raises(StoreError, match=r"nope.fragility does not exist"):
        Store(tmp_path / "nope.fragility")
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    with pytest.raises(StoreError, match=r"notes.txt is a file, not a fragility store"):
        Store(txt)
    with pytest.raises(StoreError, match=r"is a directory without store.h5, so not a fragility store"):
        Store(tmp_path)


def test_foreign_hdf5(tmp_path):
    path = tmp_path / "foreign.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(StoreError, match=r"foreign.h5 is an HDF5 file, not a fragility store"):
        Store(path)
    (tmp_path / "d").mkdir()
    with h5py.File(tmp_path / "d" / "store.h5", "w") as f:
        f.attrs["something"] = 1
    with pytest.raises(StoreError, match=r"is an HDF5 file but not a fragility store root"):
        Store(tmp_path / "d")


def test_root_not_hdf5(recorded):
    (recorded / "store.h5").write_text("garbage")
    with pytest.raises(StoreError, match=r"store root .*store.h5 is not an HDF5 file"):
        Store(recorded)


def test_newer_schema_version(recorded):
    with h5py.File(recorded / "store.h5", "r+") as f:
        f.attrs["schema_version"] = 99
    with pytest.raises(StoreVersionError, match=r"schema version 99, newer than the 2 .*upgrade fragility"):
        Store(recorded)


def test_truncated_pass_file_is_quarantined(recorded):
    before = [p.name for p in Store(recorded).passes]
    path = recorded / "passes" / "0001.h5"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    s = Store(recorded)
    assert [d.name for d in s.damaged] == ["0001"]
    assert re.search(r"pass file .*0001.h5 is corrupt.*`fragility repair` salvages", s.damaged[0].reason)
    assert [p.name for p in s.passes] == [n for n in before if n != "0001"]
    with pytest.raises(StoreError, match=r"pass 0001 of .* is damaged: pass file"):
        s.pass_info("0001")


def test_corrupted_superblock(recorded):
    path = recorded / "store.h5"
    data = bytearray(path.read_bytes())
    data[20:44] = b"\xff" * 24  # clobber the superblock's addresses (checksum fails)
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"store root .* is corrupt"):
        Store(recorded)


def test_corrupted_data_chunk_reports_on_read(store_path, tiny_model):
    tiny_model.eval()
    with fragility.Recorder(tiny_model, store_path, compression="gzip", dtype="float32") as rec:
        rec.evaluate([(torch.randn(64, 3, 32, 32), torch.zeros(64, dtype=torch.long))])
    pass_file = store_path / "passes" / "0000.h5"
    with h5py.File(pass_file, "r") as f:
        offset = f["fe"].id.get_chunk_info(0).byte_offset
    data = bytearray(pass_file.read_bytes())
    data[offset : offset + 64] = b"\x00" * 64
    pass_file.write_bytes(bytes(data))
    s = Store(store_path)
    with pytest.raises(StoreError, match=r"is corrupt: reading 0000/fe rows 0:64 failed"):
        s.read(s.passes[0], ["fe"])


def test_disk_full_keeps_what_was_flushed(store_path, tiny_model, monkeypatch):
    tiny_model.eval()
    rec = fragility.Recorder(tiny_model, store_path, flush_interval=0)
    rec.start_pass("test")
    tiny_model(torch.randn(4, 3, 32, 32))
    rec.record(torch.zeros(4, dtype=torch.long))
    rec.flush()
    real = StoreWriter._on_rows

    def full(self, *args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(StoreWriter, "_on_rows", full)
    tiny_model(torch.randn(4, 3, 32, 32))
    rec.record(torch.zeros(4, dtype=torch.long))
    with pytest.raises(StoreError, match=r"No space left on device; the 4 rows flushed before it are kept"):
        rec.flush()
    monkeypatch.setattr(StoreWriter, "_on_rows", real)
    with pytest.raises(StoreError, match="No space left"):
        rec.close()
    s = Store(store_path)
    assert s.passes[0].rows == 4 and not s.passes[0].complete


def test_buffered_rows_are_committed_without_new_batches(store_path, tiny_model):
    import time

    tiny_model.eval()
    rec = fragility.Recorder(tiny_model, store_path, flush_interval=0.2, chunk_rows=4096)
    rec.start_pass("test")
    tiny_model(torch.randn(5, 3, 32, 32))
    rec.record(torch.zeros(5, dtype=torch.long))
    deadline = time.monotonic() + 120  # a bound for a hang, not a timing: the loop ends at the commit
    while rec.flushed_rows.get("0000", 0) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert rec.flushed_rows["0000"] == 5  # committed by the writer's timer, no flush() and no new rows
    assert Store(store_path).passes[0].rows == 5
    rec.close()


def test_resume_continues_a_store_of_the_same_model(store_path, tiny_model):
    with fragility.Recorder(tiny_model, store_path) as rec:
        rec.evaluate([(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]))], split="test", epoch=0)
    with fragility.Recorder(tiny_model, store_path, resume=True) as rec:
        rec.evaluate([(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]))], split="test", epoch=1)
    s = Store(store_path)
    assert [(p.name, p.epoch, p.rows) for p in s.passes] == [("0000", 0, 4), ("0001", 1, 4)]
    other = timm.create_model("test_resnet", pretrained=False, num_classes=5)
    with pytest.raises(StoreError, match=r"cannot resume store .*: its num_classes is 4 but this recorder's is 5"):
        fragility.Recorder(other, store_path, resume=True)
    fragility.Recorder(other, store_path, overwrite=True).close()  # the lock was released by the refusal


@pytest.mark.parametrize("rows, chunk_rows, sized, bound", [
    (128, 1024, False, 1.5),   # a short training pass: rewritten when it ends (8x its payload before)
    (128, 1024, True, 1.5),    # an eval sweep of known length: sized from the start
    (1500, 1024, False, 1.05),  # two chunks for 1,500 rows: 1.37x before
    (1000, 1024, False, 1.05),  # 2.4 % padding: left as it is
])
def test_finished_passes_cost_about_their_payload(tmp_path, rows, chunk_rows, sized, bound):
    rng = np.random.default_rng(rows)
    torch.manual_seed(0)
    d = 512  # the targets are for realistic widths: at D=64 an HDF5 file's fixed ~25 KB of headers alone is 5 % of 1,000 rows
    model = torch.nn.Sequential(torch.nn.Linear(d, d), torch.nn.ReLU(), torch.nn.Linear(d, 5)).eval()
    x, y = torch.from_numpy(rng.normal(size=(rows, d)).astype(np.float32)), torch.from_numpy(rng.integers(0, 5, rows))
    path = tmp_path / "s.fragility"
    with fragility.Recorder(model, path, classifier=model[2], chunk_rows=chunk_rows) as rec, torch.no_grad():
        if sized:
            rec.evaluate(torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=50), split="test")
        else:
            with rec.capture("train", 0, mode="eval"):
                for s in range(0, rows, 50):
                    model(x[s : s + 50])
                    rec.record(y[s : s + 50], index=torch.arange(s, s + 50)[: len(y[s : s + 50])])
    with Store(path) as st:
        (p,) = st.passes
        got = st.read(p, list(p.columns))
        assert p.complete and p.rows == rows and st.verify() == []
        fe = torch.relu(model[0](x)).detach().numpy().astype(np.float16)
        np.testing.assert_array_equal(got["fe"], fe)  # the copy holds the values as written
        np.testing.assert_array_equal(got["label"], y.numpy())
        payload = sum(v.nbytes for v in got.values())
    size = os.path.getsize(os.path.join(path, "passes", f"{p.name}.h5"))
    assert size <= bound * payload, f"{size / payload:.3f}x its payload"
    with h5py.File(os.path.join(path, "passes", f"{p.name}.h5"), "r") as f:
        chunk = f["fe"].chunks[0]
        assert chunk * -(-rows // chunk) <= 1.05 * rows or (chunk, rows) == (1024, 1000)
    assert not [n for n in os.listdir(os.path.join(path, "passes")) if n.endswith(".tmp")]
