"""Plugin manager: built-ins, real entry-point discovery, env knobs, validation errors."""

from __future__ import annotations

import sys
import textwrap

import pytest
import timm
import torch

import fragility
from fragility import Head, PluginError
from fragility._manager import plugin_table
from .conftest import json_results


def install_dist(tmp_path, monkeypatch, dist: str, module: str, source: str, ep_name: str | None = None) -> None:
    """Install a tiny distribution the way pip lays it out: a module plus a ``.dist-info`` folder with
    ``entry_points.txt``. ``importlib.metadata`` discovers it for real once its folder is on sys.path."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(f"[fragility]\n{ep_name or module} = {module}\n")
    monkeypatch.syspath_prepend(str(site))
    sys.modules.pop(module, None)


OVERRIDE = """
    import fragility
    from torch import nn

    CALLS = []

    @fragility.hookimpl
    def fragility_resolve_head(model, classifier):
        # teach fragility a model family: tap the second-to-last module instead of timm's fc
        CALLS.append(type(model).__name__)
        return fragility.Head([model.fc], name="override.fc")
"""


def test_third_party_entry_point_overrides_tap_resolution(tmp_path, monkeypatch):
    install_dist(tmp_path, monkeypatch, "fragility-override", "frag_override", OVERRIDE)
    monkeypatch.delenv("FRAGILITY_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    pm = fragility.make_plugin_manager()
    assert "frag_override" in [n for n, _ in pm.list_name_plugin()]
    model = timm.create_model("test_resnet", pretrained=False, num_classes=3)
    head = pm.hook.fragility_resolve_head(model=model, classifier=None)
    assert isinstance(head, Head) and head.name == "override.fc"
    assert sys.modules["frag_override"].CALLS == ["ResNet"]
    rows = {r["name"]: r for r in plugin_table(pm)}
    assert rows["frag_override"]["version"] == "fragility-override 1.2.3"
    assert rows["frag_override"]["hooks"] == ["fragility_resolve_head"]
    assert rows["fragility_plugins.timm_taps"]["source"] == "built-in"
    # the built-in default still answers when the third party is filtered out by name
    monkeypatch.setenv("FRAGILITY_PLUGINS", "something_else")
    pm2 = fragility.make_plugin_manager()
    assert "frag_override" not in [n for n, _ in pm2.list_name_plugin()]
    assert pm2.hook.fragility_resolve_head(model=model, classifier=None).name == "test_resnet.fc(Linear)"
    monkeypatch.setenv("FRAGILITY_PLUGINS", "frag_override")
    assert "frag_override" in [n for n, _ in fragility.make_plugin_manager().list_name_plugin()]
    monkeypatch.delenv("FRAGILITY_PLUGINS")
    monkeypatch.setenv("FRAGILITY_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert "frag_override" not in [n for n, _ in fragility.make_plugin_manager().list_name_plugin()]


def test_misspelled_hook_is_reported_with_the_plugin_name(tmp_path, monkeypatch, capsys):
    source = """
        import fragility

        @fragility.hookimpl
        def fragility_resolve_haed(model, classifier):
            return None
    """
    install_dist(tmp_path, monkeypatch, "fragility-typo", "frag_typo", source)
    monkeypatch.delenv("FRAGILITY_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    pm = fragility.make_plugin_manager()  # skipped with a warning, everything else works
    assert "frag_typo" not in [n for n, _ in pm.list_name_plugin()]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "plugin 'frag_typo' (entry point 'frag_typo = frag_typo' of fragility-typo 1.2.3) was skipped" in err
    assert "unknown hook 'fragility_resolve_haed'" in err
    monkeypatch.setenv("FRAGILITY_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match=r"plugin 'frag_typo' \(entry point .*\) is broken: unknown hook 'fragility_resolve_haed'"):
        fragility.make_plugin_manager()


def test_broken_plugin_is_skipped_and_shown_as_broken(tmp_path, monkeypatch, capsys, store_path):
    import json

    from fragility.cli import main

    install_dist(tmp_path, monkeypatch, "fragility-broken", "frag_broken", "raise ImportError('needs foo')\n")
    monkeypatch.delenv("FRAGILITY_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    # the training script keeps working, with one warning naming the plugin and its entry point
    model = timm.create_model("test_resnet", pretrained=False, num_classes=3)
    with fragility.Recorder(model, store_path) as rec, rec.capture("train"):
        model(torch.randn(2, 3, 32, 32))
        rec.record(torch.tensor([0, 1]))
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "'frag_broken' (entry point 'frag_broken = frag_broken' of fragility-broken 1.2.3)" in err
    assert "failed to load: ImportError: needs foo" in err
    # `fragility plugins` — the tool to find it — works and shows it as broken
    assert main(["plugins", "--json"]) == 0
    rows = {r["name"]: r for r in json_results(capsys.readouterr().out, "plugins")["plugins"]}
    assert rows["frag_broken"]["source"] == "entry point (broken)" and "needs foo" in rows["frag_broken"]["error"]
    assert rows["fragility_plugins.topk"]["analyzers"] == ["topk"]
    monkeypatch.setenv("FRAGILITY_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match=r"plugin 'frag_broken' .*is broken: failed to load: ImportError: needs foo"):
        fragility.make_plugin_manager()


def test_a_plugin_whose_registration_raises_is_skipped(tmp_path, monkeypatch, capsys):
    source = """
        import fragility

        @fragility.hookimpl
        def fragility_register_analyzers(registrar):
            raise RuntimeError("bad registration")
    """
    install_dist(tmp_path, monkeypatch, "fragility-badreg", "frag_badreg", source)
    monkeypatch.delenv("FRAGILITY_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    from fragility.analysis import registry

    reg = registry()
    assert {"topk", "magnitude", "diversity"} <= set(reg.analyzers)
    assert "plugin 'frag_badreg' (its fragility_register_analyzers hook) was skipped: RuntimeError: bad registration" in capsys.readouterr().err


def test_manager_is_fresh_each_time():
    a = fragility.make_plugin_manager(autoload=False)
    b = fragility.make_plugin_manager(autoload=False)
    assert a is not b
    a.register(object(), name="extra")
    assert b.get_plugin("extra") is None


def test_hookspecs_are_prefixed_and_documented():
    from fragility import hookspecs

    specs = [n for n in dir(hookspecs) if n.startswith("fragility_")]
    assert len(specs) >= 8
    for name in specs:
        doc = getattr(hookspecs, name).__doc__ or ""
        assert "Called" in doc or "called" in doc, name
        assert "Combination" in doc or "firstresult" in doc, name


def test_builtins_are_not_a_bare_plugins_package():
    import importlib.util

    import fragility_plugins

    assert importlib.util.find_spec("plugins") is None or "fragility" not in str(importlib.util.find_spec("plugins").origin)
    assert fragility_plugins.BUILTINS and all(m.startswith("fragility_plugins.") for m in fragility_plugins.BUILTINS)


def test_explicit_classifier_via_recorder(store_path):
    from .test_taps import CifarResNet

    model = CifarResNet().eval()
    with fragility.Recorder(model, store_path, classifier=model.linear) as rec:
        rec.evaluate([(torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0]))])
    assert fragility.Store(store_path).metadata["head"] == "CifarResNet.linear(Linear)"


def test_a_plugin_written_to_the_earlier_example_keeps_working(tmp_path, pm):
    """The earlier docs example stored `result.data[group] = m` and its report section iterated
    `result.data.items()`: the engine's metadata used to sit in that dict (`data["skipped"]`) and broke it with
    a KeyError inside the report. It sits beside `data` now, so such a plugin runs through analyze and report."""
    import types

    import numpy as np

    from fragility.analysis import Analyzer, Result, Table
    from fragility.report import build_report
    from fragility.testing import make_random_store

    class Old(Analyzer):
        name = "oldstyle"
        states = {"n": "sum"}

        def columns(self):
            return {"label"}

        def update(self, chunk):
            self.accumulate(chunk.group, "n", np.bincount(chunk["label"], minlength=self.spec.num_classes))

        def compute(self):
            result = Result(self.name)
            for group, state in self.state.items():
                result.data[group] = state["n"]
                result.tables.append(Table(f"{group}: rows", ["class", "n"], [[c, int(v)] for c, v in enumerate(state["n"])]))
            return result

    def section(ctx):
        out = []
        for lab in ctx.labels:
            for group, counts in ctx.results[lab]["oldstyle"].data.items():  # every value is one of its own arrays
                out.append(Table(f"{group}: total", ["class", "n"], [["all", int(counts.sum())]]))
        return out

    plugin = types.SimpleNamespace(
        fragility_register_analyzers=fragility.hookimpl(lambda registrar: registrar.add("oldstyle", Old)),
        fragility_register_report_sections=fragility.hookimpl(lambda registrar: registrar.add("old", section, title="Old")),
    )
    pm.register(plugin, name="oldstyle-plugin")
    path = make_random_store(tmp_path / "o.fragility", counts=(5, 4, 3), d=6, nonfinite=2, unlabelled=1)
    res = fragility.analyze(path, ["oldstyle"], plugin_manager=pm)["oldstyle"]
    assert set(res.data) == {"train@0", "test@0", "train@1", "test@1"} and res.skipped["test@0"]["unlabelled"] == 1  # beside data, not in it
    page = open(build_report([path], tmp_path / "rep", analyzers=["oldstyle"], plugin_manager=pm)).read()
    assert "test@1: total" in page and "test@1: rows" in page


def test_builtin_plugins_use_only_public_modules():
    """The built-in plugins and examples/ use exactly what a third party can: no private module of fragility
    (the exact maths is public in fragility.functional, the very functions the built-ins call)."""
    import ast
    from pathlib import Path

    import fragility.functional as F
    from fragility.analysis import _kernels, _maths

    root = Path(__file__).resolve().parents[1]
    for path in sorted(root.glob("plugins/*.py")) + sorted(root.glob("examples/**/*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            for name in names:
                parts = name.split(".")
                assert not (parts[0] == "fragility" and any(p.startswith("_") for p in parts[1:])), (path.name, name)
    assert F.topk_mask is _maths.topk_mask and F.minimal_sets is _maths.minimal_sets and F.fused_topk is _kernels.topk_update
    assert set(F.__all__) == {n for n in dir(F) if not n.startswith("_") and callable(getattr(F, n))} - {"annotations"}


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_the_docs_functional_analyzer_is_exact_with_kernels_on_and_off(tmp_path, pm, monkeypatch, dtype):
    """docs/writing-plugins.md's analyzer on fragility.functional, copied from the page: the same results with the
    compiled kernels and without (float16: the kernel runs; float32: numpy both times), equal to a brute-force
    count of each row's own top-K (ties: the lower index)."""
    import re
    import types
    from pathlib import Path

    import numpy as np

    from fragility.testing import assert_results_equal, make_random_store

    page = (Path(__file__).resolve().parents[1] / "docs" / "writing-plugins.md").read_text()
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", page, flags=re.S) if "fragility.functional import" in b]
    module = types.ModuleType("topcount_doc")
    exec(compile(block, "writing-plugins.md", "exec"), module.__dict__)
    pm.register(module, name="topcount_doc")
    path = make_random_store(tmp_path / "t.fragility", counts=(30, 12, 5), d=10, dtype=dtype, ties=True)
    monkeypatch.setenv("FRAGILITY_NO_KERNELS", "0")
    from fragility.analysis import _kernels

    real, ran = _kernels.topk_update, []
    monkeypatch.setattr(module, "fused_topk", lambda *a, **kw: ran.append(real(*a, **kw)) or ran[-1])
    on = fragility.analyze(path, ["topcount"], k=3, plugin_manager=pm)["topcount"]
    assert ran and all((r is not None) == (dtype == "float16") for r in ran)  # the kernel ran exactly where it applies
    monkeypatch.setenv("FRAGILITY_NO_KERNELS", "1")
    off = fragility.analyze(path, ["topcount"], k=3, plugin_manager=pm)["topcount"]
    assert_results_equal(on, off, rtol=0, atol=0)
    with fragility.Store(path) as st:
        p = st.select(split="test", epoch=1)[0]
        rows = st.read(p, ["ce_pred", "label"])
    count = np.zeros((3, 10), dtype=int)
    for v, y in zip(rows["ce_pred"].astype(np.float32), rows["label"]):
        for j in sorted(range(10), key=lambda j: (-float(v[j]), j))[:3]:
            count[y, j] += 1
    for c, entry in enumerate(on.data["groups"]["test@1"]["classes"]):
        want = sorted(range(10), key=lambda j: (-count[c, j], j))[:3]
        assert entry["features"] == want and entry["rows"] == [int(count[c, j]) for j in want]


