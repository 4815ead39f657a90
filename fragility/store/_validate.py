"""The one validation layer between a store on disk and everything that reads it.

A store is untrusted input: people share them. Before any value of a file reaches a reader, this module
checks it against docs/format.md ("What a valid store is"):

* only regular files inside the store directory are opened (no symlink, FIFO or device);
* every HDF5 link is a hard link inside the file, every dataset is plain compact, contiguous or chunked
  data in the file itself (no external storage, no virtual dataset) with built-in filters only (a filter
  plugin would be code loaded from outside), numeric, and backed by storage that really holds its rows;
* attributes are scalars of the documented types, bounded in size;
* declared sizes agree with each other and with sane limits (classes, feature dimension, committed rows
  against every column's real extent).

Every failure is a :class:`~fragility.errors.StoreError` with one line naming the file and the element.
"""

from __future__ import annotations

import json
import math
import os
import stat
from typing import Any

import h5py
import numpy as np

from ..errors import StoreError
from ._format import (
    CHECKSUMS_COLUMNS,
    FIXED_COLUMNS,
    FLOAT_COLUMNS,
    PASS_TYPE,
    STATUS_FIELDS,
    STORAGE_DTYPES,
)

#: sane limits on declared sizes (far above any real model, far below what would exhaust memory)
MAX_CLASSES = 1 << 20
MAX_FEATURE_DIM = 1 << 20
MAX_TEXT = 1 << 20  # characters of one string attribute
MAX_NAME = 4096  # characters of one class name
#: the advice on a damaged pass file (never "delete it": it may hold acknowledged rows)
FIX = "; `fragility repair` salvages its checksummed rows (keeping the file aside)"
_FILTERS = {h5py.h5z.FILTER_DEFLATE, h5py.h5z.FILTER_SHUFFLE, h5py.h5z.FILTER_FLETCHER32, 32000}  # 32000: lzf
_LAYOUTS = {h5py.h5d.COMPACT, h5py.h5d.CONTIGUOUS, h5py.h5d.CHUNKED}


