"""The public API is a short, sorted __all__ (guarded like httpx guards its exports)."""

import pytest

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


def _numbers(obj, path=()):
    """Every number of a JSON value with its path (the reference of the round trip)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _numbers(v, path + (str(k),))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _numbers(v, path + (str(i),))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield path, obj


def _back(row, data):
    """A long row back to the paths of the numbers it holds (value, and lo/hi from X_ci or `interval` beside `mean`)."""
    base = () if row["group"] is None else ("groups", row["group"]) + (() if row["class"] is None else ("classes", str(row["class"])))
    parts = tuple(row["quantity"].split("."))
    idx = () if row["index"] is None else (str(int(row["index"])),)
    out = [(base + parts + idx, row["value"])]
    for j, bound in enumerate(("lo", "hi")):
        if row[bound] is not None and row[bound] == row[bound]:
            if parts[-1] == "mean" and _has(data, base + parts[:-1] + ("interval",)):
                ci = base + parts[:-1] + ("interval",)
            elif _has(data, base + parts[:-1] + (parts[-1] + "_ci",)):
                ci = base + parts[:-1] + (parts[-1] + "_ci",)
            else:  # a dict of intervals beside a dict of values (archetypes_ci.safe beside archetypes.safe)
                ci = base + parts[:-2] + (parts[-2] + "_ci", parts[-1])
            out.append((ci + idx + (str(j),), row[bound]))
    return out


def _has(data, path):
    node = data
    for p in path:
        if isinstance(node, dict) and p in node:
            node = node[p]
        elif isinstance(node, list) and p.isdigit() and int(p) < len(node):
            node = node[int(p)]
        else:
            return False
    return True


def test_to_frame_is_long_and_round_trips_every_number(tmp_path):
    """One row per number (analyzer, group, split, epoch, class, quantity, index, value, lo, hi): every number
    of every built-in result's JSON data appears exactly once in the frame, and the frame gives them back."""
    import json as _json

    from fragility.analysis import to_frame
    from fragility.testing import make_random_store

    path = make_random_store(tmp_path / "f.fragility", counts=(12, 6, 3), d=8,
                             passes=(("train", 0), ("train_eval", 0), ("test", 0), ("train", 1), ("train_eval", 1), ("test", 1)))
    res = fragility.analyze(path, ["topk", "magnitude", "diversity", "authors"], k=3, epoch="all", options={"knn": "all"})
    other = make_random_store(tmp_path / "g.fragility", counts=(4, 6, 9), d=8, seed=2,
                              passes=(("train", 0), ("train_eval", 0), ("test", 0)))
    from fragility.remedies import remedy

    res = {**res, "compare": fragility.compare(path, other, k=3), "remedy": remedy(path, ["tau-norm", "logit-adjust"], tau=1, out=tmp_path / "r")}
    frame = to_frame(res)
    assert list(frame.columns) == ["analyzer", "group", "split", "epoch", "class", "class_name", "quantity", "index", "value", "lo", "hi"]
    for name, r in res.items():
        data = _json.loads(r.to_json())["data"]
        # a group's epoch is the frame's epoch column (on every row of the group)
        want = sorted((p, v) for p, v in _numbers(data) if not (len(p) == 3 and p[0] == "groups" and p[2] == "epoch"))
        rows = frame[frame.analyzer == name].astype(object).where(frame[frame.analyzer == name].notna(), None).to_dict("records")
        got = sorted(p for row in rows for p in _back(row, data))
        assert got == want, name  # each number once, at its place
        assert r.to_frame().shape[0] == len(rows)
    # every built-in result follows the shipped JSON Schema, which has teeth: a renamed per-class field fails it
    import jsonschema

    from fragility.analysis._results import SCHEMA_PATH

    schema = _json.load(open(SCHEMA_PATH))
    for r in res.values():
        jsonschema.validate(_json.loads(r.to_json()), schema)
    bad = _json.loads(res["magnitude"].to_json())
    entry = next(iter(bad["data"]["groups"].values()))["classes"][0]
    entry["share_below_p5_pct"] = entry.pop("share_below_p5")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    # the tidy form answers the usual question directly: a quantity across epochs per class
    acc = frame[(frame.analyzer == "topk") & (frame.quantity == "accuracy") & (frame.split == "test")]
    assert sorted(acc.epoch.unique()) == [0, 1] and acc["lo"].notna().any()
    assert res["topk"].records()[0]["mscs.unique"] == res["topk"].data["groups"]["train@0"]["classes"][0]["mscs"]["unique"]


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


def test_the_public_api_is_exactly_what_users_and_plugin_authors_need():
    """An accidental export fails here: the public names are listed, and each one is documented."""
    import fragility.analysis
    import fragility.functional

    assert sorted(fragility.__all__) == sorted([
        "Analyzer", "AnalyzerError", "DataError", "FragilityError", "Head", "HeadError", "OutputError", "PassInfo",
        "PluginError", "Recorder", "RecorderError", "Result", "SelectionError", "Store", "StoreError", "StoreVersionError",
        "__version__", "affine_of", "analyze", "compare", "hookimpl", "make_plugin_manager", "model_name"])
    assert sorted(fragility.analysis.__all__) == sorted([
        "AnalysisSpec", "Analyzer", "AnalyzerRegistrar", "Chunk", "Group", "Result", "Table", "analyze", "analyze_dask",
        "check_memory", "compare", "compare_results", "jsonable", "last_group", "tidy_records", "to_frame"])
    for module in (fragility, fragility.analysis, fragility.functional):
        for name in module.__all__:
            if name != "__version__":
                assert (getattr(module, name).__doc__ or "").strip(), f"{module.__name__}.{name} has no docstring"
