"""The report's figures: minority classes, captions written from the numbers (and saying when the data do
not show a finding), shared axes, legends off the bars, top-K segments coloured by feature."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fragility.analysis import analyze, last_group
from fragility.analysis.records import topk_records
from fragility.report import ReportContext
from fragility.store import Store
from fragility.testing import make_random_store
from fragility_plugins import report_sections as rs


def test_minority_is_below_the_geometric_mean_of_largest_and_smallest():
    counts = [139, 100, 71, 51, 37, 26, 19, 14, 10, 7]
    assert rs.minority(counts) == {c for c, n in enumerate(counts) if n < math.sqrt(139 * 7)} == {5, 6, 7, 8, 9}
    assert rs.minority([142, 146, 139, 145]) == set()  # balanced: none
    assert rs.minority([40, 20, 10, 3, 0]) == {2, 3}  # sqrt(40*3) = 10.95; the empty class is not a minority class
    assert rs.minority([10, 6]) == set()  # less than 2:1 is not imbalance
    assert rs.minority([]) == set()


def test_fragile_caption_reports_the_numbers_and_says_when_the_finding_is_absent():
    names = ["a", "b", "c", "d"]
    n = {"imb": [100, 100, 40, 40], "bal": [100, 100, 100, 100]}
    acc = {"imb": [1.0, 0.9, 0.5, 0.7], "bal": [1.0, 1.0, 0.9, 0.95]}
    shows = {"imb": [0.0, 0.1, 0.6, 0.4], "bal": [0.05, 0.05, 0.1, 0.0]}
    cap = rs.fragile_caption(acc, shows, names, {2, 3}, n)
    assert cap.startswith("Marked: classes c, d, the minority classes")
    assert "Least accurate class in imb: c (0.5; 0.9 in bal)" in cap
    assert "imb: the marked classes' test accuracy 0.6 [" in cap and "vs 0.95 [" in cap and "(lower: a finding, the intervals separate)" in cap
    assert "imb: 0.5 [" in cap and "of the marked classes' test rows fall below" in cap and "a finding: the intervals separate" in cap
    assert "do not show" not in cap.split("bal:")[0] and "contradicts" not in cap
    absent = {"imb": [0.5, 0.4, 0.1, 0.0], "bal": shows["bal"]}
    cap = rs.fragile_caption(acc, absent, names, {2, 3}, n)
    assert "imb: the data do not show the paper's magnitude finding here" in cap and "(0.05 [" in cap and "than the others' (0.45 [" in cap
    assert "No run is imbalanced enough" in rs.fragile_caption(acc, shows, names, set(), n)


def test_fragile_caption_calls_a_difference_a_finding_only_when_intervals_separate():
    """Hand-built pooled shares: 'finding' (intervals separate), 'not shown' (they overlap on small classes),
    and 'control contradicts' (the balanced control shows the same or a stronger effect)."""
    names = ["a", "b", "c", "d"]
    acc = {"imb": [1.0, 1.0, 1.0, 1.0], "bal": [1.0, 1.0, 1.0, 1.0]}
    # the same shares on 6-row minority classes: 2 of 12 rows vs 5 of 100 — the intervals overlap
    small = rs.fragile_caption(acc, {"imb": [0.05, 0.05, 1 / 6, 1 / 6]}, names, {2, 3}, {"imb": [50, 50, 6, 6]})
    assert "imb: not shown — 0.167 [" in small and "the intervals overlap" in small and "a finding" not in small.split("accuracy")[-1]
    lo, hi = rs.wilson(2, 12)
    assert f"0.167 [{rs._fmt(lo)}–{rs._fmt(hi)}]" in small
    # the same shares on 120-row classes: the intervals separate
    big = rs.fragile_caption(acc, {"imb": [0.05, 0.05, 0.3, 0.3]}, names, {2, 3}, {"imb": [200, 200, 120, 120]})
    assert "a finding: the intervals separate" in big
    # the control shows a stronger effect than the imbalanced run: it contradicts the finding
    both = {"imb": [0.05, 0.05, 0.3, 0.3], "bal": [0.02, 0.02, 0.4, 0.4]}
    n = {"imb": [200, 200, 120, 120], "bal": [200, 200, 200, 200]}
    cap = rs.fragile_caption(acc, both, names, {2, 3}, n)
    assert "The control bal shows the same or a stronger effect" in cap and "the control contradicts it" in cap
    # a control without the effect leaves the finding standing
    cap = rs.fragile_caption(acc, {"imb": both["imb"], "bal": [0.05, 0.05, 0.05, 0.05]}, names, {2, 3}, n)
    assert "contradicts" not in cap and "a finding: the intervals separate" in cap


def test_magnitude_caption_counts_the_classes_whose_intervals_separate():
    ratios = {"imb": ([1.0, 0.9, 0.95], [0.6, float("nan"), 0.8])}
    cis = {"imb": ([[0.95, 1.05], [0.85, 0.95], [0.9, 1.0]], [[0.5, 0.7], None, [0.7, 0.92]])}
    cap = rs.magnitude_caption(ratios, cis)
    assert "the 95 % bootstrap intervals separate (misclassified below correct) in 1 of 2 classes" in cap and "a finding there only" in cap
    cis = {"imb": ([[0.95, 1.05], [0.85, 0.95], [0.9, 1.0]], [[0.5, 0.97], None, [0.7, 0.92]])}
    assert "in 0 of 2 classes with both kinds of rows — so no class shows it beyond the noise" in rs.magnitude_caption(ratios, cis)


def test_magnitude_caption_compares_misclassified_with_correct():
    cap = rs.magnitude_caption({"imb": ([1.0, 0.9, 0.95], [0.6, float("nan"), 0.8])})
    assert "imb: misclassified test rows reach a median 0.7 of the training magnitude, correct ones 0.95" in cap
    cap = rs.magnitude_caption({"imb": ([0.8, 0.9], [1.1, 1.0])})
    assert "do not show the paper's finding" in cap and "reach 1.05" in cap and "(0.85)" in cap
    assert "no misclassified test rows" in rs.magnitude_caption({"bal": ([1.0], [float("nan")])})


def test_shared_features_and_topk_caption_by_hand():
    from types import SimpleNamespace as rec  # a topk group's records, as fragility.analysis.records.topk_records gives them

    group = rec(classes=[
        rec(n=5, topk=rec(all=rec(indices=[3, 1, 7]))),
        rec(n=4, topk=rec(all=rec(indices=[3, 2, 8]))),
        rec(n=1, topk=rec(all=rec(indices=[7, 3, 9]))),
        rec(n=0, topk=rec(all=rec(indices=None))),
    ])
    shared = rs.shared_features(group)
    assert shared == {3: [0, 1, 2], 7: [0, 2]}
    cap = rs.topk_caption({"imb": (shared, 4, [5, 4, 1, 0])}, ["a", "b", "c", "d"], {2}, 3)
    assert "imb: 2 features are in the top-3 of two or more classes (feature 3 in 3: a, b, c)" in cap
    # class c shares 2 of its 3; the non-minority non-empty classes a, b share 2 and 1
    assert "imb: the marked classes share 2 of their top-3 features with other classes on average, the others 1.5 (more)" in cap


def test_unique_and_diversity_captions():
    cap = rs.unique_caption({"imb": [50.0, 40.0, 20.0, 10.0]}, list("abcd"), {2, 3}, 5)
    assert "imb: the marked classes' rows use 15 distinct top-5 features on average, the others 45" in cap
    assert "do not show less diverse marked classes" in rs.unique_caption({"imb": [5.0, 5.0, 20.0, 10.0]}, list("abcd"), {2, 3}, 5)
    cap = rs.diversity_caption({"imb": ([100, 50, 20, 5], [9.0, 8.0, 6.0, 3.0])}, {2, 3})
    assert "Spearman ρ = 1 between training rows and participation ratio (larger classes are more diverse)" in cap
    assert "the marked classes' participation ratio 4.5 vs 8.5" in cap


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    d = tmp_path_factory.mktemp("sections")
    paths = {
        "imbalanced": make_random_store(d / "imb.fragility", counts=(60, 30, 12, 5), d=16, seed=3),
        "balanced": make_random_store(d / "bal.fragility", counts=(30, 30, 30, 30), d=16, seed=4),
    }
    results = {lab: analyze(p, k=4) for lab, p in paths.items()}
    stores = {lab: Store(p) for lab, p in paths.items()}
    yield ReportContext(list(paths), stores, results)
    for s in stores.values():
        s.close()


def _gids(ax, prefix):
    return [p for p in ax.patches if (p.get_gid() or "").startswith(prefix)]


def test_fragile_figure_marks_minority_classes_and_captions_from_the_results(ctx):
    (caption, fig), = rs.fragile(ctx)
    minor = rs.minority([60, 30, 12, 5])
    assert minor == {2, 3}
    acc_ax, p5_ax = fig.axes[:2]
    for ax in (acc_ax, p5_ax):
        assert sorted(p.get_gid() for p in _gids(ax, "minority-")) == [f"minority-{c}" for c in sorted(minor)]
        assert ax.get_legend() is None  # the legend sits outside the axes, over no bar
    assert fig.legends
    # bar heights are the analyzers' numbers
    imb = ctx.results["imbalanced"]
    acc = [c["accuracy"] for c in last_group(imb["topk"].data, "test")["classes"]]
    heights = [p.get_height() for p in _gids(acc_ax, "run-0")]
    np.testing.assert_allclose(heights, acc)
    p5 = [c["share_below_p5"] for c in last_group(imb["magnitude"].data, "test")["classes"]]
    np.testing.assert_allclose([p.get_height() for p in _gids(p5_ax, "run-0")], [np.nan if v is None else v for v in p5])
    # the caption's minority mean is the brute-force mean of the minority classes' shares
    finite = [p5[c] for c in minor if p5[c] is not None]
    # error bars: each class's 95 % Wilson interval, as the analyzers report it
    cis = [c["share_below_p5_ci"] for c in last_group(imb["magnitude"].data, "test")["classes"]]
    (bars,) = [col for col in p5_ax.collections if col.get_gid() == "ci-0"]
    segs = bars.get_segments()
    want = [ci for ci in cis if ci is not None]
    assert len(segs) == len(want)
    for seg, ci in zip(segs, want):
        assert sorted(seg[:, 1]) == pytest.approx(ci, abs=1e-9)
    mean = f"{float(np.mean(finite)):.3g}"
    assert f"{mean} [" in caption and ("of the marked classes' test rows" in caption or "do not show" in caption)


def test_magnitude_panels_share_the_y_axis(ctx):
    (caption, fig), = rs.magnitude(ctx)
    a, b = fig.axes[:2]
    assert a.get_shared_y_axes().joined(a, b)
    assert a.get_ylim() == b.get_ylim()
    # a sentence per run, and one more per run with misclassified rows: how many classes' intervals separate
    n_imb = caption.count("imbalanced:")  # "imbalanced:" contains "balanced:"
    assert n_imb in (1, 2) and caption.count("balanced:") - n_imb in (1, 2)


def test_topk_bars_are_coloured_by_feature_and_shared_features_stand_out(ctx):
    (caption, fig), = rs.topk_bars(ctx)
    assert fig.axes[0].get_shared_y_axes().joined(fig.axes[0], fig.axes[1])
    for ax, lab in zip(fig.axes, ctx.labels):
        g = topk_records(ctx.results[lab]["topk"]).last("train")
        shared = rs.shared_features(g)
        colours: dict[int, set] = {}
        for p in _gids(ax, "class-"):
            f = int(p.get_gid().rsplit("-", 1)[1])
            colours.setdefault(f, set()).add(p.get_facecolor())
        assert colours, lab
        for f, cs in colours.items():
            assert len(cs) == 1, f"feature {f} has {len(cs)} colours"  # one feature, one colour
            grey = cs == {rs.plt.matplotlib.colors.to_rgba(rs.NOT_SHARED)}
            assert grey == (f not in shared), f
        assert f"{lab}: {len(shared)} features are in the top-4" in caption or "none shared" in caption


def test_every_section_renders_on_the_pair(ctx):
    for func in (rs.fragile, rs.magnitude, rs.topk_bars, rs.unique, rs.diversity, rs.trajectory):
        items = func(ctx)
        assert items, func.__name__
        for caption, fig in items:
            assert caption and "DESIGN" not in caption
            fig.canvas.draw()
            rs.plt.close(fig)


def test_diversity_caption_compares_classes_at_equal_size(tmp_path):
    """With one subsample size for both runs (as the demo analyses them) the caption adds the size-matched
    participation ratios of the marked and the other classes: the brute-force means of the analyzers' values."""
    paths = {
        "imbalanced": make_random_store(tmp_path / "imb.fragility", counts=(60, 30, 12, 5), d=16, seed=3),
        "balanced": make_random_store(tmp_path / "bal.fragility", counts=(30, 30, 30, 30), d=16, seed=4),
    }
    results = {lab: analyze(p, ["topk", "diversity"], k=4, options={"rarefy_m": 5}) for lab, p in paths.items()}
    stores = {lab: Store(p) for lab, p in paths.items()}
    try:
        (caption, _), = rs.diversity(ReportContext(list(paths), stores, results))
    finally:
        for s in stores.values():
            s.close()
    assert "At equal size — the mean ratio of 5-row subsamples" in caption
    g = last_group(results["imbalanced"]["diversity"].data, "train")["classes"]
    marked = np.mean([g[c]["participation_ratio_matched"]["mean"] for c in (2, 3)])
    others = np.mean([g[c]["participation_ratio_matched"]["mean"] for c in (0, 1)])
    assert f"imbalanced: {rs._fmt(marked)} vs {rs._fmt(others)}" in caption


