"""Typed records of the built-in results (fragility.analysis.records): they equal the results' data, they are
the only way other modules read that data, and renaming a field makes the type checker flag every reader."""

from __future__ import annotations

import ast
import dataclasses
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

import fragility
from fragility.analysis.records import (
    CompareClass,
    as_data,
    compare_records,
    diversity_records,
    magnitude_records,
    topk_records,
)
from fragility.testing import make_random_store

ROOT = pathlib.Path(__file__).resolve().parents[1]

#: modules that may read a result's ``data``: the analysis, each built-in result's own module, and the conformance
#: harness (any analyzer's data, by the keys its caller names)
OWNERS = ("fragility/analysis/", "plugins/topk.py", "plugins/magnitude.py", "plugins/diversity.py", "plugins/authors.py",
          "fragility/remedies.py", "fragility/testing.py")


def data_reads(source: str) -> list[int]:
    """Lines that read an attribute named ``data`` (a result's data, whatever the object is called)."""
    return sorted({n.lineno for n in ast.walk(ast.parse(source))
                   if isinstance(n, ast.Attribute) and n.attr == "data" and isinstance(n.ctx, ast.Load)})


def same(a, b) -> bool:
    if isinstance(a, (np.ndarray, list, tuple)) or isinstance(b, (np.ndarray, list, tuple)):
        if a is None or b is None:
            return a is b
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b):
        return True
    return a == b


def check(record, data: dict) -> int:
    """Every field of ``record`` (recursively) equals the value under its key in ``data``; returns the fields seen."""
    seen = 0
    for f in dataclasses.fields(record):
        value, raw = getattr(record, f.name), data.get(f.metadata.get("key", f.name))
        if dataclasses.is_dataclass(value):
            seen += check(value, raw)
        elif isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
            seen += sum(check(v, r) for v, r in zip(value, raw, strict=True))
        elif isinstance(value, dict) and value and dataclasses.is_dataclass(next(iter(value.values()))):
            assert list(value) == list(raw)
            seen += sum(check(value[k], raw[k]) for k in value)
        else:
            assert same(value, raw), (f.name, value, raw)
            seen += 1
    return seen


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    d = tmp_path_factory.mktemp("rec")
    return (make_random_store(d / "a.fragility", counts=(30, 12, 5, 0), d=9, seed=4, nonfinite=2, unlabelled=1),
            make_random_store(d / "b.fragility", counts=(20, 20, 20, 20), d=9, seed=5))


def test_records_hold_exactly_the_results_data(two):
    res = fragility.analyze(two[0], k=3)
    for records, name in ((topk_records, "topk"), (magnitude_records, "magnitude"), (diversity_records, "diversity")):
        rec = records(res[name])
        assert check(rec, res[name].data) > 40
        # and back: the records give the same data, byte for byte in JSON (the built-ins write their data from records)
        assert fragility.analysis.Result(name, data=as_data(rec)).to_json() == fragility.analysis.Result(name, data=res[name].data).to_json()
        last = rec.last("test")
        assert last is not None and last.epoch == max(g.epoch for g in rec.groups.values() if g.split == "test")
    top = topk_records(res["topk"])
    assert [c.name for c in top.last("train").classes] == ["c0", "c1", "c2", "c3"]
    assert top.last("train").classes[3].n == 0 and top.last("train").classes[3].topk.all.indices is None
    with pytest.raises(KeyError, match="unique"):  # a layout change fails where the records are built, naming the key
        bad = fragility.analysis.Result("topk", data={**res["topk"].data})
        bad.data["groups"] = {g: {**v, "classes": [{k: x for k, x in c.items() if k != "unique"} for c in v["classes"]]}
                              for g, v in res["topk"].data["groups"].items()}
        topk_records(bad)


def test_compare_records_pair_the_runs_in_label_order(two):
    res = fragility.compare(*two, k=3, labels=("imb", "bal"))
    rec = compare_records(res)
    assert rec.labels == ["imb", "bal"] and len(rec.classes) == 4
    for c, e in zip(rec.classes, res.data["classes"]):
        assert isinstance(c, CompareClass) and c.name == e["class"]
        assert c.n_train == (e["n_train_imb"], e["n_train_bal"]) and c.accuracy == (e["accuracy_imb"], e["accuracy_bal"])
        assert same(c.test_ratio, (e["test_ratio_imb"], e["test_ratio_bal"]))


