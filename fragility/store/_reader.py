"""Reading stores: lazy, chunked, selectable; safe while a writer is still appending."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
import stat
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np

from ..errors import SelectionError, StoreError, StoreVersionError, close_matches
from ._format import ALL_COLUMNS, PASSES_DIR, ROOT_FILE, SCHEMA_VERSION, STORE_TYPE, block_order
from ._hdf5 import guard, open_read, stored_end
from ._validate import FIX as _FIX, check_objects, read_attrs, real_directory, regular_file, validate_pass, validate_root

@dataclass(frozen=True)
class PassInfo:
    """One pass of a store: a training epoch or an eval sweep of a split."""

    name: str
    split: str
    epoch: int
    mode: str
    rank: int
    rows: int
    complete: bool
    started: str
    finished: str
    nonfinite_rows: int
    columns: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"{self.split}@{self.epoch}" + ("" if self.complete else " (incomplete)")

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class DamagedPass:
    """A pass file the validation layer refused: quarantined — left out of every selection, listed by
    ``inspect`` and ``verify``, salvaged by ``fragility repair``. ``split``/``epoch`` are known when the
    file's attributes could still be read."""

    name: str
    reason: str
    split: str | None = None
    epoch: int | None = None

    @property
    def label(self) -> str:
        return "?" if self.split is None else f"{self.split}@{'?' if self.epoch is None else self.epoch}"

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _damaged_problems(damaged: Sequence[DamagedPass]) -> list[dict[str, Any]]:
    """``verify``'s entries for quarantined pass files."""
    return [{"pass": d.name, "group": d.label, "start": 0, "stop": 0, "problem": "damaged", "reason": d.reason} for d in damaged]


def superseded(passes: Sequence[PassInfo]) -> dict[str, str]:
    """Incomplete passes followed by a later pass of the same split, epoch and rank — a pass killed and then
    recorded again after training resumed from a checkpoint — mapped to the pass that replaces them.
    Selections leave them out, so no row is counted twice."""
    out: dict[str, str] = {}
    last: dict[tuple[str, int, int], str] = {}  # (split, epoch, rank) -> its last pass, walking backwards
    for p in reversed(passes):
        key = (p.split, p.epoch, p.rank)
        if not p.complete and key in last:
            out[p.name] = last[key]
        last.setdefault(key, p.name)
    return out


#: bytes at each end of a pass file that its identity key checksums
_KEY_BYTES = 1 << 12
#: validated pass files of this process: path -> (identity key, PassInfo or DamagedPass)
_VALIDATED: dict[str, tuple[list[Any], PassInfo | DamagedPass]] = {}


