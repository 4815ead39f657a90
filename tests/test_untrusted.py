"""A store is untrusted input (issue 8): forged, corrupt and hostile stores give one line, never a crash,
a hang, unbounded memory or a read outside the store; names never inject markup."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

import fragility
from fragility import FragilityError, Store, StoreError
from fragility.analysis import analyze
from fragility.cli import main
from fragility.testing import make_random_store
from .conftest import json_results

SENTINEL = b"OUTSIDE-THE-STORE-" * 64


@pytest.fixture
def store(tmp_path):
    return make_random_store(tmp_path / "s.fragility", counts=(6, 4, 2), d=6, passes=(("train", 0), ("test", 0)))


@pytest.fixture
def outside(tmp_path):
    path = tmp_path / "secret.bin"
    path.write_bytes(SENTINEL)
    return str(path)


def _edit(store, name, fn):
    with h5py.File(os.path.join(store, "passes", f"{name}.h5") if name != "root" else os.path.join(store, "store.h5"), "r+", locking=False) as f:
        fn(f)


def _cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def _refused(store, pattern):
    """A bad root refuses the store in one line. A bad pass file is quarantined: the store opens without it,
    its one-line reason matches, the other passes read, inspect lists it and verify exits 1 naming it."""
    try:
        s = Store(store)
    except StoreError as exc:
        assert re.search(pattern, str(exc)) and "\n" not in str(exc), str(exc)
        code, _, err = _cli("inspect", str(store))
        assert code == 2 and err.count("\n") == 1 and err.startswith("error:"), err
        return
    with s:
        reasons = {d.name: d.reason for d in s.damaged}
        assert any(re.search(pattern, r) for r in reasons.values()), reasons
        assert all("\n" not in r for r in reasons.values())
        for p in s.passes:
            if p.rows:
                s.read(p, list(p.columns))
    code, out, err = _cli("inspect", str(store))
    assert code == 0 and "damaged passes" in out and all(n in out for n in reasons), (out, err)
    code, out, err = _cli("verify", str(store))
    assert code == 1 and all(f"{n} (" in out and "DAMAGED" in out for n in reasons), out


# ------------------------------------------------------------------------------------- outside the store


def test_external_storage_is_refused_before_reading(store, outside):
    def forge(f):
        del f["label"]
        f.create_dataset("label", shape=(12,), dtype="<i8", external=[(outside, 0, 96)])

    _edit(store, "0001", forge)
    _refused(store, r"pass file .*0001.h5: /label uses external storage")


def test_external_storage_pointing_at_a_fifo_does_not_hang(store, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    def forge(f):
        del f["fe"]
        f.create_dataset("fe", shape=(12, 6), dtype="<f4", external=[(str(fifo), 0, 12 * 6 * 4)])

    _edit(store, "0001", forge)
    _refused(store, r"/fe uses external storage")


def test_external_links_soft_links_and_virtual_datasets_are_refused(store, outside, tmp_path):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["y"] = np.arange(12)
    cases = [
        (lambda f: f.__setitem__("x", h5py.ExternalLink(str(other), "/y")), r"/x is an external link to .*other.h5:/y"),
        (lambda f: f.__setitem__("x", h5py.SoftLink("/fe")), r"/x is a soft link to /fe"),
    ]

    def vds(f):
        lay = h5py.VirtualLayout(shape=(12,), dtype="<i8")
        lay[:] = h5py.VirtualSource(str(other), "y", shape=(12,))
        del f["pred"]
        f.create_virtual_dataset("pred", lay)

    cases.append((vds, r"/pred is a virtual dataset"))
    for i, (forge, pattern) in enumerate(cases):
        s = shutil.copytree(store, tmp_path / f"c{i}.fragility")
        _edit(s, "0000", forge)
        _refused(s, pattern)


def test_symlinks_and_non_regular_files_are_refused(store, tmp_path, outside):
    p = os.path.join(store, "passes", "0001.h5")
    moved = tmp_path / "moved.h5"
    shutil.move(p, moved)
    os.symlink(moved, p)
    _refused(store, r"pass file .*0001.h5 is a symbolic link")
    os.remove(p)
    os.mkfifo(p)  # opening it would block forever
    _refused(store, r"pass file .*0001.h5 is not a regular file")


def test_filter_plugins_are_refused(store):
    def forge(f):
        data = f["index"][...]
        del f["index"]
        f.create_dataset("index", data=data, chunks=(4,), compression="gzip", shuffle=True, fletcher32=True)

    _edit(store, "0001", forge)
    with Store(store) as s:  # built-in filters are fine
        assert len(s.read(s.passes[1], ["index"])["index"]) == 12
    dcpl_code = 32001  # blosc: a plugin filter HDF5 would load from disk

    def plugin(f):
        data = f["step"][...]
        del f["step"]
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_chunk((4,))
        dcpl.set_filter(dcpl_code, h5py.h5z.FLAG_OPTIONAL)
        sid = h5py.h5s.create_simple((len(data),), (h5py.h5s.UNLIMITED,))
        h5py.h5d.create(f.id, b"step", h5py.h5t.STD_I64LE, sid, dcpl=dcpl)

    _edit(store, "0001", plugin)
    _refused(store, r"/step uses HDF5 filter 32001")


# ------------------------------------------------------------------------------------- declared sizes


def test_huge_declared_sizes_are_refused_in_one_line(store, tmp_path):
    cases = {
        "status": (lambda f: (f.__delitem__("status"), f.create_dataset("status", shape=(2**40,), chunks=(1024,), dtype="<i8")),
                   r"status must be 4 integers"),
        "committed": (lambda f: f["status"].__setitem__(0, 2**40), r"status says 1099511627776 rows are committed but fe holds 12"),
        "extent": (lambda f: [f[c].resize(2**40, axis=0) or f["status"].__setitem__(0, 2**40) for c in ("fe",)],
                   r"committed but fe holds 12"),  # its written chunks: the finished pass is compacted to its 12 rows
        "classifier": (lambda f: (f.__delitem__("classifier/weight"),
                                  f.create_dataset("classifier/weight", shape=(3, 2**36), chunks=(1, 1024), dtype="<f4")),
                       r"classifier must hold weight \(C=3, D=6\)"),
    }
    for key, (forge, pattern) in cases.items():
        s = shutil.copytree(store, tmp_path / f"{key}.fragility")
        _edit(s, "0001", forge)
        _refused(s, pattern)
    s = shutil.copytree(store, tmp_path / "classes.fragility")
    _edit(s, "root", lambda f: f.attrs.__setitem__("num_classes", 2**40))
    _refused(s, r"attribute 'num_classes' = 1099511627776 is outside \[1, 1048576\]")


# ------------------------------------------------------------------------------------- validation


ROOT_CASES = [
    (lambda a: a.__setitem__("num_classes", "five"), r"attribute 'num_classes' must be an integer"),
    (lambda a: a.__setitem__("class_names", json.dumps(["a", "b"])), r"class_names holds 2 entries but num_classes is 3"),
    (lambda a: a.__setitem__("feature_dim", 7), r"fe has shape \(12, 6\) and dtype float32, not \(N, D=7\)"),
    (lambda a: a.__delitem__("schema_version"), r"schema_version None is not a schema version"),
    (lambda a: a.__setitem__("class_names", "not json"), r"class_names' is not the JSON list"),
    (lambda a: a.__setitem__("storage_dtype", "int8"), r"storage_dtype 'int8' is not one of float16, float32"),
]
PASS_CASES = [
    (lambda f: f.attrs.__setitem__("epoch", "x"), r"attribute 'epoch' must be an integer"),
    (lambda f: f.attrs.__delitem__("split"), r"lacks the attribute 'split'"),
    (lambda f: f.attrs.__setitem__("mode", "sideways"), r"mode 'sideways' is not 'train' or 'eval'"),
    (lambda f: f.__delitem__("label"), r"has 12 committed rows but no label column"),
    (lambda f: f.__delitem__("fe"), r"has 12 committed rows but no fe column"),
    (lambda f: (f.__delitem__("ce_pred"), f.create_dataset("ce_pred", data=np.zeros((12, 8), "<f4"))),
     r"ce_pred has shape \(12, 8\) and dtype float32, not \(N, D=6\)"),
    (lambda f: f["status"].__setitem__(0, -1), r"status \[-1, 1, 0, .*\] is inconsistent"),
    (lambda f: f["status"].__setitem__(0, 13), r"status says 13 rows are committed but fe holds 12"),
    (lambda f: (f.__delitem__("pred"), f.create_dataset("pred", data=np.zeros(5, "<i8"))), r"committed but pred holds 5"),
    (lambda f: (f.__delitem__("label"), f.create_dataset("label", data=np.array(["a"] * 12, dtype="S1"))),
     r"/label has dtype \|S1, not a plain number type"),
    (lambda f: f.attrs.__setitem__("split", np.array([1, 2])), r"attribute 'split' of / has shape \(2,\)"),
]


@pytest.mark.parametrize("i", range(len(ROOT_CASES)))
def test_root_attributes_are_validated(store, i):
    forge, pattern = ROOT_CASES[i]
    _edit(store, "root", lambda f: forge(f.attrs))
    _refused(store, pattern)


@pytest.mark.parametrize("i", range(len(PASS_CASES)))
def test_pass_contents_are_validated(store, i):
    forge, pattern = PASS_CASES[i]
    _edit(store, "0001", forge)
    _refused(store, pattern)


def test_labels_out_of_range_are_a_store_error(store):
    _edit(store, "0001", lambda f: f["label"].__setitem__(3, 7))
    with pytest.raises(StoreError, match=r"pass 0001 \(test@0\) holds label 7 in rows 0:12, outside the 3 classes"):
        analyze(store, ["topk"], k=2)


def test_corrupt_metadata_names_the_file(store):
    p = os.path.join(store, "passes", "0001.h5")
    with h5py.File(p, "r", locking=False) as f:
        off = f["label"].id.get_offset() if f["label"].chunks is None else None
    data = bytearray(open(p, "rb").read())
    hits = 0
    for pos in range(48, 2048, 97):  # flips across the object headers and B-trees
        flipped = bytearray(data)
        flipped[pos] ^= 0xFF
        open(p, "wb").write(flipped)
        try:
            with Store(store) as s:
                for d in s.damaged:  # quarantined: the reason names the file, in one line
                    assert d.name == "0001" and "\n" not in d.reason and "0001.h5" in d.reason, d.reason
                    hits += 1
                for q in s.passes:
                    if q.rows:
                        s.read(q, list(q.columns))
        except FragilityError as exc:
            msg = str(exc)
            assert "\n" not in msg and ("0001.h5" in msg or "passes" in msg or "s.fragility" in msg), msg
            hits += 1
    open(p, "wb").write(data)
    assert hits > 0 and off is None


# ------------------------------------------------------------------------------------- raw data


def test_verify_reports_each_corrupt_block(store, tmp_path):
    p = os.path.join(store, "passes", "0000.h5")
    with h5py.File(p, "r", locking=False) as f:
        offset = f["ce_pred"].id.get_chunk_info(0).byte_offset
        blocks = f["checksums"][...].tolist()
    data = bytearray(open(p, "rb").read())
    data[offset + 4 * 6 * 10 + 1] ^= 0x10  # row 10 of ce_pred
    open(p, "wb").write(bytes(data))
    block = next(b for b in blocks if b[0] <= 10 < b[1])
    found = Store(store).verify()
    assert found == [{"pass": "0000", "group": "train@0", "start": block[0], "stop": block[1], "problem": "corrupt"}]
    code, out, _ = _cli("verify", str(store))
    assert code == 1 and f"0000 (train@0) rows {block[0]}:{block[1]}: CORRUPT" in out
    code, out, _ = _cli("verify", str(store), "--json")
    assert code == 1 and json_results(out, "verify")["verify"]["problems"] == found
    with pytest.raises(StoreError, match=rf"pass 0000 \(train@0\) rows {block[0]}:{block[1]} fail their checksums"):
        analyze(store, ["topk"], k=2, verify=True)
    code, _, err = _cli("analyze", str(store), "-a", "topk", "--k", "2", "--verify")
    assert code == 2 and "fail their checksums" in err
    clean = make_random_store(tmp_path / "clean.fragility")
    assert _cli("verify", clean)[0] == 0


# ------------------------------------------------------------------------------------- names


HOSTILE = ["[bold red]x", "a[/]b", "\x1b[2J\x1b[31mred", "cost $x^2$ and $", "bell\x07", "<script>alert(1)</script>", ":smile: :b:"]


def test_hostile_names_are_shown_literally(tmp_path):
    path = make_random_store(tmp_path / "run[lr=0.1].fragility", counts=(6, 4, 2, 1, 1, 1, 1), d=6,
                             passes=(("train", 0), ("test", 0), ("te[/]st", 0)))
    _edit(path, "root", lambda f: f.attrs.__setitem__("class_names", json.dumps(HOSTILE)))
    _edit(path, "root", lambda f: f.attrs.__setitem__("model_name", "[link=file:///etc/passwd]m[/link]"))
    code, out, err = _cli("inspect", path)
    assert code == 0, err
    assert "\x1b" not in out and "\x07" not in out
    for text in ("run[lr=0.1].fragility", "[bold red]x", "a[/]b", "\\x1b[2J\\x1b[31mred", "te[/]st", "[link=file:///etc/passwd]m[/link]"):
        assert text in out, text
    code, out, err = _cli("analyze", path, "-a", "topk", "--k", "2")
    assert code == 0 and "[bold red]x" in out and "\x1b" not in out and ":smile: :b:" in out, err
    # emoji codes are text on any console (a notebook's default Console replaces them)
    import io

    from rich.console import Console

    buf = io.StringIO()
    Console(file=buf, width=200).print(fragility.analyze(path, ["topk"], k=2)["topk"])
    assert ":smile: :b:" in buf.getvalue() and "[bold red]x" in buf.getvalue()
    # errors carrying a path with brackets are one line too
    code, _, err = _cli("inspect", str(tmp_path / "missing[/].fragility"))
    assert code == 2 and "missing[/].fragility does not exist" in err and err.count("\n") == 1
    # the report: "$" in a class name is text, not mathtext; HTML escaped
    code, _, err = _cli("report", path, "--compare", path, "--k", "2", "--out", str(tmp_path / "rep"))
    assert code == 0, err
    page = (tmp_path / "rep" / "index.html").read_text()
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;" in page


# ------------------------------------------------------------------------------------- one line each


def test_out_that_cannot_be_written_is_one_line(store, tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    code, _, err = _cli("analyze", store, "-a", "topk", "--k", "2", "--out", str(f))
    assert code == 2 and "output folder" in err and "is an existing file" in err and err.count("\n") == 1


def test_out_under_a_file_is_one_line(store, tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    code, _, err = _cli("compare", store, store, "--k", "2", "--out", str(f / "sub"))
    assert code == 2 and "cannot create output folder" in err and err.count("\n") == 1
    code, _, err = _cli("report", store, "--k", "2", "--out", str(f))
    assert code == 2 and "is an existing file" in err


def test_string_labels_are_one_line(tmp_path, tiny_model):
    import torch

    with fragility.Recorder(tiny_model, tmp_path / "r.fragility") as rec, rec.capture("train"):
        tiny_model(torch.randn(2, 3, 32, 32))
        with pytest.raises(fragility.RecorderError, match=r"^labels are text such as 'cat'; pass integer class ids"):
            rec.record(["cat", "dog"])


def test_disk_full_error_keeps_the_os_reason(tmp_path):
    """A real HDF5 write failure (file size limit): the OS reason survives HDF5's long message."""
    code = (
        "import resource, signal, sys, torch, timm, fragility\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "m = timm.create_model('test_resnet', pretrained=False, num_classes=4)\n"
        f"rec = fragility.Recorder(m, {str(tmp_path / 'full.fragility')!r}, flush_interval=0)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (200000, 200000))\n"
        "try:\n"
        "    with rec.capture('train'):\n"
        "        for _ in range(50):\n"
        "            m(torch.randn(64, 3, 32, 32)); rec.record(torch.zeros(64, dtype=torch.long))\n"
        "    rec.close()\n"
        "except fragility.StoreError as e:\n"
        "    print(e); sys.exit(3)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 3, out.stdout + out.stderr
    assert "File too large" in out.stdout and "rows flushed before it are kept" in out.stdout
    assert out.stdout.count("\n") == 1


def _register(pm, plugin: str, name: str, cls) -> None:
    """Register analyzer ``cls`` as ``name`` through a plugin object called ``plugin``."""

    class Plugin:
        @fragility.hookimpl
        def fragility_register_analyzers(self, registrar):
            registrar.add(name, cls)

    pm.register(Plugin(), name=plugin)


def test_analyzer_exceptions_are_one_line_naming_the_plugin(store, pm):
    from fragility.analysis import Analyzer

    class Broken(Analyzer):
        name = "broken"

        def columns(self):
            return {"label"}

        def update(self, chunk):
            raise ZeroDivisionError("oops")

    _register(pm, "broken-plugin", "broken", Broken)
    with pytest.raises(fragility.AnalyzerError, match=r"^analyzer 'broken' \(plugin module .*test_untrusted\) failed in update\(\): ZeroDivisionError: oops"):
        analyze(store, ["broken"], plugin_manager=pm, k=2)
    # on the command line: one line, the traceback behind -v/--debug
    import fragility._manager as manager

    monkey = pytest.MonkeyPatch()
    monkey.setattr(manager, "make_plugin_manager", lambda **kw: pm)
    try:
        code, _, err = _cli("analyze", store, "-a", "broken", "--k", "2")
        assert code == 2 and err.count("\n") == 1 and "ZeroDivisionError: oops" in err and "--debug" in err, err
        code, _, err = _cli("analyze", store, "-a", "broken", "--k", "2", "--debug")
        assert code == 2 and "Traceback" in err and 'raise ZeroDivisionError("oops")' in err
    finally:
        monkey.undo()


def test_an_analyzer_asking_for_an_unknown_column_is_told(store, pm):
    from fragility.analysis import Analyzer

    class Typo(Analyzer):
        name = "typo"

        def columns(self):
            return {"lable"}

    _register(pm, "typo-plugin", "typo", Typo)
    with pytest.raises(fragility.AnalyzerError, match=r"^analyzer 'typo' \(typo-plugin\) asks for column 'lable', which stores do not have \(did you mean 'label'\?\)"):
        analyze(store, ["typo"], plugin_manager=pm)