def test_no_module_outside_the_analysis_reads_a_results_data():
    """Only the analysis and each built-in result's own module read ``.data``; the rest read records."""
    assert data_reads('top = res["topk"].data["groups"]\nres.data = {}\n') == [1]  # the rule sees a read, not a write
    offenders = {}
    for path in sorted([*(ROOT / "fragility").rglob("*.py"), *(ROOT / "plugins").glob("*.py")]):
        rel = path.relative_to(ROOT).as_posix()
        if not rel.startswith(OWNERS) and (lines := data_reads(path.read_text())):
            offenders[rel] = lines
    assert offenders == {}


MYPY_INI = """
[mypy]
ignore_missing_imports = True
follow_imports = silent
check_untyped_defs = True
cache_dir = /dev/null
[mypy-torch.*,numpy.*,matplotlib.*,h5py.*,scipy.*,sklearn.*,timm.*,pandas.*,dask.*,distributed.*,rich.*,pluggy.*,lightning.*,pytorch_lightning.*,threadpoolctl.*,PIL.*,psutil.*]
follow_imports = skip
"""

#: fields renamed in a copy of the package: names no other object in the package has, so every attribute read of
#: them outside the analysis is a reader of these records
RENAMED = {"DiversityClass": "participation_ratio", "MagnitudeClass": "ratio_incorrect"}


def mypy_errors(where: pathlib.Path) -> set[str]:
    out = subprocess.run([sys.executable, "-m", "mypy", "-p", "fragility", "-p", "fragility_plugins"], cwd=where,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode in (0, 1) and ("Found" in out.stdout or "Success" in out.stdout), out.stdout[-2000:] + out.stderr[-2000:]
    return {line for line in out.stdout.splitlines() if ": error: " in line}


def test_renaming_a_record_field_makes_the_type_checker_flag_every_reader(tmp_path):
    shutil.copytree(ROOT / "fragility", tmp_path / "fragility", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    shutil.copytree(ROOT / "plugins", tmp_path / "fragility_plugins", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "mypy.ini").write_text(MYPY_INI)
    before = mypy_errors(tmp_path)
    records = tmp_path / "fragility" / "analysis" / "records.py"
    text = records.read_text()
    for cls, name in RENAMED.items():
        start = text.index(f"class {cls}:")
        at = text.index(f"    {name}: float | None\n", start)
        text = text[:at] + f'    {name}_renamed: float | None = field(metadata=_key("{name}"))\n' + text[at + len(f"    {name}: float | None\n"):]
    records.write_text(text)
    new = mypy_errors(tmp_path) - before
    flagged = {line.split(": error:")[0] for line in new}
    readers, writers = set(), set()
    for path in [*(tmp_path / "fragility").rglob("*.py"), *(tmp_path / "fragility_plugins").glob("*.py")]:
        rel = path.relative_to(tmp_path).as_posix()
        if rel.startswith("fragility/analysis/"):
            continue
        for n in ast.walk(ast.parse(path.read_text())):
            if isinstance(n, ast.Attribute) and n.attr in RENAMED.values() and isinstance(n.ctx, ast.Load):
                readers.add(f"{rel}:{n.lineno}")
            elif isinstance(n, ast.Call) and any(kw.arg in RENAMED.values() for kw in n.keywords):
                writers.add(f"{rel}:{n.lineno}")  # the built-ins build their records (and so their JSON and tables) by keyword
    assert writers == {"fragility_plugins/diversity.py:" + str(line("plugins/diversity.py", "record = DiversityClass(")),
                       "fragility_plugins/magnitude.py:" + str(line("plugins/magnitude.py", "record = MagnitudeClass("))}
    assert len(readers) >= 5 and {r.split(":")[0] for r in readers} >= {"fragility/live.py", "fragility/paper/demo.py",
                                                                          "fragility/paper/reproduce.py", "fragility_plugins/report_sections.py"}
    assert flagged == readers | writers, (sorted(flagged ^ (readers | writers)), sorted(new))
    assert all(any(f'"{name}"' in line for name in RENAMED.values()) for line in new)


def line(rel: str, text: str) -> int:
    return next(i for i, t in enumerate((ROOT / rel).read_text().splitlines(), 1) if text in t)
