"""Every command run as a subprocess on stores the tests create, bad inputs included."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

import fragility
from fragility.cli import main
from fragility.testing import make_random_store
from .conftest import json_results

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run(*args, env=None, check=True, cwd=None):
    e = {**os.environ, "NO_COLOR": "1", "FRAGILITY_DISABLE_PLUGIN_AUTOLOAD": "1", **(env or {})}
    p = subprocess.run([sys.executable, "-m", "fragility", *map(str, args)], capture_output=True, text=True, env=e, timeout=600,
                       cwd=cwd)
    if check and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}")
    return p


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    return make_random_store(d / "a.fragility", seed=1), make_random_store(d / "b.fragility", seed=2)


def test_help_on_every_command_has_an_example():
    for cmd in ("demo", "inspect", "analyze", "compare", "report", "plugins"):
        out = run(cmd, "--help").stdout
        assert "examples:" in out and f"fragility {cmd}" in out, cmd


def test_inspect(stores):
    a, _ = stores
    text = run("inspect", a).stdout
    assert "schema v2" in text and "random" in text and "train" in text
    assert "passes/0000.h5:fe" not in text and "datasets in 4 pass files (--datasets lists them)" in text
    assert "passes/0000.h5:fe" in run("inspect", a, "--datasets").stdout
    info = json_results(run("inspect", a, "--json").stdout, "inspect")["inspect"]
    assert info["schema_version"] == 2 and info["feature_dim"] == 12
    assert [(p["split"], p["epoch"], p["rows"], p["complete"]) for p in info["passes"]] == [
        ("train", 0, 73, True), ("test", 0, 73, True), ("train", 1, 73, True), ("test", 1, 73, True)]
    assert {d["path"] for d in info["datasets"]} >= {"passes/0000.h5:fe", "passes/0003.h5:classifier/weight"}
    assert info["size_bytes"] > 0


def test_analyze_json_matches_the_api(stores):
    a, _ = stores
    from fragility.analysis import analyze

    got = json_results(run("analyze", a, "-a", "topk", "--split", "test", "--epoch", "last", "--k", "3", "--json").stdout, "analyze")
    want = analyze(a, ["topk"], split=["test"], epoch="last", k=3)["topk"].to_dict()
    assert got["topk"] == json.loads(json.dumps(want))
    one = json_results(run("analyze", a, "-a", "topk", "--pass", "0002", "--k", "3", "--json").stdout, "analyze")
    assert list(one["topk"]["data"]["groups"]) == ["train@1"]
    text = run("analyze", a, "-a", "topk", "-a", "diversity", "--k", "3").stdout
    assert "test@1: class top-3" in text and "diversity" in text
    assert "test@0" not in text  # the CLI shows the last epoch unless told otherwise
    assert "test@0: class top-3" in run("analyze", a, "-a", "topk", "--k", "3", "--epoch", "all").stdout
    got = json_results(run("analyze", a, "-a", "topk", "--k", "3", "--class", "c1", "--class", "3", "--incorrect", "--epoch", "all", "--json").stdout, "analyze")
    want = analyze(a, ["topk"], k=3, classes=["c1", 3], correct=False)["topk"].to_dict()
    assert got["topk"] == json.loads(json.dumps(want))


def test_analyze_out_writes_csv_json_plots_and_report(stores, tmp_path):
    a, _ = stores
    out = tmp_path / "res"
    run("analyze", a, "--k", "3", "--out", out)
    assert json.loads((out / "results" / "topk.json").read_text())["analyzer"] == "topk"
    assert list((out / "results").glob("magnitude-*.csv"))
    _check_report(out)


def test_compare(stores):
    a, b = stores
    text = run("compare", a, b, "--k", "3", "--labels", "imb", "bal").stdout
    assert "imb vs bal" in text
    data = json_results(run("compare", a, b, "--k", "3", "--json").stdout, "compare")["compare"]  # keyed like analyze --json
    assert data["analyzer"] == "compare" and len(data["data"]["classes"]) == 5


def test_plugins():
    rows = json_results(run("plugins", "--json").stdout, "plugins")["plugins"]
    by = {r["name"]: r for r in rows}
    assert by["fragility_plugins.topk"]["analyzers"] == ["topk"]
    assert "fragility_resolve_head" in by["fragility_plugins.timm_taps"]["hooks"]
    assert "fragility_plugins.report_sections" in run("plugins").stdout


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.tags, self.links = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        if tag in ("link", "script") and (a.get("href") or a.get("src")):
            self.links.append(a)


def _check_report(out: Path, min_images: int = 5):
    html = (out / "index.html").read_text()
    p = _Collect()
    p.feed(html)
    p.close()
    assert p.tags[0] == "html" and "table" in p.tags
    assert len(p.imgs) >= min_images and not p.links
    for src in p.imgs:
        assert src.startswith("data:image/png;base64,"), "only embedded images"
        png = base64.b64decode(src.split(",", 1)[1])
        assert png.startswith(PNG_MAGIC)
    pngs = list((out / "plots").glob("*.png"))
    assert len(pngs) >= min_images
    from PIL import Image

    for f in pngs:
        assert f.read_bytes().startswith(PNG_MAGIC)
        im = Image.open(f).convert("L")
        lo, hi = im.getextrema()
        assert im.size[0] > 200 and hi - lo > 100, f"{f.name} looks empty"


def test_report_with_comparison(stores, tmp_path):
    a, b = stores
    out = tmp_path / "rep"
    printed = run("report", a, "--compare", b, "--labels", "imbalanced", "balanced", "--k", "3", "--out", out).stdout
    assert printed.strip().endswith("index.html")
    _check_report(out, min_images=6)
    html = (out / "index.html").read_text()
    assert "imbalanced vs balanced" in html and "Which classes are fragile" in html and "magnitude at the training top-K" in html


def test_bad_inputs_are_one_line_errors(stores, tmp_path):
    a, _ = stores
    cases = [
        (["inspect", tmp_path / "missing.fragility"], "does not exist"),
        (["analyze", tmp_path], "is a directory without store.h5, so not a fragility store"),
        (["analyze", a, "-a", "topp"], "unknown analyzer 'topp' (did you mean 'topk'?)"),
        (["analyze", a, "--split", "validation"], "split 'validation' is not in store"),
        (["analyze", a, "--k", "99"], "K=99 is out of range"),
        (["analyze", a, "--epoch", "x"], "--epoch 'x' must be an integer, 'last', 'all' or a range A:B or A:B:S"),
        (["analyze", a, "--class", "cat"], "class 'cat' is not in store"),
        (["demo", "--data", "cifar10"], "--data cifar10 needs --root PATH"),
        (["demo", "--data", "cifar10", "--root", tmp_path], "CIFAR-10 not found"),
        (["analyze", a, "--k", "three"], "argument --k: invalid int value: 'three' (see `fragility analyze --help`)"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ]
    notstore = tmp_path / "x.txt"
    notstore.write_text("hi")
    cases.append((["inspect", notstore], "is a file, not a fragility store"))
    for args, msg in cases:
        p = run(*args, check=False)
        assert p.returncode == 2, (args, p.stderr)
        assert msg in p.stderr, (args, p.stderr)
        assert "Traceback" not in p.stderr
        assert len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert p.stdout == ""


def test_empty_split_selection(tmp_path):
    import timm
    import torch

    import fragility

    model = timm.create_model("test_resnet", pretrained=False, num_classes=3).eval()
    path = tmp_path / "e.fragility"
    with fragility.Recorder(model, path) as rec:
        rec.evaluate([(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0]))], split="test")
        rec.start_pass("val")
        rec.end_pass()
    p = run("analyze", path, "--split", "val", check=False)
    assert p.returncode == 2 and "holds no rows" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_every_option_and_argument_has_help_text():
    from fragility.cli import _parser

    sub = next(a for a in _parser()._actions if a.dest == "command")
    for name, parser in sub.choices.items():
        for action in parser._actions:
            if action.dest == "help":
                continue
            assert action.help, f"fragility {name}: {action.option_strings or action.dest} has no help text"


def test_model_typo_gets_suggestions(tmp_path):
    p = run("demo", "--model", "resnt18", "--out", tmp_path / "d", check=False)
    code, err = p.returncode, p.stderr
    assert code == 2 and "--model 'resnt18' is not a timm model (did you mean 'resnet18'" in err and err.count("\n") == 1


def test_compare_matches_feature_indices_only_between_comparable_runs(tmp_path):
    """Same architecture and initial weights: overlaps as before. Another initialisation or architecture: no
    feature-index overlap is printed (feature j of one network is unrelated to feature j of the other) unless
    forced, and then it is labelled."""
    import timm
    import torch

    import fragility

    def record(path, arch, seed):
        torch.manual_seed(seed)
        model = timm.create_model(arch, pretrained=False, num_classes=3)
        g = torch.Generator().manual_seed(7)
        x, y = torch.randn(24, 3, 32, 32, generator=g), torch.arange(24) % 3
        with fragility.Recorder(model, path) as rec:
            rec.evaluate([(x, y)], split="train", epoch=0)
            rec.evaluate([(x, y)], split="test", epoch=0)
        return path

    a = record(tmp_path / "a.fragility", "test_resnet", 0)
    same = record(tmp_path / "same.fragility", "test_resnet", 0)
    other_init = record(tmp_path / "init.fragility", "test_resnet", 1)
    other_arch = record(tmp_path / "arch.fragility", "test_efficientnet", 0)
    ok = fragility.compare(a, same, k=3)
    assert ok.data["feature_overlap"] and not ok.notes
    assert all(c["overlap_train"] == 1.0 for c in ok.data["classes"])  # the same network on the same images
    assert "top-K overlap train" in ok.tables[0].columns
    for other, why in ((other_init, "different initial weights"), (other_arch, "different architecture")):
        r = fragility.compare(a, other, k=3)
        assert not r.data["feature_overlap"] and all(c["overlap_train"] is None for c in r.data["classes"])
        assert not any("overlap" in col for col in r.tables[0].columns)
        assert any(why in n for n in r.notes), r.notes
        text = run("compare", a, other, "--k", "3").stdout
        assert "top-K overlap train" not in text and "overlap test" not in text and why in text.replace("\n", " ")
        forced = json_results(run("compare", a, other, "--k", "3", "--force-overlap", "--json").stdout, "compare")["compare"]
        assert forced["data"]["forced"] and any("(forced: not comparable)" in c for c in forced["tables"][0]["columns"])
    # the report says whether the runs share their initial weights
    from fragility.report import build_report

    html = open(build_report([a, same], tmp_path / "r1", k=3)).read()
    assert "All runs start from the same initial weights" in html and "overlap train" in html
    html = open(build_report([a, other_init], tmp_path / "r2", k=3)).read()
    assert "Feature indices are not compared across runs: the runs have different initial weights" in html


def test_store_commands_do_not_import_torch(stores):
    """inspect and verify read HDF5 only: neither they nor `import fragility` load torch (0.4 s and 58 MB RSS
    for inspect instead of 2 s and 670 MB, docs/benchmarks.md)."""
    code = ("import sys, fragility, fragility.cli\n"
            "assert 'torch' not in sys.modules, 'import fragility'\n"
            "for cmd in ('inspect', 'verify'):\n"
            "    assert fragility.cli.main([cmd, sys.argv[1]]) == 0\n"
            "    assert fragility.cli.main([cmd, sys.argv[1], '--json']) == 0\n"
            "    assert 'torch' not in sys.modules, cmd\n"
            "print('light')\n")
    p = subprocess.run([sys.executable, "-c", code, str(stores[0])], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "FRAGILITY_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert p.returncode == 0 and p.stdout.strip().endswith("light"), p.stderr[-2000:]
    assert fragility.Recorder.__name__ == "Recorder" and callable(fragility.analyze)  # the lazy names resolve


def test_watch_computes_its_metrics_without_torch(tmp_path):
    """`watch` on a float16 store (the Recorder's default) computes accuracy, unique top-K and magnitudes through
    the compiled kernels without loading torch (76 MB RSS instead of 730 MB on the 60-epoch store,
    docs/benchmarks.md), and they are the numbers computed with torch loaded."""
    import json

    from fragility.watch import Watcher

    path = make_random_store(tmp_path / "w.fragility", dtype="float16")
    code = ("import json, sys, fragility.cli\n"
            "from fragility.watch import Watcher\n"
            "assert fragility.cli.main(['watch', sys.argv[1], '--count', '1']) == 0\n"
            "snap = Watcher(sys.argv[1]).snapshot()\n"
            "assert 'torch' not in sys.modules\n"
            "print(json.dumps(snap.metrics))\n")
    p = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "FRAGILITY_DISABLE_PLUGIN_AUTOLOAD": "1", "NO_COLOR": "1"})
    assert p.returncode == 0, p.stderr[-2000:]
    light = json.loads(p.stdout.strip().splitlines()[-1])
    import torch  # noqa: F401 - loaded here: the same metrics through the torch paths where they run

    full = json.loads(json.dumps(Watcher(path).snapshot().metrics))
    assert light == full and light["classes"] and all(c["accuracy"] is not None for c in light["classes"][:3])


def test_long_selections_print_a_bounded_summary_and_ranges_select_epochs(tmp_path):
    """--epoch A:B:S picks the recorded epochs in the range; over many groups the terminal shows each split's
    last group in full and one class x epoch table per split (10 evenly spaced epochs), so the output does
    not grow with the epochs; --json keeps every group."""
    path = make_random_store(tmp_path / "long.fragility", counts=(20, 10, 5), d=8,
                             passes=[(s, e) for e in range(30) for s in ("train", "test")])
    p = run("analyze", path, "--epoch", "0:30:10", "--k", "3", "--json")
    data = json_results(p.stdout, "analyze")
    assert sorted(data["topk"]["data"]["groups"]) == sorted(f"{s}@{e}" for s in ("train", "test") for e in (0, 10, 20))
    few = run("analyze", path, "--epoch", "0:3", "--k", "3").stdout  # 6 groups: every table
    many = run("analyze", path, "--epoch", "all", "--k", "3").stdout  # 60 groups
    assert few.count("\n") > 0 and many.count("\n") < 1.6 * few.count("\n"), (few.count("\n"), many.count("\n"))
    assert "test: accuracy per class and epoch (10 of 30 epochs, evenly spaced)" in many
    assert "@0 " in many and "@29 " in many and "train@29: class top-3" in many and "train@28: class top-3" not in many
    assert "60 groups selected: 58 per-group tables not printed" in many
    p = run("analyze", path, "--epoch", "40:50", check=False)
    assert p.returncode == 2 and "no recorded epoch of store" in p.stderr and "lies in 40:50:1" in p.stderr
    p = run("analyze", path, "--epoch", "0:10:0", check=False)
    assert p.returncode == 2 and "a range A:B or A:B:S" in p.stderr
    p = run("report", path, "--epoch", "25:30:2", "--k", "3", "--out", tmp_path / "rep")
    assert "test@29" in (tmp_path / "rep" / "index.html").read_text() and "test@1<" not in (tmp_path / "rep" / "index.html").read_text()


def test_piped_output_follows_columns(stores):
    """$COLUMNS sets the width of piped output too: no line wider than it (default 160 without it)."""
    p = run("analyze", stores[0], "--k", "3", env={"COLUMNS": "100"})
    widths = [len(line) for line in p.stdout.splitlines()]
    assert widths and max(widths) <= 100 and len(widths) > 20
    p = run("analyze", stores[0], "--k", "3", env={"COLUMNS": ""})
    assert max(len(line) for line in p.stdout.splitlines()) <= 160


def test_narrow_terminals_get_every_feature_index(tmp_path, monkeypatch, capsys):
    """In 100 (or 70) columns no line is wider, and no top-K feature index is cut: the feature lists move to
    their own table under the numbers when the whole table cannot fit (in 200 columns it stays one table)."""
    path = make_random_store(tmp_path / "w.fragility", counts=(30, 20, 10), d=600, ties=False)
    assert main(["analyze", str(path), "-a", "topk", "--k", "10", "--json"]) == 0
    data = json_results(capsys.readouterr().out, "analyze")["topk"]["data"]
    for cols in (100, 70, 200):
        monkeypatch.setenv("COLUMNS", str(cols))  # as piped output reads it
        assert main(["analyze", str(path), "-a", "topk", "--k", "10"]) == 0
        text = capsys.readouterr().out
        assert max(len(line) for line in text.splitlines()) <= cols
        for g in data["groups"].values():
            for c in g["classes"]:
                assert ", ".join(map(str, c["topk"]["all"]["indices"])) in text, (cols, c["class"])
        assert ("(continued)" in text) == (cols < 200)


def test_analyze_explains_its_labels(stores):
    out = run("analyze", stores[0], "--k", "3").stdout
    assert "labels: train@9 = the passes of split train at epoch 9" in " ".join(out.split())
    assert "mscs = minimal sufficient CE set" in " ".join(out.split()) and "docs/analyzers.md" in out