def _svg_texts(fig) -> list[str]:
    """What a figure displays: the text elements of its SVG rendering (fonts as text, maths rendered)."""
    import io
    import re
    import xml.etree.ElementTree as ET

    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        fig.savefig(buf, format="svg")
    root = ET.fromstring(buf.getvalue())
    return [re.sub(r"\s+", " ", "".join(t.itertext())) for t in root.iter("{http://www.w3.org/2000/svg}text")]


def test_store_names_print_literally_and_matplotlib_text_renders_as_maths(tmp_path):
    """Maths text stays on: matplotlib's own log-axis ticks render as 10^1, 10^2 (no "$\\mathdefault" source),
    while names from a store — class names and run labels holding "$" — print exactly as stored, in every
    figure of every built-in section."""
    from fragility._manager import Hooks
    from fragility.report import ReportSectionRegistrar, literal_text

    names = ["$x^2$", "a$b", "c\\$d", "plain"]
    paths = {
        "run $1$": make_random_store(tmp_path / "a.fragility", counts=(60, 30, 12, 5), d=16, seed=3, class_names=names),
        "bal": make_random_store(tmp_path / "b.fragility", counts=(30, 30, 30, 30), d=16, seed=4, class_names=names),
    }
    results = {lab: analyze(p, k=4) for lab, p in paths.items()}
    stores = {lab: Store(p) for lab, p in paths.items()}
    reg = ReportSectionRegistrar()
    Hooks(None).register_report_sections(reg)
    shown: list[str] = []
    try:
        ctx = ReportContext(list(paths), stores, results)
        for _, (_, _, func) in sorted(reg.sections.items()):
            for item in func(ctx) or []:
                if isinstance(item, tuple):
                    literal_text(item[1])
                    texts = _svg_texts(item[1])
                    assert not any("mathdefault" in t for t in texts), texts
                    shown += texts
    finally:
        for s in stores.values():
            s.close()
    assert "$x^2$" in shown and "a$b" in shown and "c\\$d" in shown  # tick labels: exactly the stored names
    assert any("run $1$" in t for t in shown)                        # a run label in titles and legends
    # the diversity figure's log axis: matplotlib's maths renders 10^1 as "10" with a superscript, not "$\\mathdefault…$"
    assert "10" in shown