def file_key(path: str, root: dict[str, Any]) -> list[Any] | None:
    """What identifies one state of a pass file for the validation cache: its device, inode, size, mtime and
    ctime (nanoseconds; the kernel sets ctime on every write or metadata change, and user space cannot set
    it back), CRC-32s of its first and last 4 KiB (the superblock and the metadata written last), and the
    root fields validation reads. Any change to the file gives another key, so it is validated again.
    ``None`` for anything but a regular file (never opened in a way that could block: no FIFO, no link)."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    if not getattr(os, "O_NOFOLLOW", 0) and os.path.islink(path):
        return None
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        head = os.pread(fd, _KEY_BYTES, 0)
        tail = os.pread(fd, _KEY_BYTES, max(0, st.st_size - _KEY_BYTES))
    finally:
        os.close(fd)
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, zlib.crc32(head), zlib.crc32(tail),
            root.get("num_classes"), root.get("feature_dim")]


def cache_dir() -> str | None:
    """Where validated pass files are remembered across processes: ``$FRAGILITY_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/fragility``, else ``~/.cache/fragility`` (``FRAGILITY_CACHE_DIR=none``: this process only)."""
    env = os.environ.get("FRAGILITY_CACHE_DIR")
    if env is not None:
        return None if env.lower() in ("", "none", "off") else env
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fragility")


class _PassCache:
    """The validation cache of one store directory: in this process, and in a JSON file of the user's own cache
    directory (never inside the store: a store is untrusted input, its validation must not be forgeable by
    the store itself). An entry is used only while the pass file's :func:`file_key` is unchanged."""

    def __init__(self, store_dir: str) -> None:
        self.dir = os.path.realpath(store_dir)
        base = cache_dir()
        self.file = None
        self.entries: dict[str, dict[str, Any]] = {}
        if base is not None:
            self.file = os.path.join(base, "passes-" + hashlib.sha256(self.dir.encode()).hexdigest()[:32] + ".json")
            try:
                with open(self.file) as fh:
                    data = json.load(fh)
                if isinstance(data, dict) and data.get("version") == 1 and data.get("store") == self.dir:
                    self.entries = {k: v for k, v in data.get("entries", {}).items() if isinstance(v, dict)}
            except (OSError, ValueError):
                pass
        self.dirty = False

    def get(self, path: str, key: list[Any]) -> PassInfo | DamagedPass | None:
        hit = _VALIDATED.get(path)
        if hit is not None and hit[0] == key:
            return hit[1]
        e = self.entries.get(os.path.basename(path))
        if e is None or e.get("key") != key:
            return None
        try:
            if "damaged" in e:
                value: PassInfo | DamagedPass = DamagedPass(**e["damaged"])
            else:
                value = PassInfo(**{**e["info"], "columns": tuple(e["info"]["columns"])})
        except (TypeError, KeyError):
            return None
        _VALIDATED[path] = (key, value)
        return value

    def put(self, path: str, key: list[Any], value: PassInfo | DamagedPass) -> None:
        _VALIDATED[path] = (key, value)
        kind = "damaged" if isinstance(value, DamagedPass) else "info"
        self.entries[os.path.basename(path)] = {"key": key, kind: dataclasses.asdict(value)}
        self.dirty = True

    def save(self, names: Sequence[str]) -> None:
        """Write the entries of the files that still exist (atomically; a cache that cannot be written is skipped)."""
        if not self.dirty or self.file is None:
            return
        keep = {n: e for n, e in self.entries.items() if n[:-3] in names}
        try:
            os.makedirs(os.path.dirname(self.file), mode=0o700, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(self.file), prefix=".passes-")
            with os.fdopen(fd, "w") as fh:
                json.dump({"version": 1, "store": self.dir, "entries": keep}, fh)
            os.replace(tmp, self.file)
        except OSError:
            pass
        self.dirty = False


def _open_h5(path: str, what: str, checked: bool = False) -> h5py.File:
    """Open one HDF5 file of a store read-only (live or killed writers included), after the validation
    layer checked that it is a regular file and before anything else of it is read: every object is checked
    (``checked``: not again — the caller saw this very state of the file pass the checks, :func:`file_key`).
    Every open is bounded (see :mod:`._hdf5`): a damaged file fails in milliseconds, it never hangs.
    """
    regular_file(path, what)
    if not _is_hdf5(path):
        raise StoreError(f"{what} {path} is not an HDF5 file, so not part of a fragility store{_fix(what)}")
    f = open_raw(path, what)
    try:
        if not checked:
            check_objects(f, what)
    except BaseException as exc:
        f.close()
        if isinstance(exc, StoreError):
            raise
        raise StoreError(f"{what} {path} is corrupt ({_first_line(exc)}){_fix(what)}") from None
    return f


def open_raw(path: str, what: str) -> h5py.File:
    """Open an HDF5 file read-only as a reader may (the objects unchecked): a live or killed writer's file in
    SWMR read mode, a file its writer failed to extend read up to its recorded end."""
    f, swmr, size, msg = None, False, None, ""
    for _ in range(3):
        try:
            f = open_read(path, swmr=swmr, size=size)
            break
        except Exception as exc:  # noqa: BLE001 - h5py raises OSError, ValueError, KeyError, RuntimeError … for bad files
            msg = _first_line(exc)
        if not swmr and ("already open for write" in msg or "SWMR" in msg):
            swmr = True  # the writer is live or was killed (or failed): SWMR read mode accepts such a file
        elif size is None and stored_end(msg) is not None:
            size = stored_end(msg)  # its writer failed to extend it (disk full): read up to the recorded end
        else:
            break
    if f is None:
        raise StoreError(f"{what} {path} is corrupt or truncated and cannot be opened ({msg}){_fix(what)}")
    return f


def _fix(what: str) -> str:
    return _FIX if what == "pass file" else "; re-record it or restore a copy"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines() or [type(exc).__name__])[0][:300]


