"""``fragility repair``: salvage the checksummed rows of damaged passes; never delete anything.

A pass needs repair when the validation layer quarantined its file (:attr:`Store.damaged`) or when
``verify`` finds blocks whose CRC-32 fails. For each, every block of rows the writer checksummed is read
again; the blocks whose checksum still holds (and that lie below the committed rows, where the status is
readable) are written, in order, into a new pass file with its attributes and classifier. The new file is
built under a temporary name, the original is linked (or copied) to ``<store>/damaged/`` and the new file
is then renamed over it: at every moment ``passes/NNNN.h5`` is the old or the new file, and the original
bytes stay on disk. A pass whose attributes (split, epoch, …) cannot be read is left in place: its rows
could not be told apart from another pass's.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import zlib
from typing import Any

import h5py
import numpy as np

from ..errors import StoreError
from ._format import (
    ALL_COLUMNS,
    CHECKSUMS_COLUMNS,
    CHECKSUMS_TYPE,
    CLASSIFIER_TYPE,
    COLUMN_TYPE,
    FIXED_COLUMNS,
    FLOAT_COLUMNS,
    PASS_TYPE,
    PASSES_DIR,
    STATUS_TYPE,
    block_order,
    encode,
)
from ._hdf5 import create, guard
from ._reader import RankedStore, Store, _first_line, _rank_dirs, open_raw
from ._validate import _check_dataset, dataset_rows, read_attrs, regular_file
from ._writer import _HELD, _acquire_writer_lock, _remove

#: where originals go (readers look only in passes/)
DAMAGED_DIR = "damaged"
_SLICE_BYTES = 16 << 20  # read at once: memory stays bounded whatever a block declares
_MAX_BLOCKS = 1 << 24


def repair(path: str | os.PathLike, progress: Any = None) -> list[dict[str, Any]]:
    """Salvage every damaged pass and every pass with corrupt blocks of the store at ``path``.

    Returns one report per pass: ``{"pass", "group", "outcome", "kept_rows", "committed", "dropped",
    "aside", "why"}`` — ``outcome`` ``"repaired"`` (a new pass file holds every block whose checksum
    holds; ``dropped`` lists the row ranges left out) or ``"left in place"`` (``why`` says why).

    Raises:
        StoreError: the store cannot be opened, or a writer holds it.
    """
    path = os.fspath(path)
    ranks = _rank_dirs(path)
    if ranks:
        return [{**r, "pass": f"r{rank}/{r['pass']}"} for rank, sub in ranks for r in repair(sub, progress)]
    Store(path).close()  # a store at all (the root validates), before taking its lock
    handle, key = _acquire_writer_lock(path)  # no writer may append while a pass is replaced
    try:
        with Store(path) as store:
            if isinstance(store, RankedStore):  # pragma: no cover - handled above
                raise StoreError(f"{path} is a multi-rank store")
            targets = {d.name: d.label for d in store.damaged}
            for problem in store.verify(progress=progress):
                if problem["problem"] == "corrupt":
                    targets.setdefault(problem["pass"], problem["group"])
            meta = store.metadata
        return [_salvage(path, name, label, meta) for name, label in sorted(targets.items())]
    finally:
        _HELD.pop(key, None)
        handle.close()


def _report(name: str, label: str, outcome: str, **kw: Any) -> dict[str, Any]:
    return {"pass": name, "group": label, "outcome": outcome, "kept_rows": 0, "committed": None, "dropped": [], "aside": None,
            "why": "", **kw}


def _salvage(store: str, name: str, label: str, meta: dict[str, Any]) -> dict[str, Any]:
    src = os.path.join(store, PASSES_DIR, f"{name}.h5")
    try:
        regular_file(src, "pass file")
        with guard(f"opening pass file {src}"):
            f = open_raw(src, "pass file")
    except StoreError as exc:
        return _report(name, label, "left in place", why=f"nothing can be read from it ({exc})")
    try:
        attrs = _attributes(f)
        if attrs is None:
            return _report(name, label, "left in place", why="its attributes (split, epoch, mode) cannot be read, so its rows "
                           "cannot be placed; the file is untouched")
        label = f"{attrs['split']}@{attrs['epoch']}"
        status = _status(f)
        committed = status[0] if status is not None else None
        columns = _columns(f, meta)
        blocks = _blocks(f)
        tmp = os.path.join(store, PASSES_DIR, f".{name}.h5.repair")
        kept, nonfinite = 0, 0
        with create(tmp) as out:
            encode(out, PASS_TYPE)
            for k, v in attrs.items():
                out.attrs[k] = v
            new = {}
            for col, ds in columns.items():
                shape = ds.shape[1:]
                dtype = np.dtype(FIXED_COLUMNS[col]) if col in FIXED_COLUMNS else ds.dtype.newbyteorder("<")
                new[col] = out.create_dataset(col, shape=(0, *shape), maxshape=(None, *shape), chunks=(1024, *shape), dtype=dtype,
                                              compression=ds.compression if ds.compression in ("gzip", "lzf") else None)
                encode(new[col], COLUMN_TYPE)
            sums = out.create_dataset("checksums", shape=(0, len(CHECKSUMS_COLUMNS)), maxshape=(None, len(CHECKSUMS_COLUMNS)),
                                      chunks=(256, len(CHECKSUMS_COLUMNS)), dtype="<i8")
            encode(sums, CHECKSUMS_TYPE)
            held = min((_held(ds, os.path.getsize(src)) for ds in columns.values()), default=0)
            kept_ranges: list[tuple[int, int]] = []
            failed: list[list[int]] = []
            last = 0
            for start, stop, crc in blocks:
                if stop <= start or start < last or (committed is not None and stop > committed):
                    continue  # empty, overlapping or out of order, or past the committed (acknowledged) rows
                last = stop
                with guard(f"salvaging rows {start}:{stop} of {src}"):
                    if stop > held or _crc(columns, start, stop) != crc:
                        failed.append([start, stop])
                        continue
                    nonfinite += _copy_block(columns, new, start, stop, kept)
                sums.resize(sums.shape[0] + 1, axis=0)
                sums[-1] = (kept, kept + stop - start, crc)
                kept += stop - start
                kept_ranges.append((start, stop))
            dropped = failed if committed is None else _gaps(kept_ranges, committed)
            weight_bias = _classifier(f, meta)
            if weight_bias is not None:
                g = out.create_group("classifier")
                encode(g, CLASSIFIER_TYPE)
                for key, value in zip(("weight", "bias"), weight_bias):
                    encode(g.create_dataset(key, data=value), COLUMN_TYPE)
            complete = status is not None and status[1] == 1 and not dropped and kept == committed
            finished = status[3] if complete else 0
            out.attrs["repaired"] = json.dumps({
                "at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds"),
                "original": f"{DAMAGED_DIR}/{name}.h5", "committed": committed, "kept_rows": kept, "dropped": dropped,
            })
            encode(out.create_dataset("status", data=np.array([kept, int(complete), nonfinite, finished], dtype="<i8")), STATUS_TYPE)
    except Exception as exc:  # noqa: BLE001 - salvage never raises past one pass: the rest is still worth saving
        _remove(os.path.join(store, PASSES_DIR, f".{name}.h5.repair"))
        return _report(name, label, "left in place", why=f"salvage failed ({_first_line(exc)}); the file is untouched")
    finally:
        f.close()
    try:
        aside = _keep_aside(store, name, src)
    except OSError as exc:
        _remove(tmp)
        return _report(name, label, "left in place", why=f"the original could not be kept aside ({exc.strerror or exc}); the file is untouched")
    os.replace(tmp, src)
    return _report(name, label, "repaired", kept_rows=kept, committed=committed, dropped=dropped, aside=aside)


def _gaps(kept: list[tuple[int, int]], committed: int) -> list[list[int]]:
    """The committed rows ``[0, committed)`` that no kept block covers, as ranges."""
    out, pos = [], 0
    for start, stop in kept:
        if start > pos:
            out.append([pos, start])
        pos = stop
    if pos < committed:
        out.append([pos, committed])
    return out


def _keep_aside(store: str, name: str, src: str) -> str:
    folder = os.path.join(store, DAMAGED_DIR)
    os.makedirs(folder, exist_ok=True)
    aside, i = os.path.join(folder, f"{name}.h5"), 1
    while os.path.lexists(aside):
        aside, i = os.path.join(folder, f"{name}.{i}.h5"), i + 1
    try:
        os.link(src, aside)  # the same bytes under a second name: atomic, no copy
    except OSError:
        shutil.copy2(src, aside)
    return os.path.relpath(aside, store)


def _attributes(f: h5py.File) -> dict[str, Any] | None:
    """The pass's attributes a new file can carry (plain scalars), or None without split/epoch/mode/rank."""
    try:
        a = read_attrs(f)
    except Exception:  # noqa: BLE001
        return None
    if not (isinstance(a.get("split"), str) and 0 < len(a["split"]) <= 4096 and isinstance(a.get("epoch"), int)
            and not isinstance(a.get("epoch"), bool) and a.get("mode") in ("train", "eval") and isinstance(a.get("rank"), int)):
        return None
    a.setdefault("started", "")
    return {k: v for k, v in a.items() if isinstance(v, (str, int, float, bool)) and k not in ("encoding-type", "encoding-version", "repaired")
            and (not isinstance(v, str) or len(v) <= 1 << 20)}