def test_one_plugin_manager_per_call(tmp_path, monkeypatch):
    """analyze, compare and build_report each build one plugin manager (entry points scanned once), not one per
    run, registry or section list."""
    import fragility._manager as manager
    from fragility.report import build_report
    from fragility.testing import make_random_store

    built = []
    real = manager.make_plugin_manager

    def counted(*args, **kwargs):
        built.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(manager, "make_plugin_manager", counted)
    a = make_random_store(tmp_path / "a.fragility", seed=1)
    b = make_random_store(tmp_path / "b.fragility", seed=2)
    for call in (lambda: fragility.analyze(a, k=3), lambda: fragility.compare(a, b, k=3),
                 lambda: build_report([a, b], tmp_path / "r", k=3)):
        built.clear()
        call()
        assert len(built) == 1, len(built)


def test_the_manager_owns_its_registries_built_once_and_rebuilt_when_plugins_change():
    import types

    from fragility._manager import manager
    from fragility.analysis import Analyzer

    calls = []

    class Counter(Analyzer):
        name = "counter"

    def register(registrar):
        calls.append(1)
        registrar.add("counter", Counter)

    pm = fragility.make_plugin_manager(autoload=False)
    pm.register(types.SimpleNamespace(fragility_register_analyzers=fragility.hookimpl(register)), name="counting")
    first = pm.analyzers()
    assert pm.analyzers() is first and "counter" in first.analyzers and len(calls) == 1  # the hooks ran once
    assert pm.report_sections() is pm.report_sections() and "fragile" in pm.report_sections().sections
    pm.unregister(name="counting")
    assert "counter" not in pm.analyzers().analyzers  # a plugin leaving rebuilds the registry
    import pluggy

    with pytest.raises(PluginError, match=r"plugin_manager=PluginManager was not built by fragility.make_plugin_manager\(\)"):
        manager(pluggy.PluginManager("fragility"))


def test_a_broken_plugin_is_reported_once_per_process(tmp_path, monkeypatch, capsys):
    install_dist(tmp_path, monkeypatch, "fragility-broken-twice", "frag_broken_twice", "raise ImportError('needs bar')\n")
    monkeypatch.delenv("FRAGILITY_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    managers = [fragility.make_plugin_manager() for _ in range(3)]
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and err.startswith("warning: plugin 'frag_broken_twice'")  # one line, not three
    assert all("frag_broken_twice" in pm.broken for pm in managers)  # every manager still knows it is broken