def _label_of(f: h5py.File | None) -> tuple[str | None, int | None]:
    """A damaged pass file's split and epoch, where its attributes can still be read."""
    split = epoch = None
    if f is None:
        return split, epoch
    try:
        a = read_attrs(f)
    except Exception:  # noqa: BLE001 - unreadable: unknown
        return split, epoch
    if isinstance(a.get("split"), str) and 0 < len(a["split"]) <= 4096:
        split = a["split"]
    if isinstance(a.get("epoch"), int) and not isinstance(a.get("epoch"), bool):
        epoch = a["epoch"]
    return split, epoch


def _rank_dirs(path: str) -> list[tuple[int, str]]:
    """``rank<N>/`` sub-stores of a distributed run, sorted by rank (empty for a plain store)."""
    if not os.path.isdir(path) or os.path.exists(os.path.join(path, ROOT_FILE)):
        return []
    out = []
    for name in os.listdir(path):
        if name.startswith("rank") and name[4:].isdigit() and os.path.exists(os.path.join(path, name, ROOT_FILE)):
            real_directory(os.path.join(path, name), "rank store")
            out.append((int(name[4:]), os.path.join(path, name)))
    return sorted(out)


def _resolve_dir(path: str) -> str:
    if not os.path.exists(path):
        raise StoreError(f"store {path} does not exist; check the path (record one with fragility.Recorder)")
    if os.path.isfile(path):
        if os.path.basename(path) == ROOT_FILE:
            return os.path.dirname(path) or "."
        kind = "an HDF5 file" if _is_hdf5(path) else "a file"
        raise StoreError(
            f"{path} is {kind}, not a fragility store; a store is the directory written by fragility.Recorder "
            f"(it holds {ROOT_FILE} and {PASSES_DIR}/)"
        )
    if not os.path.lexists(os.path.join(path, ROOT_FILE)):
        raise StoreError(f"{path} is a directory without {ROOT_FILE}, so not a fragility store; pass the directory written by fragility.Recorder")
    return path


def _is_hdf5(path: str) -> bool:
    try:
        return bool(h5py.is_hdf5(path))
    except OSError:
        return False


def row_filter(label: np.ndarray, pred: np.ndarray, classes: Sequence[int] | None, correct: bool | None) -> np.ndarray:
    """Rows whose true class is in ``classes`` and whose correctness is ``correct`` (``None``: any)."""
    mask = np.ones(len(label), dtype=bool)
    if classes is not None:
        mask &= np.isin(label, np.asarray(list(classes)))
    if correct is not None:
        mask &= (label == pred) == bool(correct)
    return mask