def _plain(f: h5py.File, name: str) -> h5py.Dataset | None:
    """Dataset ``name`` if it is plain data inside this file (never external storage or a link), else None."""
    try:
        link = f.get(name, getlink=True)
        if not isinstance(link, h5py.HardLink):
            return None
        ds = f[name]
        if not isinstance(ds, h5py.Dataset):
            return None

        def fail(msg: str) -> None:
            raise StoreError(msg)

        _check_dataset(ds, name, fail)
        return ds
    except Exception:  # noqa: BLE001 - unreadable or foreign: not salvageable
        return None


def _status(f: h5py.File) -> list[int] | None:
    ds = _plain(f, "status")
    try:
        if ds is None or ds.shape != (4,):
            return None
        v = [int(x) for x in ds[...]]
    except Exception:  # noqa: BLE001
        return None
    return v if v[0] >= 0 and v[1] in (0, 1) else None


def _columns(f: h5py.File, meta: dict[str, Any]) -> dict[str, h5py.Dataset]:
    """The per-row columns that are plain data of the store's shapes (a column that is not cannot verify)."""
    out = {}
    for col in ALL_COLUMNS:
        ds = _plain(f, col)
        if ds is None:
            continue
        if col in FLOAT_COLUMNS:
            width = meta["num_classes"] if col == "logits" else meta.get("feature_dim")
            if ds.ndim == 2 and ds.shape[1] == width and ds.dtype.kind == "f":
                out[col] = ds
        elif ds.ndim == 1 and ds.dtype.kind == np.dtype(FIXED_COLUMNS[col]).kind:
            out[col] = ds
    return {c: out[c] for c in block_order(out)}


