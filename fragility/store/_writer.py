"""The store writer: one background thread owns the files; producers feed it a bounded queue.

A store is a directory: ``store.h5`` (root metadata) and ``passes/NNNN.h5``, one HDF5 file per pass.

Crash safety by design (measured, see docs/format.md). HDF5's SWMR mode orders metadata writes so that a
file stays readable after its writer dies, but only for appends to existing datasets and writes of their
values — creating groups or writing attributes under SWMR is not covered, and a plain HDF5 file killed
while open for writing does not open at all. So:

* a pass file is built completely (attributes, every dataset at 0 rows, ``status``) under a temporary
  name, switched to SWMR mode, and only then renamed into place;
* afterwards only SWMR-safe operations touch it: extending and writing columns, and writing the int64
  ``status`` dataset ``[committed, complete, nonfinite_rows, finished_unix_ms]``;
* the writer advances ``committed`` only after flushing every column: rows below it are *acknowledged*
  (:attr:`StoreWriter.flushed_rows`) and survive a SIGKILL; ``complete`` is set last;
* ``store.h5`` is only ever replaced atomically (write a temporary file, then ``os.replace``).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import queue
import re
import shutil
import threading
import time
import zlib
from typing import Any

import h5py
import numpy as np

from ..errors import RecorderError, StoreError
from ._hdf5 import close_safely, create
from ._format import (
    CHECKSUMS_COLUMNS,
    CHECKSUMS_TYPE,
    CLASSIFIER_TYPE,
    COLUMN_TYPE,
    FIXED_COLUMNS,
    LOCK_FILE,
    PASS_TYPE,
    PASSES_DIR,
    ROOT_FILE,
    SCHEMA_VERSION,
    STATUS_TYPE,
    STORAGE_DTYPES,
    STORE_TYPE,
    block_order,
    encode,
)

_STOP = object()


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def _attr(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool, np.generic)) else json.dumps(value)


def _copy32(value: Any) -> np.ndarray:
    """A float32 numpy copy of an array or tensor (never a view of memory the caller may change)."""
    if hasattr(value, "detach"):
        value = value.detach().to("cpu", copy=False).float().numpy()
    return np.array(value, dtype="<f4", copy=True)


#: store directories this process writes, by (device, inode): a second Recorder here gets a clear error
_HELD: dict[tuple[int, int], str] = {}


def _acquire_writer_lock(directory: str):
    """One writer per store: an exclusive ``flock`` on ``<store>/.writer.lock`` (the OS drops it on a crash).

    The lock file is never unlinked: a writer that opened it while another was closing then locks the same
    inode as everybody else, so two writers can never each hold "the" lock.
    """
    import fcntl

    st = os.stat(directory)
    key = (st.st_dev, st.st_ino)
    if key in _HELD:
        raise StoreError(
            f"store {directory} is already being written by another Recorder in this process; close() it first "
            f"(one writer per store) or choose another path"
        )
    handle = open(os.path.join(directory, LOCK_FILE), "a+")  # noqa: SIM115 - held for the writer's lifetime
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        owner = handle.read(32).strip() or "?"
        handle.close()
        raise StoreError(
            f"store {directory} is being written by another process (pid {owner}); one writer per store — "
            f"use one store per rank, or wait for the other writer to close"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    _HELD[key] = directory
    return handle, key


def _reason(exc: BaseException) -> str:
    """The first line of an error, with the operating system's reason that HDF5 buries further in."""
    text = str(exc)
    first = (text.strip().splitlines() or [type(exc).__name__])[0]
    found = re.search(r"error message = '([^']+)'", text)
    reason = found.group(1) if found else None
    if reason is None:
        errno_ = re.search(r"errno = (\d+)", text)
        reason = os.strerror(int(errno_.group(1))) if errno_ and int(errno_.group(1)) else None
    if reason and reason not in first:
        first = f"{first.split(', time =')[0].rstrip(' (,')}: {reason}"
    return first