class Store:
    """A read-only view of a store file.

    Args:
        path: the store directory written by :class:`fragility.Recorder`.

    Raises:
        StoreError: missing, not HDF5, foreign, corrupt or truncated file.
        StoreVersionError: written by a newer schema version.

    Example:
        >>> store = Store("run.fragility")                       # doctest: +SKIP
        >>> [p.label for p in store.select(split="test")]  # doctest: +SKIP
        ['test@0', 'test@1']
    """

    def __new__(cls, path: str | os.PathLike) -> Store:
        if cls is Store and _rank_dirs(os.fspath(path)):
            return super().__new__(RankedStore)
        return super().__new__(cls)

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = _resolve_dir(os.fspath(path))
        self._files: dict[str, h5py.File] = {}
        self._keys: dict[str, list[Any]] = {}
        self._load()

    def _load(self) -> None:
        root_path = os.path.join(self.path, ROOT_FILE)
        with guard(f"opening {root_path}"):
            self._load_root(root_path)
        self.passes = self._read_passes()

    def _load_root(self, root_path: str) -> None:
        f = _open_h5(root_path, "store root")
        try:
            meta = read_attrs(f)
            kind = meta.get("encoding-type")
            if kind != STORE_TYPE:
                raise StoreError(
                    f"{root_path} is an HDF5 file but not a fragility store root (encoding-type={kind!r:.60}); "
                    f"pass a directory written by fragility.Recorder"
                )
            version = meta.get("schema_version")
            if isinstance(version, bool) or not isinstance(version, int) or version < 1:
                raise StoreError(f"store root {root_path}: schema_version {version!r:.40} is not a schema version; re-record it or restore a copy")
            if version > SCHEMA_VERSION:
                raise StoreVersionError(
                    f"store {self.path} has schema version {version}, newer than the {SCHEMA_VERSION} this fragility "
                    f"reads; upgrade fragility (pip install -U fragility)"
                )
            meta = validate_root(meta, f"store root {root_path}", version)
        except StoreError:
            raise
        except Exception as exc:  # noqa: BLE001 - corrupt metadata surfaces as any h5py/numpy error
            raise StoreError(f"store root {root_path} is corrupt ({_first_line(exc)}); re-record it or restore a copy") from None
        finally:
            f.close()
        self.metadata = meta

    def _pass_file(self, name: str) -> h5py.File:
        f = self._files.get(name)
        if f is None:
            path = os.path.join(self.path, PASSES_DIR, f"{name}.h5")
            f = self._files[name] = _open_h5(path, "pass file", checked=self._validated(path, name))
        return f

    def _validated(self, path: str, name: str) -> bool:
        """Whether the pass file is, now, the very file (:func:`file_key`) that passed every check when this store
        opened it (here or in an earlier process): then opening it to read rows need not check its objects again."""
        key = self._keys.get(name)
        hit = _VALIDATED.get(path)
        if key is None or hit is None or hit[0] != key or not isinstance(hit[1], PassInfo):
            return False
        try:
            return file_key(path, self.metadata) == key
        except OSError:
            return False

    def _read_passes(self) -> list[PassInfo]:
        """Validate every pass file; one that fails is quarantined in :attr:`damaged`, never fatal to the rest.
        A file validated before and unchanged since (:func:`file_key`) is not opened again: opening a store
        costs a ``stat`` and two small reads per pass, whatever its history."""
        out = []
        self.damaged: list[DamagedPass] = []
        folder = os.path.join(self.path, PASSES_DIR)
        real_directory(folder, "passes folder of store")
        names = sorted(n[:-3] for n in os.listdir(folder) if n.endswith(".h5") and not n.startswith("."))
        cache = _PassCache(self.path)
        keys = {}
        for name in names:
            path = os.path.join(folder, f"{name}.h5")
            try:
                key = file_key(path, self.metadata)  # before validating: a change after it gives another key
            except OSError:
                key = None
            known = cache.get(path, key) if key is not None else None
            if known is None:
                with guard(f"opening pass file {path}"):
                    known = self._validate_pass(name)
                if key is not None:
                    cache.put(path, key, known)
            elif self._keys.get(name) != key:  # changed since this Store opened it: read it afresh
                self._close_file(name)
            if key is not None:
                keys[name] = key
            (self.damaged if isinstance(known, DamagedPass) else out).append(known)
        for name in set(self._files) - {p.name for p in out}:
            self._close_file(name)
        self._keys = keys
        cache.save(names)
        return out

    def _validate_pass(self, name: str) -> PassInfo | DamagedPass:
        self._close_file(name)  # a file opened before may have changed
        try:
            return self._pass_info(name)
        except StoreError as exc:
            f = self._files.pop(name, None)
            split, epoch = _label_of(f)
            if f is not None:
                f.close()
            return DamagedPass(name, str(exc), split, epoch)

    def _close_file(self, name: str) -> None:
        f = self._files.pop(name, None)
        if f is not None:
            try:
                f.close()
            except Exception:  # noqa: BLE001 - closing a broken file must not hide the real error
                pass

    def _pass_info(self, name: str) -> PassInfo:
        g = self._pass_file(name)
        try:
            a, status, columns = validate_pass(g, g.filename, self.metadata)
        except StoreError:
            raise
        except Exception as exc:  # noqa: BLE001 - corrupt metadata surfaces as any h5py/numpy error
            raise StoreError(f"pass file {g.filename} is corrupt ({_first_line(exc)}){_FIX}") from None
        finished = ""
        if status["finished_unix_ms"]:
            try:
                finished = _dt.datetime.fromtimestamp(status["finished_unix_ms"] / 1000, _dt.timezone.utc).isoformat(timespec="milliseconds")
            except (OverflowError, OSError, ValueError):
                finished = "?"
        return PassInfo(
            name=name,
            split=a["split"],
            epoch=a["epoch"],
            mode=a["mode"],
            rank=a["rank"],
            rows=status["committed"],
            complete=bool(status["complete"]),
            started=a["started"],
            finished=finished,
            nonfinite_rows=status["nonfinite_rows"],
            columns=columns,
        )

    def damaged_in(self, split: str | Sequence[str] | None = None, epoch: int | str | Sequence[int] | range | None = None) -> list[DamagedPass]:
        """Damaged passes that may belong to a selection (those whose split or epoch cannot be read included)."""
        splits = None if split is None else ({split} if isinstance(split, str) else set(split))
        out = []
        for d in self.damaged:
            if d.split is not None and splits is not None and d.split not in splits:
                continue
            if d.epoch is not None and epoch is not None:
                if epoch == "last":
                    last = max((p.epoch for p in self.passes if p.split == d.split), default=None)
                    if last is not None and d.epoch < last:
                        continue
                elif d.epoch not in (epoch if isinstance(epoch, range) else {int(epoch)} if isinstance(epoch, (int, str))
                                     else {int(e) for e in epoch}):
                    continue
            out.append(d)
        return out

    # ------------------------------------------------------------------ metadata

    @property
    def class_names(self) -> list[str]:
        names = self.metadata.get("class_names")
        if names:
            return [str(n) for n in names]
        return [str(i) for i in range(self.num_classes)]

    @property
    def num_classes(self) -> int:
        return int(self.metadata.get("num_classes", 0))

    @property
    def feature_dim(self) -> int:
        return int(self.metadata.get("feature_dim", 0))

    def refresh(self) -> None:
        """Re-read the store to see rows and passes a live writer added since opening: only pass files that
        changed are opened and validated again."""
        self._load()

    def close(self) -> None:
        for f in self._files.values():
            try:
                f.close()
            except Exception:  # noqa: BLE001 - closing a broken file must not hide the real error
                pass
        self._files.clear()

    def __repr__(self) -> str:
        damaged = f", {len(self.damaged)} damaged" if getattr(self, "damaged", None) else ""
        return (f"<{type(self).__name__} {self.path!r}: {len(getattr(self, 'passes', []))} passes{damaged}, "
                f"{self.num_classes} classes, D={self.feature_dim}>")

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ selection

    @property
    def superseded(self) -> dict[str, str]:
        """Incomplete passes recorded again later (see :func:`superseded`): ``{left out: replaced by}``."""
        return superseded(self.passes)

    def select(
        self,
        *,
        split: str | Sequence[str] | None = None,
        epoch: int | str | Sequence[int] | range | None = None,
        mode: str | None = None,
        rank: int | None = None,
        complete_only: bool = False,
    ) -> list[PassInfo]:
        """Passes matching the filters, in recording order. ``epoch="last"`` picks each split's last epoch,
        ``"all"`` (or ``None``) every epoch; a ``range`` (e.g. ``range(0, 200, 20)``) the recorded epochs in it.

        Raises:
            SelectionError: a split or epoch the store does not hold (with close matches).
        """
        if epoch == "all":
            epoch = None
        if isinstance(epoch, str) and epoch != "last" and not epoch.strip().lstrip("-").isdigit():
            raise SelectionError(f"epoch {epoch!r:.40} is not an epoch number, 'last' or 'all'")
        gone = self.superseded
        passes = [p for p in self.passes if (p.rows > 0 or p.complete) and p.name not in gone]
        if complete_only:
            passes = [p for p in passes if p.complete]
        if split is not None:
            wanted = [split] if isinstance(split, str) else list(split)
            have = sorted({p.split for p in passes})
            for s in wanted:
                if s not in have:
                    raise SelectionError(
                        f"split {s!r} is not in store {self.path}{close_matches(s, have)}; it holds: {', '.join(have) or 'no passes'}"
                    )
            passes = [p for p in passes if p.split in wanted]
        if epoch is not None:
            if epoch == "last":
                last: dict[str, int] = {}
                for p in passes:
                    last[p.split] = max(last.get(p.split, p.epoch), p.epoch)
                passes = [p for p in passes if p.epoch == last[p.split]]
            elif isinstance(epoch, range):  # a range selects the recorded epochs in it (none in it: an error)
                inside = [p for p in passes if p.epoch in epoch]
                if passes and not inside:
                    have_e = sorted({p.epoch for p in passes})
                    raise SelectionError(
                        f"no recorded epoch of store {self.path} lies in {epoch.start}:{epoch.stop}:{epoch.step} for this selection; "
                        f"it holds epochs: {', '.join(map(str, have_e))}"
                    )
                passes = inside
            else:
                wanted_e = [int(epoch)] if isinstance(epoch, (int, str)) else [int(e) for e in epoch]
                have_e = sorted({p.epoch for p in passes})
                for e in wanted_e:
                    if e not in have_e:
                        raise SelectionError(
                            f"epoch {e} is not in store {self.path} for this selection; it holds epochs: "
                            f"{', '.join(map(str, have_e)) or 'none'}"
                        )
                passes = [p for p in passes if p.epoch in wanted_e]
        if mode is not None:
            passes = [p for p in passes if p.mode == mode]
        if rank is not None:
            passes = [p for p in passes if p.rank == rank]
        return passes

    def pass_info(self, name: str) -> PassInfo:
        for p in self.passes:
            if p.name == name:
                return p
        for d in self.damaged:
            if d.name == name:
                raise StoreError(f"pass {name} of {self.path} is damaged: {d.reason}")
        raise SelectionError(f"pass {name!r} is not in store {self.path}{close_matches(name, [p.name for p in self.passes])}")

    # ------------------------------------------------------------------ rows

    def classifier(self, p: PassInfo) -> tuple[np.ndarray, np.ndarray]:
        """The pass's classifier snapshot ``(weight (C, D), bias (C,))``."""
        with guard(f"reading the classifier of pass {p.name} of {self.path}"):
            return self._classifier(p)

    def _classifier(self, p: PassInfo) -> tuple[np.ndarray, np.ndarray]:
        g = self._pass_file(p.name)
        if "classifier" not in g:
            raise StoreError(f"pass {p.name} of {self.path} holds no classifier snapshot (interrupted before its first row)")
        try:
            return g["classifier/weight"][...], g["classifier/bias"][...]
        except Exception as exc:  # noqa: BLE001
            raise StoreError(f"store {self.path} is corrupt: reading pass {p.name}'s classifier failed ({_first_line(exc)})") from None

    def read(self, p: PassInfo, columns: Sequence[str], start: int = 0, stop: int | None = None) -> dict[str, np.ndarray]:
        """Read committed rows ``[start, stop)`` of the given columns of pass ``p``."""
        with guard(f"reading rows {start}:{stop} of pass {p.name} of {self.path}"):
            return self._read(p, columns, start, stop)

    def _read(self, p: PassInfo, columns: Sequence[str], start: int, stop: int | None) -> dict[str, np.ndarray]:
        stop = p.rows if stop is None else min(stop, p.rows)
        g = self._pass_file(p.name)
        out = {}
        for c in columns:
            if c not in p.columns:
                raise SelectionError(
                    f"column {c!r} is not in pass {p.name} ({p.label}) of {self.path}; it holds {', '.join(p.columns)}"
                )
            try:
                out[c] = g[c][start:stop]
            except Exception as exc:  # noqa: BLE001 - corrupt data surfaces as any h5py error
                raise StoreError(
                    f"store {self.path} is corrupt: reading {p.name}/{c} rows {start}:{stop} failed ({_first_line(exc)}); "
                    f"run `fragility verify` on it, then re-record or restore a copy"
                ) from None
            if c in ("label", "pred") and len(out[c]):
                lo, hi = int(out[c].min()), int(out[c].max())
                if lo < (-1 if c == "label" else 0) or hi >= self.num_classes:
                    bad = lo if lo < 0 else hi
                    raise StoreError(
                        f"store {self.path} is corrupt: pass {p.name} ({p.label}) holds {c} {bad} in rows {start}:{stop}, outside "
                        f"the {self.num_classes} classes; re-record it or restore a copy"
                    )
        return out

    def iter_rows(
        self,
        passes: Sequence[PassInfo],
        columns: Sequence[str],
        *,
        chunk_rows: int = 65536,
        classes: Sequence[int] | None = None,
        correct: bool | None = None,
        positions: bool = False,
        span: tuple[int, int] | None = None,
    ) -> Iterator[tuple[PassInfo, dict[str, np.ndarray]]]:
        """Yield ``(pass, rows)`` chunks; rows are filtered by true class and correctness.

        Only ``label``/``pred`` are read for rows a filter drops; chunks with no selected row skip the
        float columns entirely. With ``positions=True`` each chunk also holds ``"row"``, the rows'
        positions in their pass. ``span=(start, stop)`` restricts every pass to those rows.
        """
        if chunk_rows < 1:
            raise SelectionError(f"chunk_rows={chunk_rows} must be positive")
        need = list(dict.fromkeys(columns))
        filt = classes is not None or correct is not None
        for p in passes:
            first, last = (0, p.rows) if span is None else (max(0, span[0]), min(p.rows, span[1]))
            for start in range(first, last, chunk_rows):
                stop = min(start + chunk_rows, last)
                if not filt:
                    rows = self.read(p, need, start, stop)
                    if positions:
                        rows["row"] = np.arange(start, stop, dtype=np.int64)
                    yield p, rows
                    continue
                keys = self.read(p, ["label", "pred"], start, stop)
                mask = row_filter(keys["label"], keys["pred"], classes, correct)
                if not mask.any():
                    continue
                rest = [c for c in need if c not in keys]
                rows = self.read(p, rest, start, stop)
                rows.update({k: v for k, v in keys.items() if k in need})
                if positions:
                    rows["row"] = np.arange(start, stop, dtype=np.int64)
                yield p, {k: v[mask] for k, v in rows.items()}

    def verify(self, passes: Sequence[PassInfo] | None = None, progress: Any = None) -> list[dict[str, Any]]:
        """Recompute the writer's per-block CRC-32 checksums of the committed rows.

        Returns one entry per problem: ``{"pass", "group", "start", "stop", "problem"}`` with ``problem``
        ``"corrupt"`` (checksum mismatch or unreadable data), ``"unverified"`` (rows without checksums:
        stores written before schema 2) or, for the whole store (``passes=None``), ``"damaged"`` (a pass
        file the validation layer quarantined; ``"reason"`` says why). An empty list means every committed
        row is as written. Memory stays bounded: blocks are read in slices.
        """
        found: list[dict[str, Any]] = [] if passes is not None else _damaged_problems(self.damaged)
        for p in self.passes if passes is None else passes:
            if not p.rows:
                continue
            g = self._pass_file(p.name)
            cols = block_order(p.columns)
            try:
                blocks = g["checksums"][...] if "checksums" in g else np.zeros((0, 3), dtype=np.int64)
            except Exception:  # noqa: BLE001 - unreadable checksums: nothing of the pass can be vouched for
                found.append({"pass": p.name, "group": p.label, "start": 0, "stop": p.rows, "problem": "corrupt"})
                continue
            covered = 0
            for start, stop, crc in blocks.tolist():
                if covered == p.rows:
                    break  # checksum rows past the committed rows: a live, killed or failed writer's next block
                if stop > p.rows:
                    break  # a block beyond the committed rows (a live or killed writer): not part of the store yet
                if start != covered or stop <= start:
                    found.append({"pass": p.name, "group": p.label, "start": covered, "stop": p.rows, "problem": "corrupt"})
                    covered = p.rows
                    break
                try:
                    with guard(f"verifying rows {start}:{stop} of pass {p.name} of {self.path}"):
                        ok = self._block_crc(g, cols, start, stop) == crc
                except Exception:  # noqa: BLE001 - unreadable data is corrupt data
                    ok = False
                if not ok:
                    found.append({"pass": p.name, "group": p.label, "start": start, "stop": stop, "problem": "corrupt"})
                covered = stop
                if progress is not None:
                    progress(stop - start)
            if covered < p.rows:
                found.append({"pass": p.name, "group": p.label, "start": covered, "stop": p.rows, "problem": "unverified"})
        return found

    @staticmethod
    def _block_crc(g: h5py.File, columns: Sequence[str], start: int, stop: int, step: int = 65536) -> int:
        crc = 0
        for c in columns:
            ds = g[c]
            for s in range(start, stop, step):
                block = np.ascontiguousarray(ds[s : min(stop, s + step)], dtype=ds.dtype.newbyteorder("<"))
                crc = zlib.crc32(block, crc)
        return crc

    def datasets(self) -> list[dict[str, Any]]:
        """Every dataset with shape, dtype, chunks and compression (for ``fragility inspect``)."""
        out: list[dict[str, Any]] = []
        for p in self.passes:
            try:
                with guard(f"listing the datasets of pass {p.name} of {self.path}"):
                    out.extend(self._datasets(p))
            except StoreError:
                raise
            except Exception as exc:  # noqa: BLE001 - corrupt metadata surfaces as any h5py error
                raise StoreError(f"pass file {p.name} of {self.path} is corrupt ({_first_line(exc)}); {_FIX}") from None
        return out

    def _datasets(self, p: PassInfo) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset):
                out.append(
                    {
                        "path": f"{PASSES_DIR}/{p.name}.h5:{name}",
                        "shape": [p.rows if name in ALL_COLUMNS else n for n in obj.shape[:1]] + list(obj.shape[1:]),
                        "dtype": str(obj.dtype),
                        "chunks": list(obj.chunks) if obj.chunks else None,
                        "compression": obj.compression,
                    }
                )

        self._pass_file(p.name).visititems(visit)
        return out

    def size_bytes(self) -> int:
        """Bytes on disk of the store's files."""
        total = 0
        for folder, _, files in os.walk(self.path):
            total += sum(os.path.getsize(os.path.join(folder, n)) for n in files)
        return total


