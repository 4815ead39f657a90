"""Fuzzing the readers with mutated real stores (issue 8).

Each case copies a real store, applies one mutation (truncation, byte flips in metadata and in raw data,
attribute and dataset type/shape changes, deleted and added objects, external storage / links / virtual
datasets, huge declared shapes, hostile names, odd files) and runs every reader: ``Store`` (open, read
every column, verify), ``analyze`` with the default analyzers, and ``fragility inspect``. Each must give a
one-line ``fragility`` error or an answer — never another exception, never a hang (a per-case watchdog
ends the run), never bytes from outside the store — and the store's files must be byte-identical after.

``FRAGILITY_FUZZ_CASES`` (default 320) and ``FRAGILITY_FUZZ_SEED`` (default 0) set the run.
"""

from __future__ import annotations

import contextlib
import faulthandler
import hashlib
import io
import json
import os
import random
import shutil
from collections import Counter

import h5py
import numpy as np
import pytest

from fragility import FragilityError, Store
from fragility.analysis import analyze
from fragility.cli import main
from fragility.testing import make_random_store

CASES = int(os.environ.get("FRAGILITY_FUZZ_CASES", "320"))
SEED = int(os.environ.get("FRAGILITY_FUZZ_SEED", "0"))
SENTINEL = b"FUZZ-OUTSIDE-THE-STORE!" * 40
HOSTILE_VALUES = ["x", "", -1, 0, 2**40, -(2**62), 1.5, float("nan"), True, b"\xff\xfe", "[/]", "[bold]x", "\x1b[2J",
                  "$a$", json.dumps([1, 2]), json.dumps({"a": 1}), json.dumps(["a"] * 3), "ü" * 5000]
HOSTILE_NAMES = ["[bold red]x", "a[/]b", "\x1b]0;pwned\x07", "$\\frac{1}{0}$", "<b>x</b>", "\u202eevil", "\x01soh"]


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz-bases")
    return [
        make_random_store(d / "a.fragility", counts=(7, 4, 2), d=6, passes=(("train", 0), ("test", 0)), seed=1),
        make_random_store(d / "b.fragility", counts=(5, 3, 1), d=5, passes=(("train", 0), ("test", 0), ("train", 1)),
                          dtype="float16", compression="gzip", seed=2, unlabelled=1, nonfinite=1),
    ]


def _files(store: str) -> list[str]:
    out = []
    for folder, _, names in os.walk(store):
        out.extend(os.path.join(folder, n) for n in names)
    return sorted(out)


def _hashes(store: str) -> dict[str, str]:
    out = {}
    for path in _files(store):
        if os.path.islink(path) or not os.path.isfile(path):
            out[path] = "special"
        else:
            out[path] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return out


def _pass_files(store: str) -> list[str]:
    return sorted(os.path.join(store, "passes", n) for n in os.listdir(os.path.join(store, "passes")) if n.endswith(".h5"))


def _h5(path: str):
    return h5py.File(path, "r+", locking=False)


def _raw_ranges(path: str) -> list[tuple[int, int, str, int, int]]:
    """Byte ranges of raw chunk data holding committed rows: (start, stop, column, first row, last row)."""
    out = []
    with h5py.File(path, "r", locking=False) as f:
        if "status" not in f:
            return out
        committed = int(f["status"][0])
        for col in ("fe", "ce_pred", "logits", "label", "pred", "bias_pred"):
            if col not in f or f[col].chunks is None:
                continue
            ds = f[col]
            row_bytes = ds.dtype.itemsize * int(np.prod(ds.chunks[1:]))
            for i in range(ds.id.get_num_chunks()):
                info = ds.id.get_chunk_info(i)
                row0 = info.chunk_offset[0]
                if row0 < committed:
                    stop = min(committed, row0 + ds.chunks[0])
                    # uncompressed: only the bytes of committed rows (the chunk's tail holds no data yet)
                    size = info.size if info.filter_mask or ds.compression else (stop - row0) * row_bytes
                    out.append((info.byte_offset, info.byte_offset + size, col, row0, stop))
    return out


# ------------------------------------------------------------------------------------------ mutations


