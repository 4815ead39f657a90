"""A third-party analyzer distribution, discovered through a real entry point, runs next to the built-ins."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import numpy as np
import pytest

import fragility
from fragility import PluginError
from fragility.analysis import analyze
from fragility.testing import check_analyzer, make_random_store

from .test_plugins import install_dist
from .conftest import json_results

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "fragility-classcount"
DOC = Path(__file__).resolve().parents[1] / "docs" / "writing-plugins.md"


def _install_example(tmp_path, monkeypatch):
    meta = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())
    (ep_name, module), = meta["project"]["entry-points"]["fragility"].items()
    install_dist(tmp_path, monkeypatch, meta["project"]["name"], module, (EXAMPLE / f"{module}.py").read_text(), ep_name)
    monkeypatch.delenv("FRAGILITY_DISABLE_PLUGIN_AUTOLOAD", raising=False)


def test_doc_shows_exactly_the_example_files():
    doc = DOC.read_text()
    blocks = re.findall(r"```(?:toml|python)\n(.*?)```", doc, flags=re.S)
    assert blocks[0] == (EXAMPLE / "pyproject.toml").read_text()
    assert blocks[1] == (EXAMPLE / "fragility_classcount.py").read_text()


def test_installed_plugin_runs_through_the_engine_next_to_builtins(tmp_path, monkeypatch):
    _install_example(tmp_path, monkeypatch)
    path = make_random_store(tmp_path / "s.fragility")
    results = analyze(path, ["classcount", "topk"], k=3)
    assert set(results) == {"classcount", "topk"}
    store = fragility.Store(path)
    for p in store.passes:
        rows = store.read(p, ["label", "pred"])
        want = np.zeros((5, 5), dtype=int)
        for y, q in zip(rows["label"], rows["pred"]):
            want[y, q] += 1
        group = results["classcount"].data["groups"][f"{p.split}@{p.epoch}"]
        np.testing.assert_array_equal([c["confusion"] for c in group["classes"]], want)
        assert (group["split"], group["epoch"]) == (p.split, p.epoch)
        assert results["topk"].data["groups"][f"{p.split}@{p.epoch}"]["classes"][0]["n"] == want[0].sum()
    check_analyzer("classcount", path)


def test_duplicate_analyzer_name_names_both_owners(tmp_path, monkeypatch):
    source = """
        import fragility
        from fragility.analysis import Analyzer

        class Mine(Analyzer):
            name = "topk"

        @fragility.hookimpl
        def fragility_register_analyzers(registrar):
            registrar.add("topk", Mine)
    """
    install_dist(tmp_path, monkeypatch, "fragility-dup", "frag_dup", source)
    monkeypatch.delenv("FRAGILITY_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    path = make_random_store(tmp_path / "s.fragility")
    with pytest.raises(PluginError, match=r"analyzer 'topk' is registered twice: by (fragility_plugins.topk and by frag_dup|frag_dup and by fragility_plugins.topk)"):
        analyze(path, ["topk"])


def test_compare_two_stores(tmp_path):
    a = make_random_store(tmp_path / "a.fragility", seed=1)
    b = make_random_store(tmp_path / "b.fragility", seed=2)
    # random stores record no initial weights: their feature indices are matched only when forced, and labelled so
    r = fragility.compare(a, b, k=3, labels=("imb", "bal"), force_overlap=True)
    assert r.data["forced"] and "top-K overlap train (forced: not comparable)" in r.tables[0].columns
    ra = analyze(a, ["topk"], k=3)["topk"].data["groups"]
    rb = analyze(b, ["topk"], k=3)["topk"].data["groups"]
    for c in range(4):
        ia, ib = ra["train@1"]["classes"][c]["topk"]["all"]["indices"], rb["train@1"]["classes"][c]["topk"]["all"]["indices"]
        assert r.data["classes"][c]["overlap_train"] == len(set(ia) & set(ib)) / 3
        assert r.data["classes"][c]["unique_imb"] == ra["train@1"]["classes"][c]["unique"]
        assert r.data["classes"][c]["accuracy_bal"] == rb["test@1"]["classes"][c]["accuracy"]
    assert r.data["classes"][4]["overlap_train"] is None


def test_entry_point_plugin_is_listed_used_by_analyze_and_report(tmp_path, monkeypatch, capsys):
    """A third-party analyzer installed as a real distribution: `plugins` lists what it registers (by
    owner, whatever its module is called), analyze runs it on a store with D < 10 (it does not use K),
    and the report shows its tables without a custom section, from the one analysis."""
    import json

    from fragility.cli import main

    _install_example(tmp_path, monkeypatch)
    assert main(["plugins", "--json"]) == 0
    rows = {r["name"]: r for r in json_results(capsys.readouterr().out, "plugins")["plugins"]}
    (ep_name,) = [n for n, r in rows.items() if r["source"] == "entry point"]
    assert rows[ep_name]["analyzers"] == ["classcount"] and rows[ep_name]["version"] == "fragility-classcount 1.2.3"
    path = make_random_store(tmp_path / "small.fragility", d=6)
    assert main(["analyze", path, "-a", "classcount", "--json"]) == 0  # default K=10 > D=6: not its business
    assert "classcount" in json_results(capsys.readouterr().out, "analyze")
    with pytest.raises(fragility.AnalyzerError, match=r"K=10 is out of range"):
        analyze(path, ["classcount", "topk"])  # topk uses K
    out = tmp_path / "rep"
    assert main(["report", path, "-a", "classcount", "-a", "topk", "--k", "3", "--out", str(out)]) == 0
    page = (out / "index.html").read_text()
    assert "small · classcount · test@1: errors" in page and "small · topk · test@1:" in page


def test_compare_rarefies_both_runs_to_one_size(tmp_path):
    """unique@m of both runs at the smallest training class of either, equal to the topk analyzer's own
    rarefied count when that analyzer is told the same m."""
    a = make_random_store(tmp_path / "a.fragility", counts=(40, 20, 10, 3, 0), seed=1)
    b = make_random_store(tmp_path / "b.fragility", counts=(30, 30, 30, 30, 30), seed=2)
    r = fragility.compare(a, b, k=3, labels=("imb", "bal"), force_overlap=True)
    assert r.data["rarefy_m"] == 3
    for path, lab in ((a, "imb"), (b, "bal")):
        own = analyze(path, ["topk"], k=3, options={"rarefy_m": 3})["topk"].data["groups"]["train@1"]["classes"]
        for c, entry in enumerate(r.data["classes"]):
            want = own[c]["unique_rarefied"]
            assert (entry[f"unique_rarefied_{lab}"] is None) == (want is None)
            if want is not None:
                assert entry[f"unique_rarefied_{lab}"] == pytest.approx(want, rel=1e-12)
