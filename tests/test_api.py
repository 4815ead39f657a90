"""The public API is a short, sorted __all__ (guarded like httpx guards its exports)."""

import fragility


def test_all_is_sorted_and_complete():
    assert fragility.__all__ == sorted(fragility.__all__)
    for name in fragility.__all__:
        assert hasattr(fragility, name), name
    public = {n for n in dir(fragility) if not n.startswith("_") and not isinstance(getattr(fragility, n), type(fragility))}
    assert public <= set(fragility.__all__) | {"annotations"}, public - set(fragility.__all__)


def test_errors_share_one_base():
    for name in fragility.__all__:
        obj = getattr(fragility, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, fragility.FragilityError)


def test_short_reprs_for_notebooks(tmp_path):
    """repr() of a Store and a Result is one short line (a topk result's data used to repr to 775k characters),
    with names from the store escaped."""
    from fragility.testing import make_random_store

    path = make_random_store(tmp_path / "r.fragility", seed=1)
    with fragility.Store(path) as s:
        assert repr(s) == f"<Store {str(path)!r}: 4 passes, 5 classes, D=12>"
    r = fragility.analyze(path, ["topk"], k=3)["topk"]
    assert repr(r) == "<Result 'topk': 5 tables, groups ['train@0', 'test@0', 'train@1', 'test@1'], 1 notes>"
    r.data["groups"] = {f"\x1b[2Jg{i}": {} for i in range(9)}
    text = repr(r)
    assert "\x1b" not in text and "… (9 groups)" in text and len(text) < 200


def test_result_to_frame_is_tidy_across_epochs(tmp_path):
    """One row per group and class with split and epoch as columns; nested entries flattened (mscs.unique);
    every value equals the result's data."""
    from fragility.testing import make_random_store

    path = make_random_store(tmp_path / "f.fragility", counts=(12, 6, 3), d=8)
    res = fragility.analyze(path, ["topk", "magnitude"], k=3)
    frame = res["topk"].to_frame()
    groups = res["topk"].data["groups"]
    assert len(frame) == sum(len(g["classes"]) for g in groups.values()) == 4 * 3
    assert {"group", "split", "epoch", "class", "n", "accuracy", "unique", "mscs.unique"} <= set(frame.columns)
    for row in frame.itertuples():
        entry = groups[row.group]["classes"][[c["class"] for c in groups[row.group]["classes"]].index(row._4)]
        assert row.n == entry["n"] and row.split == groups[row.group]["split"] and row.epoch == groups[row.group]["epoch"]
        assert getattr(row, "unique") == entry["unique"]
    assert frame.groupby("epoch")["n"].sum().to_dict() == {0: 42, 1: 42}  # 21 rows per pass, train and test
    assert "share_below_p5" in res["magnitude"].to_frame().columns
    assert res["topk"].records()[0]["mscs.unique"] == groups[frame.group[0]]["classes"][0]["mscs"]["unique"]


def test_results_render_as_bounded_escaped_html(tmp_path):
    """A notebook shows a result as HTML: escaped names, at most HTML_MAX_ROWS rows per table and the
    condensed view over many groups, so even a 60-group result stays small."""
    import json as _json

    from fragility.analysis._results import HTML_MAX_ROWS
    from fragility.testing import make_random_store

    path = make_random_store(tmp_path / "h.fragility", counts=(70, 20, 5), d=8,
                             passes=[(s, e) for e in range(30) for s in ("train", "test")])
    res = fragility.analyze(path, ["topk"], k=3)["topk"]
    page = res._repr_html_()
    assert "<table>" in page and "60 groups selected" in page and len(page) < 200_000
    assert len(_json.dumps(res.to_dict())) > 4 * len(page)  # the data is far larger than its view
    t = fragility.analysis.Table("a <b>", ["class", "n"], [[f"<c{i}>", i] for i in range(HTML_MAX_ROWS + 7)])
    html = t._repr_html_()
    assert "&lt;b&gt;" in html and "<c0>" not in html and "&lt;c0&gt;" in html
    assert html.count("<tr>") == HTML_MAX_ROWS + 1 and "7 more rows" in html