def regular_file(path: str, what: str) -> None:
    """``path`` is a regular file (not a symlink, FIFO, device or directory), or a one-line error."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise StoreError(f"{what} {path} cannot be read ({exc.strerror}); re-record it or restore a copy") from None
    if stat.S_ISLNK(st.st_mode):
        raise StoreError(f"{what} {path} is a symbolic link; a store never points outside its own files — copy the real file in")
    if not stat.S_ISREG(st.st_mode):
        raise StoreError(f"{what} {path} is not a regular file; re-record it or restore a copy")


def real_directory(path: str, what: str) -> None:
    """``path`` is a directory and not a symlink (inside a store), or a one-line error."""
    if os.path.islink(path):
        raise StoreError(f"{what} {path} is a symbolic link; a store never points outside its own files — copy the real folder in")
    if not os.path.isdir(path):
        raise StoreError(f"{what} {path} is missing or not a folder; re-record the store or restore a copy")


def check_objects(f: h5py.File, what: str) -> None:
    """Every link, dataset and attribute of an open file is of the kinds a store may hold."""
    name0 = f.filename

    def fail(msg: str) -> None:
        raise StoreError(f"{what} {name0}: {msg}; a fragility store holds only plain data inside its own files — re-record it or restore a copy")

    _check_attrs(f, "/", fail)
    found: list[tuple[str, Any]] = []

    def visit(name: str, link: Any) -> None:
        found.append((name, link))

    f.visititems_links(visit)
    for name, link in found:
        if isinstance(link, h5py.ExternalLink):
            fail(f"/{name} is an external link to {link.filename}:{link.path}")
        if isinstance(link, h5py.SoftLink):
            fail(f"/{name} is a soft link to {link.path}")
        obj = f.get(name)
        if isinstance(obj, h5py.Dataset):
            _check_dataset(obj, name, fail)
        elif not isinstance(obj, h5py.Group):
            fail(f"/{name} is a {type(obj).__name__}, not a group or dataset")
        _check_attrs(obj, f"/{name}", fail)


def _check_dataset(ds: h5py.Dataset, name: str, fail) -> None:
    dcpl = ds.id.get_create_plist()
    layout = dcpl.get_layout()
    if layout not in _LAYOUTS:
        fail(f"/{name} is a virtual dataset (its data lives in other files)")
    if dcpl.get_external_count():
        fail(f"/{name} uses external storage (its data lives in other files)")
    for i in range(dcpl.get_nfilters()):
        code = dcpl.get_filter(i)[0]
        if code not in _FILTERS:
            fail(f"/{name} uses HDF5 filter {code}, not one of gzip, lzf, shuffle, fletcher32 (a filter plugin would load code)")
    if ds.dtype.kind not in "iuf" or ds.dtype.names is not None or ds.dtype.subdtype is not None:
        fail(f"/{name} has dtype {ds.dtype}, not a plain number type")
    if len(ds.shape) > 2:
        fail(f"/{name} has {len(ds.shape)} dimensions")


def _check_attrs(obj: Any, where: str, fail) -> None:
    for key in obj.attrs:
        aid = h5py.h5a.open(obj.id, key.encode())
        if aid.shape not in ((), None):
            fail(f"attribute {key!r} of {where} has shape {aid.shape}, not a single value")
        dt = aid.dtype
        if dt.kind not in "iufbSUO" or dt.names is not None:
            fail(f"attribute {key!r} of {where} has dtype {dt}")
        if dt.kind == "O" and h5py.check_string_dtype(dt) is None:
            fail(f"attribute {key!r} of {where} is a reference or variable-length non-string")


def dataset_rows(ds: h5py.Dataset) -> int:
    """Rows of a dataset that its storage really holds (for chunked data: rows covered by written chunks)."""
    n = int(ds.shape[0]) if ds.shape else 0
    layout = ds.id.get_create_plist().get_layout()
    if layout == h5py.h5d.CHUNKED and n:
        per_chunk = int(ds.chunks[0])
        written = int(ds.id.get_num_chunks())
        chunks_per_row_block = max(1, math.prod(math.ceil(s / c) for s, c in zip(ds.shape[1:], ds.chunks[1:])))
        return min(n, (written // chunks_per_row_block) * per_chunk) if written else 0
    if layout == h5py.h5d.CONTIGUOUS and n:
        row_bytes = ds.dtype.itemsize * math.prod(ds.shape[1:])
        return min(n, int(ds.id.get_storage_size()) // max(1, row_bytes))
    return n


# ---------------------------------------------------------------------------------------- the root


def _scalar(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        value = value.item()
    return value


def _text(meta: dict, key: str, where: str, required: bool = True) -> str | None:
    if key not in meta:
        if required:
            raise StoreError(f"{where} lacks the attribute {key!r} that docs/format.md requires; re-record the store or restore a copy")
        return None
    v = meta[key]
    if not isinstance(v, str) or len(v) > MAX_TEXT:
        raise StoreError(f"{where}: attribute {key!r} must be a string, got {type(v).__name__}; re-record the store or restore a copy")
    return v


def _integer(meta: dict, key: str, where: str, lo: int, hi: int, required: bool = True) -> int | None:
    if key not in meta:
        if required:
            raise StoreError(f"{where} lacks the attribute {key!r} that docs/format.md requires; re-record the store or restore a copy")
        return None
    v = meta[key]
    if isinstance(v, bool) or not isinstance(v, int):
        raise StoreError(f"{where}: attribute {key!r} must be an integer, got {v!r:.60}; re-record the store or restore a copy")
    if not lo <= v <= hi:
        raise StoreError(f"{where}: attribute {key!r} = {v} is outside [{lo}, {hi}]; re-record the store or restore a copy")
    return v


def _json_list(meta: dict, key: str, where: str, required: bool = True) -> list | None:
    raw = _text(meta, key, where, required)
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        raise StoreError(f"{where}: attribute {key!r} is not the JSON list docs/format.md specifies; re-record the store or restore a copy") from None
    if not isinstance(value, list):
        raise StoreError(f"{where}: attribute {key!r} is not a JSON list; re-record the store or restore a copy")
    return value


def read_attrs(obj: Any) -> dict[str, Any]:
    """The attributes of an (already checked) HDF5 object as plain Python values."""
    return {key: _scalar(obj.attrs[key]) for key in obj.attrs}


def validate_root(meta: dict[str, Any], where: str, schema: int) -> dict[str, Any]:
    """Check the root attributes (docs/format.md, "Root attributes"); return them with JSON decoded."""
    for key in ("encoding-version", "fragility_version", "created", "model_name", "head"):
        _text(meta, key, where)
    dtype = _text(meta, "storage_dtype", where)
    if dtype not in STORAGE_DTYPES:
        raise StoreError(f"{where}: storage_dtype {dtype!r:.40} is not one of {', '.join(STORAGE_DTYPES)}; re-record the store")
    c = _integer(meta, "num_classes", where, 1, MAX_CLASSES)
    _integer(meta, "rank", where, 0, 1 << 30)
    _integer(meta, "feature_dim", where, 1, MAX_FEATURE_DIM, required=False)
    for key in ("architecture_fingerprint", "initial_weights_fingerprint"):
        _text(meta, key, where, required=False)
    if "head_shared_input" in meta and not isinstance(meta["head_shared_input"], (bool, int)):
        raise StoreError(f"{where}: attribute 'head_shared_input' must be a boolean; re-record the store or restore a copy")
    out = dict(meta)
    names = _json_list(meta, "class_names", where)
    if len(names) != c or not all(isinstance(n, str) and len(n) <= MAX_NAME for n in names):
        raise StoreError(
            f"{where}: class_names holds {len(names)} entries but num_classes is {c} (one string of at most {MAX_NAME} "
            f"characters per class is required); re-record the store or restore a copy"
        )
    out["class_names"] = names
    plugins = _json_list(meta, "plugins", where)
    if not all(isinstance(p, str) for p in plugins):
        raise StoreError(f"{where}: plugins must be a JSON list of strings; re-record the store or restore a copy")
    out["plugins"] = plugins
    counts = _json_list(meta, "class_counts", where, required=False)
    if counts is not None:
        if len(counts) != c or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts):
            raise StoreError(f"{where}: class_counts must list {c} non-negative integers; re-record the store or restore a copy")
        out["class_counts"] = counts
    out["schema_version"] = schema
    return out


# ---------------------------------------------------------------------------------------- a pass


def validate_pass(f: h5py.File, where: str, root: dict[str, Any]) -> tuple[dict[str, Any], dict[str, int], tuple[str, ...]]:
    """Check one (already object-checked) pass file; return its attributes, status and column names."""
    a = read_attrs(f)
    if a.get("encoding-type") != PASS_TYPE:
        raise StoreError(f"pass file {where} is not a fragility pass (encoding-type {a.get('encoding-type')!r:.40}){FIX}")
    split = _text(a, "split", f"pass file {where}")
    if not split or len(split) > MAX_NAME:
        raise StoreError(f"pass file {where}: split must be a non-empty name of at most {MAX_NAME} characters{FIX}")
    _integer(a, "epoch", f"pass file {where}", -(1 << 62), 1 << 62)
    _integer(a, "rank", f"pass file {where}", 0, 1 << 30)
    _text(a, "started", f"pass file {where}")
    if a.get("mode") not in ("train", "eval"):
        raise StoreError(f"pass file {where}: mode {a.get('mode')!r:.40} is not 'train' or 'eval'{FIX}")
    ds = f.get("status")
    if not isinstance(ds, h5py.Dataset) or ds.shape != (len(STATUS_FIELDS),) or ds.dtype.kind not in "iu":
        raise StoreError(f"pass file {where}: status must be {len(STATUS_FIELDS)} integers {list(STATUS_FIELDS)}{FIX}")
    if f.swmr_mode:
        ds.refresh()
    status = dict(zip(STATUS_FIELDS, (int(v) for v in ds[...])))
    committed = status["committed"]
    if committed < 0 or status["complete"] not in (0, 1) or not 0 <= status["nonfinite_rows"] <= max(committed, 0) or status["finished_unix_ms"] < 0:
        raise StoreError(f"pass file {where}: status {list(status.values())} is inconsistent{FIX}")
    c, d = int(root["num_classes"]), root.get("feature_dim")
    columns = tuple(col for col in (*FLOAT_COLUMNS, *FIXED_COLUMNS) if col in f)
    for col in columns:
        obj = f[col]
        if not isinstance(obj, h5py.Dataset):
            raise StoreError(f"pass file {where}: {col} is not a dataset{FIX}")
        if f.swmr_mode:
            obj.refresh()
        if col in FLOAT_COLUMNS:
            width = c if col == "logits" else d
            ok = obj.dtype.kind == "f" and obj.dtype.itemsize in (2, 4) and obj.ndim == 2 and (width is None or obj.shape[1] == width)
            want = f"(N, {'C' if col == 'logits' else 'D'}={width}) float16/float32"
        else:
            ok = obj.ndim == 1 and obj.dtype.kind == np.dtype(FIXED_COLUMNS[col]).kind
            want = f"(N,) {np.dtype(FIXED_COLUMNS[col])}"
        if not ok:
            raise StoreError(f"pass file {where}: {col} has shape {obj.shape} and dtype {obj.dtype}, not {want}{FIX}")
        held = dataset_rows(obj)
        if held < committed:
            raise StoreError(
                f"pass file {where}: status says {committed} rows are committed but {col} holds {held}; the file is truncated "
                f"or forged{FIX}"
            )
    if committed:
        missing = [col for col in ("fe", "ce_pred", "logits", "label", "pred") if col not in columns]
        if missing:
            raise StoreError(f"pass file {where} has {committed} committed rows but no {', '.join(missing)} column{FIX}")
        if d is None:
            raise StoreError(f"store root lacks feature_dim although pass file {where} holds rows; re-record the store or restore a copy")
    if "classifier" in f:
        g = f["classifier"]
        w, b = g.get("weight") if isinstance(g, h5py.Group) else None, g.get("bias") if isinstance(g, h5py.Group) else None
        if not (isinstance(w, h5py.Dataset) and isinstance(b, h5py.Dataset) and w.dtype.kind == "f" and b.dtype.kind == "f"
                and w.shape == (c, d if d is not None else (w.shape[1] if w.ndim == 2 else -1)) and b.shape == (c,)
                and dataset_rows(w) == c and dataset_rows(b) == c):
            raise StoreError(f"pass file {where}: classifier must hold weight (C={c}, D={d}) and bias (C,) floats{FIX}")
    if "checksums" in f:
        obj = f["checksums"]
        if not (isinstance(obj, h5py.Dataset) and obj.ndim == 2 and obj.shape[1] == len(CHECKSUMS_COLUMNS) and obj.dtype.kind in "iu"):
            raise StoreError(f"pass file {where}: checksums must be (M, {len(CHECKSUMS_COLUMNS)}) integers{FIX}")
        if f.swmr_mode:
            obj.refresh()
    return a, status, columns
