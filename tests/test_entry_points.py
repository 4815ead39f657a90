"""Every reader entry point goes through the validation layer (issue 8).

The entry points are enumerated — the CLI's subcommands from its parser, the Python API's functions from
the modules' ``__all__`` by their signature — so a new one cannot skip the check: it fails here until it
is added to the table below (and so exercised on a forged store).
"""

from __future__ import annotations

import contextlib
import inspect
import io
import os

import h5py
import pytest

import fragility
import fragility.analysis
import fragility.remedies
import fragility.report
import fragility.testing
from fragility import StoreError
from fragility.cli import _parser, main
from fragility.testing import make_random_store

FORGED = r"uses external storage"

#: CLI subcommands that never read a store (everything else must be listed in CLI_CALLS)
NO_STORE_COMMANDS = {"demo", "plugins", "reproduce"}  # they read only stores they wrote


@pytest.fixture
def forged(tmp_path):
    """A store whose root file holds a dataset stored outside the store. (A forged *pass* file is quarantined —
    left out, named, never read — rather than fatal: tests/test_untrusted.py and tests/test_damage.py.)"""
    path = make_random_store(tmp_path / "f.fragility", counts=(5, 4), d=4, passes=(("train", 0), ("test", 0)))
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"S" * 4096)
    with h5py.File(os.path.join(path, "store.h5"), "r+", locking=False) as f:
        f.create_dataset("pred", shape=(9,), dtype="<i8", external=[(str(secret), 0, 72)])
    return path


def CLI_CALLS(store, tmp):
    return {
        "inspect": ["inspect", store],
        "analyze": ["analyze", store, "--k", "2"],
        "compare": ["compare", store, store, "--k", "2"],
        "report": ["report", store, "--k", "2", "--out", str(tmp / "rep")],
        "verify": ["verify", store],
        "repair": ["repair", store],
        "watch": ["watch", store, "--count", "1"],
        "remedy": ["remedy", store, "-r", "tau-norm", "--tau", "1", "--out", str(tmp / "rem")],
    }


def PY_CALLS(store, tmp):
    class NoClient:  # the Dask runner must refuse before it touches the cluster
        def __getattr__(self, name):
            raise AssertionError("the cluster was used before the store was validated")

    return {
        "fragility.Store": lambda: fragility.Store(store),
        "fragility.analyze": lambda: fragility.analyze(store, k=2),
        "fragility.compare": lambda: fragility.compare(store, store, k=2),
        "fragility.analysis.analyze": lambda: fragility.analysis.analyze(store, k=2),
        "fragility.analysis.analyze_dask": lambda: fragility.analysis.analyze_dask(store, client=NoClient(), k=2),
        "fragility.analysis.compare": lambda: fragility.analysis.compare(store, store, k=2),
        "fragility.report.build_report": lambda: fragility.report.build_report([store], tmp / "rep2", k=2),
        "fragility.testing.check_analyzer": lambda: fragility.testing.check_analyzer("topk", store, k=2),
        "fragility.remedies.remedy": lambda: fragility.remedies.remedy(store, ["tau-norm"], tau=1, out=tmp / "rem2"),
    }


#: public functions that take a path but never read a store
NOT_READERS = {
    "fragility.report.run_label", "fragility.report.output_dir", "fragility.testing.make_random_store",
    "fragility.analysis.Plan",  # its folds take an open (validated) Store; Dask tasks open Store(plan.path)
    "fragility.remedies.load_head", "fragility.remedies.read_head",  # read a saved head file, not a store
    "fragility.remedies.Rescored",  # a view of an open (validated) Store
}


def _takes_a_store(func) -> bool:
    """The first parameter may be a store's path (not only an open, already validated Store)."""
    try:
        params = [p for p in inspect.signature(func).parameters.values() if p.name != "self"]
    except (TypeError, ValueError):
        return False
    if not params or params[0].name not in ("store", "stores", "path", "store_path", "store_a"):
        return False
    note = str(params[0].annotation)
    return "str" in note or "PathLike" in note or params[0].annotation is inspect.Parameter.empty


def test_every_cli_command_validates_the_store(forged, tmp_path):
    sub = next(a for a in _parser()._actions if a.dest == "command")
    commands = set(sub.choices)
    calls = CLI_CALLS(forged, tmp_path)
    assert commands - NO_STORE_COMMANDS == set(calls), "a new CLI command must be added to CLI_CALLS"
    for name, argv in calls.items():
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
        assert code == 2 and FORGED in err.getvalue() and err.getvalue().count("\n") == 1, (name, err.getvalue())


def test_every_python_reader_validates_the_store(forged, tmp_path):
    calls = PY_CALLS(forged, tmp_path)
    public = set()
    for module in (fragility, fragility.analysis, fragility.remedies, fragility.report, fragility.testing):
        names = getattr(module, "__all__", None) or [
            n for n in dir(module) if not n.startswith("_") and getattr(getattr(module, n), "__module__", "") == module.__name__]
        for name in names:
            obj = getattr(module, name, None)
            if (inspect.isfunction(obj) or inspect.isclass(obj)) and _takes_a_store(obj.__init__ if inspect.isclass(obj) else obj):
                public.add(f"{module.__name__}.{name}")
    missing = {n for n in public - NOT_READERS if n not in calls}
    assert {"fragility.Store", "fragility.analyze", "fragility.analysis.analyze_dask", "fragility.report.build_report"} <= public
    assert not missing, f"new reader entry points must be exercised here: {sorted(missing)}"
    for name, call in calls.items():
        with pytest.raises(StoreError, match=FORGED):
            call()