def m_truncate(rng, store, ctx):
    path = rng.choice(_pass_files(store) + [os.path.join(store, "store.h5")])
    size = os.path.getsize(path)
    cut = rng.randrange(0, size)
    with open(path, "r+b") as fh:
        fh.truncate(cut)
    return f"truncate {os.path.basename(path)} at {cut}/{size}"


def m_flip_meta(rng, store, ctx):
    path = rng.choice(_pass_files(store) + [os.path.join(store, "store.h5")])
    raw = _raw_ranges(path) if path.endswith(".h5") and "passes" in path else []
    size = os.path.getsize(path)
    data = bytearray(open(path, "rb").read())
    for _ in range(100):
        pos = rng.randrange(0, size)
        if not any(a <= pos < b for a, b, *_ in raw):
            break
    data[pos] ^= rng.randrange(1, 256)
    open(path, "wb").write(bytes(data))
    return f"flip metadata byte {pos} of {os.path.basename(path)}"


def m_flip_raw(rng, store, ctx):
    candidates = [(p, r) for p in _pass_files(store) for r in _raw_ranges(p)]
    if not candidates:
        return m_flip_meta(rng, store, ctx)
    path, (a, b, col, r0, r1) = rng.choice(candidates)
    data = bytearray(open(path, "rb").read())
    pos = rng.randrange(a, b)
    data[pos] ^= rng.randrange(1, 256)
    open(path, "wb").write(bytes(data))
    ctx["raw"] = os.path.basename(path)[:-3]
    return f"flip raw byte {pos} of {os.path.basename(path)}:{col} (rows {r0}:{r1})"


def m_attr(rng, store, ctx):
    path = rng.choice(_pass_files(store) + [os.path.join(store, "store.h5")])
    with _h5(path) as f:
        objs = [f] + [f[n] for n in ("status", "fe", "label") if n in f]
        obj = rng.choice(objs)
        keys = list(obj.attrs) or ["encoding-type"]
        key = rng.choice(keys)
        if rng.random() < 0.25:
            if key in obj.attrs:
                del obj.attrs[key]
            return f"delete attribute {key} of {obj.name} in {os.path.basename(path)}"
        value = rng.choice(HOSTILE_VALUES)
        if rng.random() < 0.15:
            value = np.arange(rng.randrange(2, 5))
        obj.attrs[key] = value
    return f"attribute {key} of {os.path.basename(path)}:{obj.name} = {value!r:.40}"


def m_dataset(rng, store, ctx):
    path = rng.choice(_pass_files(store))
    with _h5(path) as f:
        names = []
        f.visit(lambda n: names.append(n) if isinstance(f[n], h5py.Dataset) else None)
        if not names:
            f.create_dataset("fe", data=np.zeros((3, 2)))
            return "add fe to a placeholder"
        name = rng.choice(names)
        what = rng.choice(["delete", "dtype", "shape", "add", "group"])
        if what == "delete":
            del f[name]
        elif what == "dtype":
            n = f[name].shape[0] if f[name].shape else 1
            del f[name]
            f.create_dataset(name, data=np.zeros((n,), dtype=rng.choice(["i1", "f8", "S3", "u2", "c8"])))
        elif what == "shape":
            shape = tuple(rng.choice([0, 1, 3, 7, 12, 40]) for _ in range(rng.choice([0, 1, 2, 3])))
            del f[name]
            f.create_dataset(name, data=np.zeros(shape, dtype=rng.choice(["<f4", "<i8", "<f2"])))
        elif what == "add":
            f.create_dataset(f"extra{rng.randrange(99)}", data=np.arange(5))
        else:
            del f[name]
            f.create_group(name)
    return f"dataset {name} of {os.path.basename(path)}: {what}"


