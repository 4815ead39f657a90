"""Opening a store costs the same whatever its history: pass files validated once are remembered, keyed
by their identity (inode, size, mtime, ctime, CRCs of both ends), in this process and in the user's cache
directory — never trusted from the store itself; any change to a file validates it again."""

from __future__ import annotations

import json
import os
import time

import numpy as np

import fragility
from fragility.store import _reader
from fragility.testing import make_random_store


def _count_validations(monkeypatch) -> list[str]:
    seen: list[str] = []
    real = _reader.Store._pass_info

    def counted(self, name):
        seen.append(name)
        return real(self, name)

    monkeypatch.setattr(_reader.Store, "_pass_info", counted)
    return seen


def _forget_process_cache(monkeypatch) -> None:
    monkeypatch.setattr(_reader, "_VALIDATED", {})


def test_pass_files_are_validated_once(tmp_path, monkeypatch):
    monkeypatch.setenv("FRAGILITY_CACHE_DIR", str(tmp_path / "cache"))
    path = make_random_store(tmp_path / "s.fragility", passes=[("train", e) for e in range(4)] + [("test", 3)])
    seen = _count_validations(monkeypatch)
    with fragility.Store(path) as s:
        first = [p.to_dict() for p in s.passes]
        rows = s.read(s.passes[2], ["label"])["label"]
    assert sorted(seen) == ["0000", "0001", "0002", "0003", "0004"]
    seen.clear()
    with fragility.Store(path) as s:  # this process remembers
        assert [p.to_dict() for p in s.passes] == first and not seen
        np.testing.assert_array_equal(s.read(s.passes[2], ["label"])["label"], rows)
    _forget_process_cache(monkeypatch)  # as a new process: the cache file in the user's cache directory
    with fragility.Store(path) as s:
        assert [p.to_dict() for p in s.passes] == first and not seen
    caches = os.listdir(tmp_path / "cache")
    assert len(caches) == 1 and not any(n.startswith("passes-") for n in os.listdir(path))  # nothing written into the store
    assert oct(os.stat(tmp_path / "cache").st_mode)[-3:] == "700"

    # a change anywhere in a file gives another key (ctime): it is validated again, and its damage is seen
    target = os.path.join(path, "passes", "0001.h5")
    key = _reader.file_key(target, fragility.Store(path).metadata)
    for _ in range(200):  # the kernel stamps ctime from a coarse clock: write until a tick has passed (ms)
        with open(target, "r+b") as fh:
            fh.seek(os.path.getsize(target) // 2)
            b = fh.read(1)
            fh.seek(-1, os.SEEK_CUR)
            fh.write(b)  # the same byte: content unchanged, but the file was written
        if _reader.file_key(target, fragility.Store(path).metadata) != key:
            break
        time.sleep(0.01)
    assert _reader.file_key(target, fragility.Store(path).metadata) != key
    with open(target, "r+b") as fh:
        fh.write(b"\0" * 64)  # the superblock
    seen.clear()
    with fragility.Store(path) as s:
        assert seen == ["0001"] and [d.name for d in s.damaged] == ["0001"]
        assert [p.name for p in s.passes] == ["0000", "0002", "0003", "0004"]
    seen.clear()
    with fragility.Store(path) as s:  # the damaged verdict is remembered too, with its reason
        assert not seen and [d.name for d in s.damaged] == ["0001"] and "is not an HDF5 file" in s.damaged[0].reason


def test_a_forged_cache_entry_is_never_used(tmp_path, monkeypatch):
    """The cache is the user's, but even an entry that does not match the file's key is ignored."""
    monkeypatch.setenv("FRAGILITY_CACHE_DIR", str(tmp_path / "cache"))
    path = make_random_store(tmp_path / "s.fragility", passes=[("test", 0)])
    with fragility.Store(path) as s:
        rows = s.passes[0].rows
    (cache,) = (tmp_path / "cache").iterdir()
    data = json.loads(cache.read_text())
    entry = data["entries"]["0000.h5"]
    entry["info"]["rows"] = 10**12
    entry["key"][2] += 1  # another size: not this file
    cache.write_text(json.dumps(data))
    _forget_process_cache(monkeypatch)
    seen = _count_validations(monkeypatch)
    with fragility.Store(path) as s:
        assert s.passes[0].rows == rows and seen == ["0000"]
    cache.write_text("{not json")  # a broken cache file is ignored (and rewritten)
    _forget_process_cache(monkeypatch)
    with fragility.Store(path) as s:
        assert s.passes[0].rows == rows
    monkeypatch.setenv("FRAGILITY_CACHE_DIR", "none")  # this process only
    other = make_random_store(tmp_path / "t.fragility", passes=[("test", 0)])
    fragility.Store(other).close()
    assert len(list((tmp_path / "cache").iterdir())) == 1


def test_refresh_reads_only_new_or_changed_passes(tmp_path, monkeypatch):
    import torch
    from torch import nn

    monkeypatch.setenv("FRAGILITY_CACHE_DIR", str(tmp_path / "cache"))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 3)).eval()
    rec = fragility.Recorder(model, tmp_path / "live.fragility", classifier=model[1], dtype="float32")
    seen = _count_validations(monkeypatch)
    with torch.no_grad():
        for e in range(3):
            rec.evaluate([(torch.randn(10, 8), torch.arange(10) % 3)], split="test", epoch=e)
        store = fragility.Store(tmp_path / "live.fragility")
        assert len(store.passes) == 3
        seen.clear()
        rec.evaluate([(torch.randn(10, 8), torch.arange(10) % 3)], split="test", epoch=3)
        store.refresh()
        assert seen == ["0003"] and [p.epoch for p in store.passes] == [0, 1, 2, 3]
        assert store.read(store.passes[3], ["label"])["label"].tolist() == (np.arange(10) % 3).tolist()
    rec.close()
    store.close()