def _held(ds: h5py.Dataset, file_size: int) -> int:
    """Rows of ``ds`` its storage can hold: the written chunks where its index reads, else what the file's
    size allows (gzip packs at most ~1000:1) — never a declared extent alone, which a forged file sets freely."""
    try:
        return dataset_rows(ds)
    except Exception:  # noqa: BLE001 - a damaged chunk index: bound by the file's size instead
        row = ds.dtype.itemsize * int(np.prod(ds.shape[1:]))
        return min(int(ds.shape[0]), file_size // max(1, row) * (1032 if ds.compression else 1))


def _blocks(f: h5py.File) -> list[tuple[int, int, int]]:
    ds = _plain(f, "checksums")
    try:
        if ds is None or ds.ndim != 2 or ds.shape[1] != len(CHECKSUMS_COLUMNS):
            return []
        n = min(dataset_rows(ds), _MAX_BLOCKS)
        return [tuple(int(x) for x in row) for row in ds[:n]]
    except Exception:  # noqa: BLE001
        return []


def _crc(columns: dict[str, h5py.Dataset], start: int, stop: int) -> int | None:
    """The writer's CRC-32 of rows ``[start, stop)`` (ALL_COLUMNS order, little-endian), or None if unreadable."""
    crc = 0
    try:
        for ds in columns.values():
            step = _step(ds)
            for s in range(start, stop, step):
                block = np.ascontiguousarray(ds[s: min(stop, s + step)], dtype=ds.dtype.newbyteorder("<"))
                crc = zlib.crc32(block, crc)
    except Exception:  # noqa: BLE001 - unreadable rows fail their checksum
        return None
    return crc


def _step(ds: h5py.Dataset) -> int:
    return max(1, _SLICE_BYTES // max(1, ds.dtype.itemsize * int(np.prod(ds.shape[1:]))))


def _copy_block(columns: dict[str, h5py.Dataset], new: dict[str, h5py.Dataset], start: int, stop: int, at: int) -> int:
    """Append rows ``[start, stop)`` at row ``at`` of the new columns; returns their non-finite rows."""
    nonfinite = 0
    step = min(_step(ds) for ds in columns.values())
    for s in range(start, stop, step):
        e = min(stop, s + step)
        bad = np.zeros(e - s, dtype=bool)
        for col, ds in columns.items():
            rows = ds[s:e]
            if col in ("fe", "logits"):
                bad |= ~np.isfinite(rows).all(axis=1)
            out = new[col]
            out.resize(at + e - start, axis=0)
            out[at + s - start: at + e - start] = rows
        nonfinite += int(bad.sum())
    return nonfinite


def _classifier(f: h5py.File, meta: dict[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    w, b = _plain(f, "classifier/weight"), _plain(f, "classifier/bias")
    c, d = int(meta["num_classes"]), meta.get("feature_dim")
    try:
        if w is None or b is None or w.shape != (c, d) or b.shape != (c,) or w.dtype.kind != "f" or b.dtype.kind != "f":
            return None
        return np.asarray(w[...], dtype="<f4"), np.asarray(b[...], dtype="<f4")
    except Exception:  # noqa: BLE001
        return None