def m_external(rng, store, ctx):
    path = rng.choice(_pass_files(store))
    target = rng.choice([ctx["outside"], ctx["fifo"], "/etc/hostname"])
    with _h5(path) as f:
        cols = [c for c in ("fe", "label", "pred", "logits", "ce_pred", "status") if c in f] or ["fe"]
        col = rng.choice(cols)
        kind = rng.choice(["storage", "link", "soft", "vds"])
        shape = f[col].shape if col in f else (4,)
        dtype = f[col].dtype if col in f else np.dtype("<f4")
        if col in f:
            del f[col]
        if kind == "storage":
            f.create_dataset(col, shape=shape, dtype=dtype, external=[(target, 0, max(1, int(np.prod(shape)) * dtype.itemsize))])
        elif kind == "link":
            f[col] = h5py.ExternalLink(ctx["other"], "/y")
        elif kind == "soft":
            f[col] = h5py.SoftLink("/status" if col != "status" else "/label")
        else:
            lay = h5py.VirtualLayout(shape=(12,), dtype="<i8")
            lay[:] = h5py.VirtualSource(ctx["other"], "y", shape=(12,))
            f.create_virtual_dataset(col, lay)
    return f"{kind} for {col} of {os.path.basename(path)} -> {target}"


def m_huge(rng, store, ctx):
    path = rng.choice(_pass_files(store))
    with _h5(path) as f:
        what = rng.choice(["status", "committed", "extent", "classifier", "classes"])
        if what == "classes":
            with _h5(os.path.join(store, "store.h5")) as r:
                r.attrs[rng.choice(["num_classes", "feature_dim"])] = rng.choice([2**40, 2**31, 10**6])
        elif what == "status" and "status" in f:
            del f["status"]
            f.create_dataset("status", shape=(2**40,), chunks=(1024,), dtype="<i8")
        elif what == "committed" and "status" in f:
            f["status"][0] = rng.choice([2**40, 2**62, 10**9])
        elif what == "extent" and "fe" in f:
            for c in ("fe", "label", "pred"):
                f[c].resize(2**40, axis=0)
            f["status"][0] = 2**40
        elif what == "classifier" and "classifier" in f:
            del f["classifier/weight"]
            f.create_dataset("classifier/weight", shape=(3, 2**36), chunks=(1, 4096), dtype="<f4")
    return f"huge {what} in {os.path.basename(path)}"


def m_names(rng, store, ctx):
    with _h5(os.path.join(store, "store.h5")) as f:
        c = int(f.attrs["num_classes"])
        names = [rng.choice(HOSTILE_NAMES) + str(i) for i in range(c)]
        f.attrs["class_names"] = json.dumps(names)
        f.attrs["model_name"] = rng.choice(HOSTILE_NAMES)
    path = rng.choice(_pass_files(store))
    with _h5(path) as f:
        f.attrs["split"] = rng.choice(HOSTILE_NAMES)
    ctx["names"] = True
    return "hostile names"


def m_files(rng, store, ctx):
    passes = os.path.join(store, "passes")
    what = rng.choice(["delete", "junk", "symlink", "fifo", "dir", "passes-file", "root-dir"])
    victim = rng.choice(_pass_files(store))
    if what == "delete":
        os.remove(victim)
    elif what == "junk":
        with open(os.path.join(passes, "0042.h5"), "wb") as fh:
            fh.write(bytes(rng.randrange(256) for _ in range(rng.randrange(0, 3000))))
    elif what == "symlink":
        os.remove(victim)
        os.symlink(ctx["outside"], victim)
    elif what == "fifo":
        os.remove(victim)
        os.mkfifo(victim)
    elif what == "dir":
        os.remove(victim)
        os.mkdir(victim)
    elif what == "passes-file":
        shutil.rmtree(passes)
        open(passes, "w").close()
    else:
        os.remove(os.path.join(store, "store.h5"))
        os.mkdir(os.path.join(store, "store.h5"))
    return f"files: {what}"