class RankedStore(Store):
    """One view of a distributed run: ``<store>/rank0``, ``<store>/rank1``, … (one writer per rank).

    Passes are named ``r<rank>/<pass>``. Rows of one split and epoch that several ranks recorded for the
    same sample id (the padding ``DistributedSampler`` adds to even out the ranks) are read once: the
    lowest rank's row is kept (:meth:`iter_rows`; :meth:`read` returns a pass's raw rows).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        self._ranks = [(rank, Store(sub)) for rank, sub in _rank_dirs(self.path)]
        self._load()

    def _load(self) -> None:
        first = self._ranks[0][1]
        for rank, st in self._ranks[1:]:
            if st.class_names != first.class_names or st.feature_dim not in (0, first.feature_dim):
                raise StoreError(
                    f"rank stores of {self.path} disagree (rank{rank}: {st.num_classes} classes, D={st.feature_dim}); "
                    f"they must come from one run"
                )
        self.metadata = {**first.metadata, "ranks": [rank for rank, _ in self._ranks]}
        self.metadata["feature_dim"] = max(st.feature_dim for _, st in self._ranks)
        self._route: dict[str, tuple[Store, PassInfo]] = {}
        self.damaged = [dataclasses.replace(d, name=f"r{rank}/{d.name}") for rank, st in self._ranks for d in st.damaged]
        self.passes = []
        for rank, st in self._ranks:
            for p in st.passes:
                q = dataclasses.replace(p, name=f"r{rank}/{p.name}")
                self._route[q.name] = (st, p)
                self.passes.append(q)
        self._keep: dict[str, np.ndarray] = {}
        self.duplicates: dict[str, int] = {}

    def refresh(self) -> None:
        for _, st in self._ranks:
            st.refresh()
        self._load()

    def close(self) -> None:
        for _, st in self._ranks:
            st.close()

    def classifier(self, p: PassInfo) -> tuple[np.ndarray, np.ndarray]:
        st, q = self._route[p.name]
        return st.classifier(q)

    def read(self, p: PassInfo, columns: Sequence[str], start: int = 0, stop: int | None = None) -> dict[str, np.ndarray]:
        st, q = self._route[p.name]
        return st.read(q, columns, start, stop)

    def verify(self, passes: Sequence[PassInfo] | None = None, progress: Any = None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [] if passes is not None else _damaged_problems(self.damaged)
        for p in self.passes if passes is None else passes:
            st, q = self._route[p.name]
            out.extend({**e, "pass": p.name} for e in st.verify([q], progress))
        return out

    def keep_mask(self, p: PassInfo) -> np.ndarray:
        """Rows of ``p`` that are not a duplicate (same sample id) of a lower rank's row of the same split/epoch."""
        if p.name not in self._keep:
            seen: set[int] = set()
            group = [q for q in self.passes if (q.split, q.epoch) == (p.split, p.epoch)]
            for q in group:  # rank order
                idx = self.read(q, ["index"])["index"] if "index" in q.columns and q.rows else np.zeros(0, dtype=np.int64)
                keep = np.ones(len(idx), dtype=bool)
                for i, v in enumerate(idx.tolist()):
                    if v >= 0:
                        keep[i] = v not in seen
                        seen.add(v)
                self._keep[q.name] = keep
                self.duplicates[f"{q.split}@{q.epoch}"] = self.duplicates.get(f"{q.split}@{q.epoch}", 0) + int((~keep).sum())
        return self._keep[p.name]

    def iter_rows(self, passes, columns, *, chunk_rows=65536, classes=None, correct=None, positions=False, span=None):
        for p in passes:
            st, q = self._route[p.name]
            keep = self.keep_mask(p)
            for _, rows in st.iter_rows([q], columns, chunk_rows=chunk_rows, classes=classes, correct=correct, positions=True, span=span):
                m = keep[rows["row"]]
                if not positions:
                    rows.pop("row")
                if not m.all():
                    rows = {k: v[m] for k, v in rows.items()}
                if len(next(iter(rows.values()))):
                    yield p, rows

    def datasets(self) -> list[dict[str, Any]]:
        out = []
        for rank, st in self._ranks:
            for d in st.datasets():
                out.append({**d, "path": f"rank{rank}/{d['path']}"})
        return out