def test_a_100_class_report_stays_readable(tmp_path, monkeypatch):
    """100 classes, several epochs: in every figure no two x tick labels overlap, no legend has more than 12
    entries, and bar segments and scatter points carry no per-class text (there is no room for it)."""
    import matplotlib

    matplotlib.use("Agg")
    from fragility import report as report_mod
    from fragility.paper.datasets import exponential_counts
    from fragility.testing import make_random_store

    counts = exponential_counts(60, 100, 30)
    path = make_random_store(tmp_path / "c100.fragility", counts=counts, d=16, ties=False,
                             passes=[(s, e) for e in range(4) for s in ("train", "test")])
    seen = []
    real = report_mod._png

    def capture(fig):
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        for ax in fig.axes:
            boxes = [t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_visible() and t.get_text()]
            for a, b in zip(boxes, boxes[1:]):
                assert not a.overlaps(b), (ax.get_title(), a, b)
            legend = ax.get_legend()
            assert legend is None or len(legend.get_texts()) <= 12, ax.get_title()
            assert len(ax.texts) <= 12, (ax.get_title(), len(ax.texts))  # no per-class labels piled up
        for legend in fig.legends:
            assert len(legend.get_texts()) <= 12
        seen.append(fig)
        return real(fig)

    monkeypatch.setattr(report_mod, "_png", capture)
    index = report_mod.build_report([path], tmp_path / "rep", k=3)
    assert len(seen) >= 4 and index.endswith("index.html")
    # the epoch trajectories group the 100 classes into head / middle / tail thirds by training rows: 3 lines a panel
    (traj,) = [f for f in seen if any("when do the final top-K" in ax.get_title() for ax in f.axes)]
    for ax in traj.axes:
        assert sorted({line.get_gid() for line in ax.get_lines()}) == ["band-head", "band-middle", "band-tail"]
    groups = rs.bands(counts)
    assert [len(v) for v in groups.values()] == [34, 33, 33]
    assert min(counts[c] for c in groups["head"]) >= max(counts[c] for c in groups["middle"])
    assert min(counts[c] for c in groups["middle"]) >= max(counts[c] for c in groups["tail"])
    assert "grouped into thirds by training rows" in open(index).read()