def m_truncate_killed(rng, store, ctx):
    """A partial copy of a live run: a writer SIGKILLed inside a pass, its pass file cut short."""
    shutil.rmtree(store)
    shutil.copytree(ctx["killed"], store)
    path = os.path.join(store, "passes", "0002.h5")
    size = os.path.getsize(path)
    a, b = rng.choice([(1, 3), (1, 2), (2, 3), (3, 4), (rng.randrange(1, 99), 100)])
    os.truncate(path, size * a // b)
    return f"truncate killed pass 0002.h5 at {a}/{b} of {size}"


MUTATIONS = [m_truncate, m_truncate_killed, m_flip_meta, m_flip_raw, m_attr, m_dataset, m_external, m_huge, m_names, m_files]


def _committed(store: str, name: str) -> bytes:
    """The committed rows of every column of a pass, as bytes (or b"" when they cannot be read)."""
    try:
        with h5py.File(os.path.join(store, "passes", f"{name}.h5"), "r", locking=False) as f:
            n = int(f["status"][0])
            return b"".join(np.ascontiguousarray(f[c][:n]).tobytes() for c in sorted(f) if c not in ("status", "classifier", "checksums"))
    except Exception:  # noqa: BLE001 - unreadable: certainly not the base's values
        return b""


# ------------------------------------------------------------------------------------------ readers


def _exercise(store: str, ctx: dict) -> tuple[str, list]:
    verified: list = []
    try:
        with Store(store) as s:
            for p in s.passes:
                if p.rows:
                    rows = s.read(p, list(p.columns))
                    for v in rows.values():
                        assert SENTINEL[:16] not in np.ascontiguousarray(v).tobytes(), "read outside the store"
            verified = s.verify()
        analyze(store, k=2)
    except FragilityError as exc:
        assert "\n" not in str(exc), f"not one line: {exc!r}"
        outcome = "refused"
    else:
        outcome = "answered"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["inspect", store])
    assert code in (0, 2), (code, err.getvalue())
    if code == 2:
        assert err.getvalue().count("\n") == 1 and err.getvalue().startswith("error:"), err.getvalue()
    for text in (out.getvalue(), err.getvalue()):
        assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text, "raw control characters reached the terminal"
    return outcome, verified


@pytest.fixture(scope="module")
def killed_store(tmp_path_factory):
    from .test_crash import make_killed_store

    path = tmp_path_factory.mktemp("fuzz-killed") / "k.fragility"
    make_killed_store(path)
    return str(path)


def test_fuzzed_stores_give_one_line_or_an_answer(bases, killed_store, tmp_path):
    rng = random.Random(SEED)
    outside = tmp_path / "outside.bin"
    outside.write_bytes(SENTINEL)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["y"] = np.frombuffer(SENTINEL[:96], dtype="<i8")
    seen: Counter = Counter()
    for i in range(CASES):
        base = bases[i % len(bases)]
        case = tmp_path / f"case{i}"
        store = str(shutil.copytree(base, case / "s.fragility", symlinks=True))
        ctx = {"outside": str(outside), "fifo": str(fifo), "other": str(other), "killed": killed_store}
        mutation = MUTATIONS[i % len(MUTATIONS)] if i < len(MUTATIONS) else rng.choice(MUTATIONS)
        what = mutation(rng, store, ctx)
        before = _hashes(store)
        faulthandler.dump_traceback_later(120, exit=True)  # a hang ends the run loudly
        try:
            outcome, verified = _exercise(store, ctx)
        except Exception as exc:  # noqa: BLE001 - the point of the test
            pytest.fail(f"case {i} ({what}): {type(exc).__name__}: {exc}")
        finally:
            faulthandler.cancel_dump_traceback_later()
        assert _hashes(store) == before, f"case {i} ({what}) changed the store's files"
        if "raw" in ctx and outcome == "answered" and _committed(store, ctx["raw"]) != _committed(base, ctx["raw"]):
            # raw data has no HDF5 checksum: ours must catch a flip that changed committed values (a flip in
            # a compressed chunk's padding bits changes nothing)
            assert any(v["pass"] == ctx["raw"] and v["problem"] == "corrupt" for v in verified), f"case {i} ({what}): undetected"
        if ctx.get("names"):
            assert outcome == "answered", f"case {i}: hostile names must still be analysed"
        seen[(mutation.__name__, outcome)] += 1
        shutil.rmtree(case)
    assert CASES < 300 or sum(seen.values()) >= 300
    kinds = {m for m, _ in seen}
    assert kinds == {m.__name__ for m in MUTATIONS}
    print(dict(sorted(seen.items())))