#: a finished pass whose allocated chunks exceed its rows by more than this factor is compacted
COMPACT_SLACK = 1.05

#: free space kept beyond a block's own chunks before writing it: HDF5's metadata for the block (chunk
#: index, checksums chunk, status; measured at most 6 KiB a block), a new pass file's skeleton (~40 KiB)
#: and closing the files. Below it the writer stops cleanly instead of letting a write fail.
FREE_SPACE_RESERVE = 256 * 1024


def free_bytes(path: str) -> int:
    """Bytes an unprivileged writer may still use on the filesystem holding ``path``."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class DiskFullError(StoreError):
    """The store's filesystem has too little free space for the next block (checked before writing it)."""


def _check_space(path: str, need: int, what: str) -> None:
    free = free_bytes(path)
    if free < need + FREE_SPACE_RESERVE:
        raise DiskFullError(
            f"the disk holding {path} is full: {free // 1024} KiB free, but writing {what} needs {need // 1024} KiB plus a "
            f"{FREE_SPACE_RESERVE // 1024} KiB reserve; nothing was written past the last flush — free space, then "
            f"record on with resume=True"
        )


def _copy_tree(src: h5py.Group, dst: h5py.Group, chunks: dict[str, tuple[int, ...]]) -> None:
    """Copy every attribute, group and dataset of ``src`` into ``dst``; datasets named in ``chunks`` get
    those chunks (and stay extendable, like the writer's), the others are copied as they are."""
    for key, value in src.attrs.items():
        dst.attrs[key] = value
    for key, obj in src.items():
        if isinstance(obj, h5py.Group):
            _copy_tree(obj, dst.create_group(key), {})
            continue
        if key in chunks and obj.chunks is not None:
            out = dst.create_dataset(key, shape=obj.shape, maxshape=obj.maxshape, chunks=chunks[key], dtype=obj.dtype,
                                     compression=obj.compression, compression_opts=obj.compression_opts)
            if obj.shape[0]:
                out[...] = obj[...]
        else:
            out = dst.create_dataset(key, data=obj[()], dtype=obj.dtype)
        for k, v in obj.attrs.items():
            out.attrs[k] = v


class _Pass:
    def __init__(self, name: str, attrs: dict[str, Any]) -> None:
        self.name = name
        self.attrs = attrs
        self.file: h5py.File | None = None
        self.status: h5py.Dataset | None = None
        self.columns: dict[str, h5py.Dataset] = {}
        self.checksums: h5py.Dataset | None = None
        self.rows = 0
        self.nonfinite = 0
        self.pending: list[dict[str, np.ndarray]] = []
        self.pending_rows = 0
        self.weight: np.ndarray | None = None
        self.bias: np.ndarray | None = None
        self.chunk_rows = 0  # set by the writer: its chunk_rows, or the pass's known length when smaller