def test_runs_of_different_scales_get_their_own_y_axes(tmp_path, monkeypatch):
    """Runs whose mean CE differ by more than SCALE_RATIO (LDAM's cosine logits vs cross-entropy) are drawn on
    their own y axes, and the caption says so; runs of one scale share the axis."""
    import copy

    import fragility

    import matplotlib

    matplotlib.use("Agg")
    from fragility import report as report_mod
    from fragility.testing import make_random_store

    path = make_random_store(tmp_path / "s.fragility", counts=(12, 8, 4), d=8)
    res = fragility.analyze(path, ["topk", "magnitude"], k=3)
    scaled = copy.deepcopy(res)
    for g in scaled["topk"].data["groups"].values():
        for c in g["classes"]:
            for f in c["topk"].values():
                if f["values"] is not None:
                    f["values"] = [v * 30 for v in f["values"]]
    real = report_mod._png
    for results, shared in (({"a": res, "b": copy.deepcopy(res)}, True), ({"a": res, "b": scaled}, False)):
        seen = []
        monkeypatch.setattr(report_mod, "_png", lambda fig: (seen.append(fig), real(fig))[1])
        index = report_mod.build_report([path, path], tmp_path / f"rep-{shared}", labels=["a", "b"], results=results, k=3)
        (fig,) = [f for f in seen if any("class top-3" in ax.get_title() for ax in f.axes)]
        a, b = [ax for ax in fig.axes if "class top-3" in ax.get_title()]
        assert a.get_shared_y_axes().joined(a, b) == shared
        html = open(index).read()
        assert ("Each run has its own y axis: their mean CE differ in scale (30×)" in html) == (not shared)


def test_report_tables_scroll_inside_their_box(tmp_path):
    """Every table of the report sits in a horizontally scrolling box under its title, so a wide table never
    widens the page (at 800 px the comparison table used to overflow it)."""
    import re

    from fragility.report import CSS, build_report

    path = make_random_store(tmp_path / "w.fragility", counts=(12, 8, 4), d=8)
    html = open(build_report([path, path], tmp_path / "rep", labels=["a", "b"], k=3)).read()
    tables = html.count("<table>")
    assert tables > 3 and html.count("<div class='scroll'><table>") == tables
    assert len(re.findall(r"<p class='caption'>[^<]+</p><div class='scroll'><table>", html)) == tables
    assert "div.scroll{overflow-x:auto;max-width:100%}" in CSS and "max-width:1200px" in CSS
