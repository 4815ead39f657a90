"""HDF5 access that a damaged file or a full disk cannot turn into a hang or a crash.

* **Bounded opens.** In SWMR read mode HDF5 retries a metadata block whose checksum fails up to 100 times,
  sleeping 1, 2, 4, … ns between tries (2^100 ns in all): a truncated pass file of a killed writer then
  "hangs" for ever at 0 % CPU. :func:`open_read` sets the retry count on the file-access property list
  (``H5Pset_metadata_read_attempts``, which h5py does not wrap, called on the very library h5py loaded) to
  :data:`READ_ATTEMPTS`, so a bad block costs at most 2^READ_ATTEMPTS ns of back-off (17 ms) before the
  open or read fails with "incorrect metadata checksum after all read attempts".
* **Safe closes.** After a failed write (disk full, quota, file-size limit) HDF5 keeps the file open with
  metadata it cannot write; ``close()`` fails, and HDF5's own clean-up at interpreter exit then crashes the
  process (SIGSEGV; h5py issue #914). :func:`close_safely` lets HDF5 write that metadata to ``/dev/null``
  instead (the file descriptor is redirected), so the file really closes: the file on disk stays exactly as
  the failure left it — like a writer killed at that moment, which the writer's SWMR ordering keeps readable
  with every acknowledged row — and the process exits normally.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import h5py

#: metadata read attempts in SWMR read mode (HDF5's default: 100); the back-off doubles from 1 ns per try.
#: Enough for a live writer's metadata that a read catches half-written (it is rewritten within
#: microseconds), far too few for a damaged block to stall a reader.
READ_ATTEMPTS = 24


@lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    """The HDF5 library h5py uses (the very copy it loaded: property-list ids are per library copy)."""
    candidates = []
    try:
        with open("/proc/self/maps") as fh:  # Linux: exactly what is loaded
            for line in fh:
                path = line.rsplit(" ", 1)[-1].strip()
                name = os.path.basename(path)
                if name.startswith("libhdf5") and not name.startswith("libhdf5_hl") and ".so" in name:
                    candidates.append(path)
    except OSError:
        pass
    found = ctypes.util.find_library("hdf5")
    if found:
        candidates.append(found)
    for path in dict.fromkeys(candidates):
        try:
            lib = ctypes.CDLL(path)
            fn = lib.H5Pset_metadata_read_attempts
        except (OSError, AttributeError):
            continue
        fn.argtypes = [ctypes.c_int64, ctypes.c_uint]
        fn.restype = ctypes.c_int
        return lib
    return None


def attempts_bounded() -> bool:
    """Whether SWMR reads here retry a bad metadata block at most :data:`READ_ATTEMPTS` times."""
    return _library() is not None


class _Padded(io.RawIOBase):
    """A file read as if it were ``size`` bytes long: zeros past its real end (never written, never allocated)."""

    def __init__(self, path: str, size: int) -> None:
        self._fh = open(path, "rb")  # noqa: SIM115 - closed with this object
        self._size = size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        self._pos = {0: 0, 1: self._pos, 2: self._size}[whence] + pos
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buf) -> int:
        view = memoryview(buf).cast("B")
        want = max(0, min(len(view), self._size - self._pos))
        self._fh.seek(self._pos)
        got = self._fh.readinto(view[:want]) or 0
        view[got:want] = bytes(want - got)
        self._pos += want
        return want

    def close(self) -> None:
        self._fh.close()
        super().close()


def open_read(path: str, *, swmr: bool = False, size: int | None = None) -> h5py.File:
    """Open ``path`` read-only without file locking (readers never block a writer), bounded as above.

    ``size``: read the file as if it were that long (zeros past its end) — for a file whose writer failed
    to extend it (disk full, size limit) after recording the new end in its superblock: HDF5 refuses such
    a file as truncated although every committed row lies before the real end.
    """
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5py.h5f.LIBVER_EARLIEST, h5py.h5f.LIBVER_LATEST)
    fapl.set_file_locking(False, True)
    lib = _library()
    if lib is not None and lib.H5Pset_metadata_read_attempts(fapl.id, READ_ATTEMPTS) < 0:
        raise OSError("H5Pset_metadata_read_attempts failed")
    padded = None
    if size is not None:
        padded = _Padded(path, size)
        fapl.set_fileobj_driver(h5py.h5fd.fileobj_driver, padded)
    flags = h5py.h5f.ACC_RDONLY | (h5py.h5f.ACC_SWMR_READ if swmr else 0)
    try:
        f = h5py.File(h5py.h5f.open(os.fsencode(path), flags, fapl=fapl))
    except BaseException:
        if padded is not None:
            padded.close()
        raise
    f._fragility_padded = padded  # the driver reads through it for as long as the file is open
    return f


def stored_end(message: str) -> int | None:
    """The end a superblock records, from HDF5's "truncated file" refusal, when it lies past the real end."""
    found = re.search(r"truncated file: eof = (\d+),.*stored_eof = (\d+)", message)
    if found and int(found.group(2)) > int(found.group(1)):
        return int(found.group(2))
    return None


def close_safely(f: h5py.File) -> Exception | None:
    """Close ``f``; where HDF5 cannot flush it (a failed write left metadata it cannot write), let it flush
    into ``/dev/null`` so that the file really closes and nothing crashes at exit. Returns ``None``, or the
    error of the failed flush (then what HDF5 still held was dropped: the file is as the failure left it).

    A close that fails must never be tried: HDF5 is left half-closed and the next call on it, or its
    clean-up at exit, crashes. So a flush probes first, and the close follows only once it can succeed.
    """
    if not f.id.valid:
        return None
    try:
        f.flush()
    except Exception as exc:  # noqa: BLE001 - the disk is full (or gone): redirected below
        failed = exc
    else:
        f.close()
        return None
    try:
        fd = f.id.get_vfd_handle()
    except Exception:  # noqa: BLE001 - not a driver with a descriptor: nothing can be redirected
        return failed
    null = os.open(os.devnull, os.O_RDWR)
    try:
        os.dup2(null, fd)
    finally:
        os.close(null)
    f.close()
    return failed


@contextmanager
def create(path: str) -> Iterator[h5py.File]:
    """A new HDF5 file (latest format, no locking) closed with :func:`close_safely` whatever happens; a
    flush that fails at the end raises its error, after the file is closed."""
    f = h5py.File(path, "w", libver="latest", locking=False)
    try:
        yield f
    except BaseException:
        close_safely(f)
        raise
    failed = close_safely(f)
    if failed is not None:
        raise failed


# ------------------------------------------------------------------------------------------ watchdog
#
# While HDF5's C code runs, h5py holds the GIL: no Python thread of this process can act on a deadline. A
# watchdog must therefore live outside the process (the command line's runs in a helper process, see
# fragility/_bounds.py); here the operations it bounds are only marked.

_WATCHDOG: Any = None
_DEPTH = threading.local()


def arm(watchdog: Any) -> None:
    """Report every guarded operation to ``watchdog`` (``begin(what)`` / ``end()``); ``None`` disarms."""
    global _WATCHDOG
    _WATCHDOG = watchdog


@contextmanager
def guard(what: str) -> Iterator[None]:
    """Mark one operation on a store's files that a damaged file could stall inside HDF5 (``what`` names it
    in the message should it never end): opening and validating one file, one read of rows, one block."""
    dog = _WATCHDOG
    depth = getattr(_DEPTH, "n", 0)
    if dog is None or depth:  # not armed, or inside an operation already guarded
        yield
        return
    _DEPTH.n = 1
    dog.begin(what)
    try:
        yield
    finally:
        _DEPTH.n = 0
        dog.end()