class StoreWriter:
    """Creates a store directory and appends rows to it from a background thread.

    Args:
        path: the store directory to create.
        metadata: root attributes (model name, class names, …).
        dtype: ``"float16"`` or ``"float32"`` for the float columns.
        compression: ``None``, ``"gzip"`` or ``"lzf"``.
        chunk_rows: rows per HDF5 chunk (and per write: batches are buffered to whole chunks).
        flush_interval: seconds between commits (flush + ``committed``); ``0`` commits every batch.
        queue_size: batches that may wait for the writer (back-pressure beyond that).
        overwrite: replace an existing store.
        resume: continue an existing store of the same model and classes: its passes are kept and new
            passes are numbered after them (e.g. training resumed from a checkpoint).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        metadata: dict[str, Any],
        *,
        dtype: str = "float16",
        compression: str | None = None,
        chunk_rows: int = 1024,
        flush_interval: float = 1.0,
        queue_size: int = 16,
        overwrite: bool = False,
        resume: bool = False,
    ) -> None:
        self.path = os.fspath(path)
        if dtype not in STORAGE_DTYPES:
            raise RecorderError(f"dtype={dtype!r} is not a storage dtype; use one of {', '.join(STORAGE_DTYPES)}")
        if compression not in (None, "gzip", "lzf"):
            raise RecorderError(f"compression={compression!r} is not supported; use None, 'gzip' or 'lzf'")
        if chunk_rows < 1:
            raise RecorderError(f"chunk_rows={chunk_rows} must be a positive number of rows")
        self.dtype = np.dtype(dtype)
        self.compression = compression
        self.chunk_rows = int(chunk_rows)
        self.flush_interval = float(flush_interval)
        existing = self._prepare_directory(overwrite, resume)
        self._root = {
            "encoding-type": STORE_TYPE,
            "encoding-version": "1.0",
            "schema_version": SCHEMA_VERSION,
            "created": _now(),
            "storage_dtype": dtype,
            **metadata,
        }
        #: the number of the first pass this writer creates (after a resumed store's passes)
        self.first_pass = 0
        if existing is not None:
            self._resume(existing, dtype)
        try:
            self._write_root()
        except OSError as exc:
            self._release_lock()
            raise StoreError(f"cannot create store {self.path}: {_reason(exc)}") from None
        self._passes: dict[str, _Pass] = {}
        self._order: list[str] = []
        self.flushed_rows: dict[str, int] = {}
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, int(queue_size)))
        self._error: BaseException | None = None
        self._last_commit = time.monotonic()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="fragility-writer", daemon=True)
        self._thread.start()

    @property
    def root_attrs(self) -> dict[str, Any]:
        """The store's root attributes as this writer will write them."""
        return dict(self._root)

    def _resume(self, store: Any, dtype: str) -> None:
        """Continue ``store`` (already validated by the reader): same model, classes and storage dtype."""
        old = store.metadata
        for key in ("model_name", "num_classes", "class_names", "storage_dtype", "head"):
            if old.get(key) != self._root.get(key):
                self._release_lock()
                raise StoreError(
                    f"cannot resume store {self.path}: its {key} is {old.get(key)!r:.80} but this recorder's is "
                    f"{self._root.get(key)!r:.80}; resume with the same model and options, or choose a new path"
                )
        if old["schema_version"] != SCHEMA_VERSION:
            self._release_lock()
            raise StoreError(f"cannot resume store {self.path}: it has schema {old['schema_version']}; record into a new path")
        keep = {k: old[k] for k in ("created", "feature_dim", "head_shared_input", "class_counts", "architecture_fingerprint",
                                    "initial_weights_fingerprint") if k in old}  # the initialisation, not the resumed weights
        self._root.update(keep)
        # damaged passes keep their numbers too: a new pass never replaces a file that may hold rows
        self.first_pass = max((int(p.name) + 1 for p in [*store.passes, *store.damaged] if p.name.isdigit()), default=0)
        store.close()

    def _prepare_directory(self, overwrite: bool, resume: bool = False) -> Any:
        """Create (or empty) the store directory and take the writer lock; a store to resume is returned."""
        path = self.path
        if os.path.isfile(path):
            raise StoreError(f"{path} is a file; a store is a directory — choose a new path such as {path}.fragility")
        if os.path.isdir(path) and os.listdir(path):
            is_store = os.path.exists(os.path.join(path, ROOT_FILE))
            if not is_store:
                raise StoreError(f"{path} is a non-empty directory that is not a fragility store; refusing to write into it")
            self._lock = _acquire_writer_lock(path)
            if resume:
                from ._reader import Store

                try:
                    return Store(path)  # through the validation layer, like every reader
                except StoreError:
                    self._release_lock()
                    raise
            if not overwrite:
                self._release_lock()
                raise StoreError(f"store {path} already exists; pass overwrite=True (replace it), resume=True (continue it) or choose another path")
            os.remove(os.path.join(path, ROOT_FILE))
            shutil.rmtree(os.path.join(path, PASSES_DIR), ignore_errors=True)
        else:
            try:
                os.makedirs(path, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create store {path}: {exc.strerror}") from None
            self._lock = _acquire_writer_lock(path)
        os.makedirs(os.path.join(path, PASSES_DIR), exist_ok=True)
        return None

    def _write_root(self) -> None:
        """Replace ``store.h5`` atomically: a crash leaves the old or the new file, never half of one."""
        final = os.path.join(self.path, ROOT_FILE)
        tmp = final + ".tmp"
        with create(tmp) as f:
            for key, value in self._root.items():
                f.attrs[key] = _attr(value)
        os.replace(tmp, final)

    # ---------------------------------------------------------------- producer side (any thread)

    def _put(self, msg: tuple) -> None:
        self.raise_if_failed()
        if self._closed:
            raise RecorderError(f"store {self.path} is closed; open a new Recorder to record more")
        self._queue.put(msg)

    def raise_if_failed(self) -> None:
        if self._error is not None:
            kept = sum(self.flushed_rows.values())
            raise StoreError(
                f"writing store {self.path} failed: {_reason(self._error)}; the {kept} rows flushed before it are kept"
            )

    def begin_pass(self, name: str, attrs: dict[str, Any], rows: int | None = None) -> None:
        """Start a pass; returns once its placeholder file (complete=0) is on disk.

        ``rows``: the pass's length when known (an eval sweep over a sized loader): its chunks split that
        many rows evenly (at most ``chunk_rows`` each), so nothing needs compacting when it ends.
        """
        self._put(("begin", name, attrs, rows))
        self.flush()

    def append(self, name: str, columns: dict[str, Any], event: Any = None) -> None:
        """Queue rows (numpy arrays or CPU tensors, possibly pending a CUDA ``event``).

        An optional boolean column ``nonfinite`` flags rows whose ``fe``/``logits`` are not finite; it
        is counted, not stored. Without it the writer computes the flags itself.
        """
        self._put(("rows", name, columns, event))

    def write_classifier(self, name: str, weight: Any, bias: Any) -> None:
        """Queue the pass's classifier snapshot (copied now: later in-place changes never reach the file)."""
        self._put(("classifier", name, _copy32(weight), _copy32(bias)))

    def set_pass_attrs(self, name: str, attrs: dict[str, Any]) -> None:
        """Change attributes of a pass that has no rows on disk yet (they are fixed once its file holds rows)."""
        self._put(("attrs", name, dict(attrs)))

    def end_pass(self, name: str, weight: Any = None, bias: Any = None) -> None:
        """End a pass, with the classifier snapshot of its end (copied now)."""
        self._put(("end", name, None if weight is None else _copy32(weight), None if bias is None else _copy32(bias)))

    def abort_pass(self, name: str) -> None:
        """Commit what a pass recorded and close it *incomplete* (the loop died with an exception)."""
        self._put(("abort", name))

    def set_root_attrs(self, attrs: dict[str, Any]) -> None:
        self._put(("root", attrs))

    def flush(self) -> dict[str, int]:
        """Block until every queued row is committed; return the acknowledged rows per pass."""
        done = threading.Event()
        self._put(("flush", done))
        while not done.wait(0.1):
            if not self._thread.is_alive():
                break
        self.raise_if_failed()
        return dict(self.flushed_rows)

    def close(self) -> None:
        if self._closed:
            return
        if self._thread.is_alive():
            self._queue.put((_STOP,))
            self._thread.join()
        self._closed = True
        self._close_files()
        self._release_lock()
        self.raise_if_failed()

    def _release_lock(self) -> None:
        lock = getattr(self, "_lock", None)
        if lock is not None:
            handle, key = lock
            _HELD.pop(key, None)
            handle.close()  # closing the descriptor releases the flock; the file stays (see _acquire_writer_lock)
            self._lock = None

    @property
    def nonfinite_rows(self) -> int:
        return sum(p.nonfinite for p in self._passes.values())

    # ---------------------------------------------------------------- writer thread

    def _run(self) -> None:
        while True:
            try:
                # wake up at least every flush_interval: buffered rows are committed even when no more come
                msg = self._queue.get(timeout=max(self.flush_interval, 0.01))
            except queue.Empty:
                if self._error is None and time.monotonic() - self._last_commit >= self.flush_interval:
                    self._guard(self._commit)
                continue
            kind = msg[0]
            if kind is _STOP:
                if self._error is None:
                    self._guard(self._commit)
                return
            if kind == "flush":
                if self._error is None:
                    self._guard(self._commit)
                msg[1].set()
                continue
            if self._error is not None:
                continue  # drain: keep producers unblocked after a failure
            self._guard(getattr(self, f"_on_{kind}"), *msg[1:])
            if kind == "rows" and time.monotonic() - self._last_commit >= self.flush_interval:
                self._guard(self._commit)

    def _guard(self, fn, *args) -> None:
        try:
            fn(*args)
        except BaseException as exc:  # noqa: BLE001 - reported to the producer by raise_if_failed
            self._error = exc
            self._close_files()  # at once: a file a failed write left open must not wait for exit (a crash)

    def _close_files(self) -> None:
        """Close every open pass file: rows up to each one's last commit stay acknowledged, the pass incomplete."""
        for p in self._passes.values():
            if p.file is not None:
                try:
                    close_safely(p.file)
                except Exception:  # noqa: BLE001 - the disk may be gone; raise_if_failed says why
                    pass
                p.file, p.status, p.checksums, p.columns = None, None, None, {}

    def _on_root(self, attrs: dict[str, Any]) -> None:
        self._root.update(attrs)
        self._write_root()

    def _on_begin(self, name: str, attrs: dict[str, Any], rows: int | None = None) -> None:
        p = self._passes[name] = _Pass(name, {**attrs, "started": _now()})
        p.chunk_rows = self.chunk_rows
        if rows is not None and rows > 0:  # a known length: chunks that split it evenly, nothing to compact later
            p.chunk_rows = -(-int(rows) // -(-int(rows) // self.chunk_rows))
        self._order.append(name)
        self.flushed_rows[name] = 0
        _check_space(self.path, 0, f"a new pass file ({name})")
        # a closed placeholder (no columns, complete=0) makes a pass killed before its first rows visible
        self._build_pass_file(p, {}, keep_open=False)

    def _on_attrs(self, name: str, attrs: dict[str, Any]) -> None:
        p = self._passes[name]
        if p.file is not None:
            raise RecorderError(f"pass {name} already holds rows; its attributes are fixed")
        p.attrs.update(attrs)
        self._build_pass_file(p, {}, keep_open=False)  # the placeholder says it too, should the writer die now

    def _on_classifier(self, name: str, weight: np.ndarray, bias: np.ndarray) -> None:
        p = self._passes[name]
        p.weight, p.bias = weight, bias
        if p.file is not None:
            self._write_classifier(p)

    def _on_rows(self, name: str, columns: dict[str, Any], event: Any) -> None:
        if event is not None:
            event.synchronize()
        arrays = {k: (v.numpy() if hasattr(v, "numpy") else np.asarray(v)) for k, v in columns.items()}
        p = self._passes[name]
        flags = arrays.pop("nonfinite", None)
        if flags is None:  # producers may pass per-row flags computed where the data lives (cheaper)
            flags = ~(np.isfinite(arrays["fe"]).all(axis=1) & np.isfinite(arrays["logits"]).all(axis=1))
        p.nonfinite += int(np.count_nonzero(flags))
        p.pending.append(arrays)
        p.pending_rows += len(arrays["pred"])
        if p.pending_rows >= p.chunk_rows:
            self._write_pending(p)

    def _on_end(self, name: str, weight: np.ndarray | None, bias: np.ndarray | None) -> None:
        p = self._passes[name]
        if weight is not None and bias is not None:
            p.weight, p.bias = weight, bias
        self._write_pending(p)
        finished = int(time.time() * 1000)
        if p.file is None:  # no rows: replace the placeholder by a finished one
            self._build_pass_file(p, {}, keep_open=False, status=np.array([0, 1, p.nonfinite, finished], dtype="<i8"))
            return
        self._write_classifier(p)
        self._commit_pass(p)
        p.status[...] = np.array([p.rows, 1, p.nonfinite, finished], dtype="<i8")
        p.status.flush()
        f, p.file = p.file, None
        failed = close_safely(f)
        if failed is not None:
            raise failed
        self._compact(p)

    def _compact(self, p: _Pass) -> None:
        """Rewrite a finished pass whose chunks hold more than 5 % padding (HDF5 allocates whole chunks: a
        128-row pass in 1,024-row chunks took 8× its payload) with chunks that split its rows evenly.

        A finished pass is immutable, so the copy — same objects, attributes, values and checksums — replaces
        it by an atomic rename, like every pass file: a kill leaves the old file or the new one.
        """
        per = p.chunk_rows
        blocks = -(-p.rows // per)
        if blocks * per <= COMPACT_SLACK * p.rows:
            return
        chunk = -(-p.rows // blocks)
        final = self._pass_path(p.name)
        if free_bytes(self.path) < os.path.getsize(final) + FREE_SPACE_RESERVE:
            return  # no room for the copy: the pass stays as it is, padded but whole
        tmp = os.path.join(os.path.dirname(final), f".{p.name}.h5.tmp")
        with h5py.File(final, "r", locking=False) as src, create(tmp) as dst:
            _copy_tree(src, dst, {key: (chunk, *src[key].shape[1:]) for key in p.columns}
                       | {"checksums": (max(1, src["checksums"].shape[0]), len(CHECKSUMS_COLUMNS))})
        os.replace(tmp, final)

    def _on_abort(self, name: str) -> None:
        p = self._passes[name]
        self._commit_pass(p)
        if p.file is not None:
            f, p.file = p.file, None
            failed = close_safely(f)
            if failed is not None:
                raise failed

    # ---------------------------------------------------------------- pass files

    def _pass_path(self, name: str) -> str:
        return os.path.join(self.path, PASSES_DIR, f"{name}.h5")

    def _build_pass_file(
        self, p: _Pass, arrays: dict[str, np.ndarray], *, keep_open: bool = True, status: np.ndarray | None = None
    ) -> h5py.File | None:
        """Build a whole pass file under a temporary name, enter SWMR mode, then rename it into place.

        Nothing that SWMR does not cover (creating objects, writing attributes) ever happens to a file
        that is already in place; a placeholder is replaced the same way.
        """
        final = self._pass_path(p.name)
        tmp = os.path.join(os.path.dirname(final), f".{p.name}.h5.tmp")
        f = h5py.File(tmp, "w", libver="latest", locking=False)
        try:
            self._fill_pass_file(f, p, arrays, status)
            if keep_open:
                f.swmr_mode = True
                p.status = f["status"]
        except BaseException:
            close_safely(f)
            _remove(tmp)
            raise
        if not keep_open:
            failed = close_safely(f)
            f = None
            if failed is not None:
                _remove(tmp)
                raise failed
        os.replace(tmp, final)
        return f

    def _fill_pass_file(self, f: h5py.File, p: _Pass, arrays: dict[str, np.ndarray], status: np.ndarray | None) -> None:
        encode(f, PASS_TYPE)
        for key, value in p.attrs.items():
            f.attrs[key] = _attr(value)
        p.columns = {}
        for key, arr in arrays.items():
            if key in FIXED_COLUMNS:
                dtype, shape = np.dtype(FIXED_COLUMNS[key]), ()
            else:
                dtype, shape = self.dtype, arr.shape[1:]
            ds = f.create_dataset(
                key, shape=(0, *shape), maxshape=(None, *shape), chunks=(p.chunk_rows, *shape),
                dtype=dtype, compression=self.compression,
            )
            encode(ds, COLUMN_TYPE)
            p.columns[key] = ds
        if p.weight is not None and p.bias is not None:
            g = f.create_group("classifier")
            encode(g, CLASSIFIER_TYPE)
            for key, value in (("weight", p.weight), ("bias", p.bias)):
                encode(g.create_dataset(key, data=np.asarray(value, dtype="<f4")), COLUMN_TYPE)
        if arrays:
            ds = f.create_dataset(
                "checksums", shape=(0, len(CHECKSUMS_COLUMNS)), maxshape=(None, len(CHECKSUMS_COLUMNS)),
                chunks=(256, len(CHECKSUMS_COLUMNS)), dtype="<i8",
            )
            encode(ds, CHECKSUMS_TYPE)
            p.checksums = ds
        status_ds = f.create_dataset("status", data=np.zeros(4, dtype="<i8") if status is None else status)
        encode(status_ds, STATUS_TYPE)
        f.flush()

    def _write_classifier(self, p: _Pass) -> None:
        if p.file is None or p.weight is None or p.bias is None or "classifier" not in p.file:
            return
        p.file["classifier/weight"][...] = p.weight
        p.file["classifier/bias"][...] = p.bias

    def _write_pending(self, p: _Pass) -> None:
        """Write buffered batches as one block: fewer, chunk-aligned HDF5 calls than one per batch."""
        if not p.pending:
            return
        if len(p.pending) == 1:
            arrays = p.pending[0]
        else:
            arrays = {k: np.concatenate([b[k] for b in p.pending]) for k in p.pending[0]}
        p.pending, p.pending_rows = [], 0
        n = len(arrays["pred"])
        _check_space(self.path, self._block_bytes(p, arrays, p.rows, p.rows + n), f"the next {n} rows of pass {p.name}")
        if p.file is None:
            p.file = self._build_pass_file(p, arrays)
        if set(arrays) != set(p.columns):
            raise RecorderError(f"columns changed within pass {p.name}: {sorted(arrays)} vs {sorted(p.columns)}")
        start, stop = p.rows, p.rows + n
        crc = 0
        for key in block_order(p.columns):
            ds = p.columns[key]
            block = np.ascontiguousarray(arrays[key], dtype=ds.dtype.newbyteorder("<"))
            crc = zlib.crc32(block, crc)
            ds.resize(stop, axis=0)
            ds.write_direct(block, dest_sel=np.s_[start:stop])
        m = p.checksums.shape[0]
        p.checksums.resize(m + 1, axis=0)
        p.checksums[m] = (start, stop, crc)
        p.rows = stop

    def _block_bytes(self, p: _Pass, arrays: dict[str, np.ndarray], start: int, stop: int) -> int:
        """Bytes of the chunks that writing rows ``[start, stop)`` allocates (uncompressed: an upper bound)."""
        per = p.chunk_rows
        new_chunks = max(0, (stop - 1) // per - -(-start // per) + 1)
        row = sum(
            (np.dtype(FIXED_COLUMNS[k]).itemsize if k in FIXED_COLUMNS else self.dtype.itemsize * int(np.prod(a.shape[1:])))
            for k, a in arrays.items()
        )
        return new_chunks * per * row

    def _commit_pass(self, p: _Pass) -> None:
        self._write_pending(p)
        if p.file is None or self.flushed_rows[p.name] == p.rows:
            return
        for ds in (*p.columns.values(), p.checksums):
            ds.flush()
        p.status[...] = np.array([p.rows, 0, p.nonfinite, 0], dtype="<i8")
        p.status.flush()
        self.flushed_rows[p.name] = p.rows

    def _commit(self) -> None:
        for name in self._order:
            p = self._passes[name]
            if p.file is not None or p.pending:
                self._commit_pass(p)
        self._last_commit = time.monotonic()
