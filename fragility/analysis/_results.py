"""Results: per-class tables (class size always shown), JSON-serializable, rendered by rich, saved as CSV/JSON."""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._light import SCHEMA_VERSION, jsonable  # noqa: F401 - jsonable is public here
from .._safe import printable
from ..errors import OutputError, output_dir


def last_group(data: dict[str, Any], split: str) -> dict[str, Any] | None:
    """The group of ``split`` with the highest epoch in an analyzer's ``data["groups"]`` (or ``None``)."""
    found = [g for g in data.get("groups", {}).values() if g["split"] == split]
    return max(found, key=lambda g: g["epoch"]) if found else None


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "–"
        return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.3e}"
    if isinstance(value, (list, tuple)):
        return ",".join(_fmt(v) for v in value)
    return str(value)


#: the JSON Schema of both, shipped with the package
SCHEMA_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "schemas", "output.schema.json")

#: the narrowest a column of lists (feature indices) gets in a terminal table: it wraps between items instead
LIST_MIN_WIDTH = 12

#: rows per table and tables per result a notebook's HTML view shows (the rest is counted, not rendered)
HTML_MAX_ROWS = 50
HTML_MAX_TABLES = 12


@dataclass
class Table:
    """A titled table; per-class tables start with the ``class`` and ``n`` columns."""

    title: str
    columns: list[str]
    rows: list[list[Any]]

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, "columns": self.columns, "rows": jsonable(self.rows)}

    def column(self, name: str) -> list[Any]:
        i = self.columns.index(name)
        return [r[i] for r in self.rows]

    def _repr_html_(self, max_rows: int = HTML_MAX_ROWS) -> str:
        """The table in a notebook: escaped, at most ``max_rows`` rows (the rest counted, never rendered)."""
        import html

        head = "".join(f"<th>{html.escape(printable(c))}</th>" for c in self.columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(printable(_fmt(v)))}</td>" for v in r) + "</tr>"
                       for r in jsonable(self.rows[:max_rows]))
        more = f"<p><i>… {len(self.rows) - max_rows} more rows (all in .rows)</i></p>" if len(self.rows) > max_rows else ""
        return (f"<div><p><b>{html.escape(printable(self.title))}</b></p><table><thead><tr>{head}</tr></thead>"
                f"<tbody>{body}</tbody></table>{more}</div>")

    def _rich(self, keep: list[int], title: str):
        from rich.table import Table as RichTable
        from rich.text import Text

        # names in titles and cells come from stores: Text, so shown literally on any console — never as
        # markup, emoji codes (":b:") or control codes
        t = RichTable(title=Text(printable(title)), title_justify="left", header_style="bold")
        lists = self._list_columns()
        for i in keep:
            c, many = self.columns[i], lists[i]
            # a column of lists (feature indices) wraps between its items — never cut to "246,69,1…"
            t.add_column(Text(printable(c)), justify="left" if c in ("class", "group", "top-K features") or many else "right",
                         overflow="fold" if many else "ellipsis", min_width=LIST_MIN_WIDTH if many else None)
        for r in self.rows:
            t.add_row(*(Text(printable(", ".join(_fmt(x) for x in r[i]) if lists[i] and isinstance(r[i], (list, tuple))
                                       else _fmt(r[i] if i < len(r) else None))) for i in keep))
        return t

    def _list_columns(self) -> list[bool]:
        return [any(isinstance(r[i], (list, tuple)) for r in self.rows if i < len(r)) for i in range(len(self.columns))]

    def __rich_console__(self, console, options):
        """The table; where it cannot fit the terminal, its columns of lists (top-K features) move to a second
        table under it, keyed by the first column, so that no column is cut."""
        from rich.measure import Measurement

        every = list(range(len(self.columns)))
        whole = self._rich(every, self.title)
        lists = self._list_columns()
        natural = Measurement.get(console, options.update(max_width=1 << 20), whole).maximum  # its width unconstrained
        if not any(lists) or all(lists[1:]) or natural <= options.max_width:
            yield whole
            return
        yield self._rich([i for i in every if not lists[i]], self.title)
        yield self._rich([0] + [i for i in every[1:] if lists[i]], f"{self.title} (continued)")


def _flatten(row: dict[str, Any], prefix: str, entry: dict[str, Any]) -> None:
    for k, v in entry.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            _flatten(row, key + ".", v)
        elif v is None or isinstance(v, (str, bool, int, float, np.integer, np.floating)):
            row[key] = v.item() if isinstance(v, (np.integer, np.floating)) else v


#: the columns of the long ("tidy") form of results: one row per number
TIDY_COLUMNS = ("analyzer", "group", "split", "epoch", "class", "class_name", "quantity", "index", "value", "lo", "hi")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _tidy(obj: Any, path: list[str], ci: Any, emit) -> None:
    """Emit ``(quantity, index, value, lo, hi)`` for every number under ``obj``. An interval ``X_ci`` (or
    ``interval`` beside ``mean``) gives ``X``'s rows their ``lo``/``hi``; list positions of the innermost list
    go to ``index``, outer ones into the quantity's path."""
    def pair(c: Any) -> tuple[Any, Any]:
        return (c[0], c[1]) if isinstance(c, list) and len(c) == 2 and all(x is None or _is_number(x) for x in c) else (None, None)

    if isinstance(obj, dict):
        for k, v in obj.items():
            k = str(k)
            if (k.endswith("_ci") and k[:-3] in obj) or (k == "interval" and "mean" in obj):
                continue
            sub_ci = obj.get(f"{k}_ci", obj.get("interval") if k == "mean" else None)
            if isinstance(ci, dict) and k in ci:
                sub_ci = ci[k]
            _tidy(v, path + [k], sub_ci, emit)
    elif isinstance(obj, list):
        if all(x is None or _is_number(x) for x in obj):
            cis = ci if isinstance(ci, list) and len(ci) == len(obj) and not _is_number(ci[0] if ci else None) else None
            for i, x in enumerate(obj):
                if x is not None:
                    emit(".".join(path), i, x, *pair(cis[i] if cis else None))
        else:
            for i, x in enumerate(obj):
                _tidy(x, path + [str(i)], ci[i] if isinstance(ci, list) and len(ci) == len(obj) else None, emit)
    elif _is_number(obj):
        emit(".".join(path), None, obj, *pair(ci))


def tidy_records(result: Result) -> list[dict[str, Any]]:
    """Every number of a result's ``data`` as one row (:data:`TIDY_COLUMNS`): per class entries with their
    group, split, epoch and class; group-level numbers with ``class`` None; analyzer-level ones with
    ``group`` None. ``quantity`` is the dotted path of the key (``mscs.unique``), ``index`` the position in a
    per-feature or per-class list, ``lo``/``hi`` the 95 % interval where the data has one."""
    data = jsonable(result.data) if isinstance(result.data, dict) else {}
    out: list[dict[str, Any]] = []

    def emitter(group: Any, split: Any, epoch: Any, cls: Any, name: Any):
        def emit(quantity: str, index: Any, value: Any, lo: Any, hi: Any) -> None:
            out.append({"analyzer": result.analyzer, "group": group, "split": split, "epoch": epoch, "class": cls,
                        "class_name": name, "quantity": quantity, "index": index, "value": value, "lo": lo, "hi": hi})
        return emit

    groups = data.get("groups") if isinstance(data.get("groups"), dict) else {}
    for g, entry in groups.items():
        if not isinstance(entry, dict):
            continue
        split, epoch = entry.get("split"), entry.get("epoch")
        for c, cls in enumerate(entry.get("classes") or []):
            name = cls.get("class") if isinstance(cls, dict) else None
            _tidy(cls, [], None, emitter(g, split, epoch, c, name))
        rest = {k: v for k, v in entry.items() if k not in ("classes", "split", "epoch")}
        _tidy(rest, [], None, emitter(g, split, epoch, None, None))
    _tidy({k: v for k, v in data.items() if k != "groups"}, [], None, emitter(None, None, None, None, None))
    return out


def to_frame(results: Result | dict[str, Result] | list[Result]):
    """Results (one, a dict as :func:`fragility.analyze` returns, or a list) as one long pandas ``DataFrame``:
    one row per number, columns :data:`TIDY_COLUMNS`. pandas is needed only for this."""
    try:
        import pandas as pd
    except ImportError:
        raise ImportError("to_frame() needs pandas (pip install 'fragility[dataframe]'); Result.records() gives per-class rows as dicts") from None
    many = [results] if isinstance(results, Result) else list(results.values()) if isinstance(results, dict) else list(results)
    rows = [r for res in many for r in tidy_records(res)]
    frame = pd.DataFrame.from_records(rows, columns=list(TIDY_COLUMNS))
    return frame.astype({"epoch": "Int64", "class": "Int64", "index": "Int64", "value": "float64", "lo": "float64", "hi": "float64"})


@dataclass
class Result:
    """What an analyzer computes: tables for people, ``data`` for programs, ``notes`` for caveats."""

    analyzer: str
    tables: list[Table] = field(default_factory=list)
    #: the analyzer's own numbers, in its own layout (the built-ins': ``data["groups"]["<split>@<epoch>"]``);
    #: the engine never writes into it
    data: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: engine metadata: rows left out per group, ``{"test@2": {"nonfinite": n, "unlabelled": m}}``
    skipped: dict[str, dict[str, int]] = field(default_factory=dict)

    def __repr__(self) -> str:  # short: the data can be megabytes (print(result) renders the tables)
        groups = list((self.data or {}).get("groups", {}))
        shown = ", ".join(repr(g) for g in groups[:4]) + (f", … ({len(groups)} groups)" if len(groups) > 4 else "")
        return f"<Result {self.analyzer!r}: {len(self.tables)} tables, groups [{shown}], {len(self.notes)} notes>"

    def to_dict(self) -> dict[str, Any]:
        """The result as JSON values, in the layout of ``fragility/schemas/output.schema.json`` (version
        :data:`SCHEMA_VERSION`)."""
        return jsonable({"schema_version": SCHEMA_VERSION, "analyzer": self.analyzer, "notes": self.notes,
                         "skipped": self.skipped, "tables": [t.to_dict() for t in self.tables], "data": self.data})

    def group_names(self, split: str | None = None) -> list[str]:
        """The names of the groups in ``data["groups"]`` (the documented layout; entries that do not follow it are
        left out), of ``split`` if given, in epoch order: ``group_names("test")[-1]`` is the last test epoch."""
        groups = self.data.get("groups") if isinstance(self.data, dict) else None
        if not isinstance(groups, dict):
            return []
        found = [(g["epoch"], name) for name, g in groups.items()
                 if isinstance(g, dict) and isinstance(g.get("epoch"), int) and (split is None or g.get("split") == split)]
        return [name for _, name in sorted(found, key=lambda e: e[0])]

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), allow_nan=False, **kwargs)

    def records(self) -> list[dict[str, Any]]:
        """One flat record per group and class (``group``, ``split``, ``epoch``, then the class entry's
        numbers and strings; a nested dict's keys joined with ``.``, e.g. ``mscs.unique``; lists left out —
        they are in ``data``). The tidy form for a data frame across epochs."""
        out: list[dict[str, Any]] = []
        groups = self.data.get("groups") if isinstance(self.data, dict) else None
        for name, g in (groups or {}).items():
            if not isinstance(g, dict):
                continue
            for entry in g.get("classes") or []:
                row: dict[str, Any] = {"group": name, "split": g.get("split"), "epoch": g.get("epoch")}
                _flatten(row, "", entry if isinstance(entry, dict) else {})
                out.append(row)
        return out

    def to_frame(self):
        """The long form: one row per number of ``data`` (:func:`to_frame`; columns ``analyzer, group, split, epoch,
        class, class_name, quantity, index, value, lo, hi``). ``pandas.DataFrame(result.records())`` is the wide
        form, one row per group and class."""
        return to_frame(self)

    def table(self, title_prefix: str) -> Table:
        for t in self.tables:
            if t.title.startswith(title_prefix):
                return t
        raise KeyError(f"{self.analyzer} has no table titled {title_prefix!r}; it has {[t.title for t in self.tables]}")

    def save(self, directory: str | os.PathLike) -> list[str]:
        """Write ``<analyzer>.json`` and one CSV per table into ``directory``; return the paths."""
        directory = output_dir(os.fspath(directory))
        paths = [os.path.join(directory, f"{self.analyzer}.json")]
        try:
            self._write(paths, directory)
        except OSError as exc:
            raise OutputError(f"cannot write results into {directory}: {exc.strerror or exc}; choose another --out folder") from None
        return paths

    def _write(self, paths: list[str], directory: str) -> None:
        with open(paths[0], "w") as fh:
            fh.write(self.to_json(indent=1))
        for i, t in enumerate(self.tables):
            slug = "".join(ch if ch.isalnum() else "-" for ch in t.title.lower()).strip("-")
            while "--" in slug:
                slug = slug.replace("--", "-")
            path = os.path.join(directory, f"{self.analyzer}-{i:02d}-{slug[:60]}.csv")
            with open(path, "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(t.columns)
                for r in jsonable(t.rows):
                    w.writerow([";".join(map(str, v)) if isinstance(v, list) else ("" if v is None else v) for v in r])
            paths.append(path)

    def _repr_html_(self) -> str:
        """The result in a notebook, bounded whatever its size: what the terminal shows of it (each split's
        last group in full over many groups, :func:`condensed`), tables cut at HTML_MAX_ROWS rows, notes."""
        import html

        shown = condensed(self)
        parts = [f"<p><b>{html.escape(printable(self.analyzer))}</b></p>"]
        parts += [t._repr_html_() for t in shown.tables[:HTML_MAX_TABLES]]
        if len(shown.tables) > HTML_MAX_TABLES:
            parts.append(f"<p><i>… {len(shown.tables) - HTML_MAX_TABLES} more tables (all in .tables)</i></p>")
        parts += [f"<p><i>note: {html.escape(printable(n))}</i></p>" for n in shown.notes]
        return "".join(parts)

    def __rich__(self):
        from rich.console import Group
        from rich.text import Text

        parts: list[Any] = [Text(printable(f"● {self.analyzer}"), style="bold cyan")]
        parts.extend(self.tables)
        parts.extend(Text(printable(f"  note: {n}"), style="yellow") for n in self.notes)
        return Group(*parts)


#: per built-in analyzer, the per-class quantity of the class x epoch summary of a long selection
SUMMARY_METRIC = {
    "topk": ("accuracy", "accuracy"),
    "magnitude": ("share_below_p5", "share of rows below the training 5th percentile"),
    "diversity": ("participation_ratio", "FE participation ratio"),
    "authors": ("top_share", "top-10 % CE share (authors' img_CE_top)"),
}
#: more selected groups than this: only each split's last group is printed in full
MAX_PRINTED_GROUPS = 6
#: epochs (columns) of the class x epoch summary
SUMMARY_COLUMNS = 10


def condensed(r: Result) -> Result:
    """What the terminal shows of a result over many groups (more than MAX_PRINTED_GROUPS): each split's
    last group in full, tables across groups cut to those groups, and — for the built-ins — one class ×
    epoch table per split of one quantity over up to SUMMARY_COLUMNS evenly spaced epochs. The output then
    stays the same length whatever the number of epochs; ``data`` (``--json``, ``--out``) keeps everything."""
    groups = r.data.get("groups") if isinstance(r.data, dict) else None
    if not isinstance(groups, dict) or len(groups) <= MAX_PRINTED_GROUPS:
        return r
    by_split: dict[str, list[tuple[int, str]]] = {}
    for name, g in groups.items():
        if isinstance(g, dict) and "split" in g and "epoch" in g:
            by_split.setdefault(str(g["split"]), []).append((int(g["epoch"]), name))
    keep = {max(items)[1] for items in by_split.values()}
    spaced: dict[str, list[tuple[int, str]]] = {}
    for split, items in by_split.items():
        items.sort()
        n = len(items)
        spaced[split] = [items[i] for i in sorted({round(i * (n - 1) / max(1, min(SUMMARY_COLUMNS, n) - 1))
                                                   for i in range(min(SUMMARY_COLUMNS, n))})]
    epochs = {e for chosen in spaced.values() for e, _ in chosen}
    tables, dropped = [], 0
    for t in r.tables:
        head = t.title.split(":", 1)[0]
        if head in groups:
            if head in keep:
                tables.append(t)
            else:
                dropped += 1
        elif "epoch" in t.columns:  # a trajectory: the evenly spaced epochs
            i = t.columns.index("epoch")
            tables.append(Table(f"{t.title} (epochs {', '.join(map(str, sorted(epochs)))})", t.columns,
                                [row for row in t.rows if row[i] in epochs]))
        elif "group" in t.columns:
            i = t.columns.index("group")
            rows = [row for row in t.rows if all(part in keep for part in str(row[i]).split(" vs "))]
            if rows:
                tables.append(Table(f"{t.title} (each split's last epoch)", t.columns, rows))
        else:
            tables.append(t)
    metric = SUMMARY_METRIC.get(r.analyzer)
    for split, items in sorted(by_split.items()) if metric else []:
        chosen, n = spaced[split], len(items)
        classes = groups[items[-1][1]].get("classes") or []
        rows = []
        for c, entry in enumerate(classes):
            cells = []
            for _, name in chosen:
                cl = groups[name].get("classes") or []
                cells.append(cl[c].get(metric[0]) if c < len(cl) and isinstance(cl[c], dict) else None)
            rows.append([entry.get("class"), *cells])
        if rows and any(v is not None for row in rows for v in row[1:]):
            tables.append(Table(f"{split}: {metric[1]} per class and epoch ({len(chosen)} of {n} epochs, evenly spaced)",
                                ["class", *(f"@{e}" for e, _ in chosen)], rows))
    notes = [*r.notes, f"{len(groups)} groups selected: {dropped} per-group tables not printed (each split's last epoch is); "
                       f"--json and --out hold every group, --epoch A:B:S selects epochs"] if dropped else list(r.notes)
    return Result(r.analyzer, tables, r.data, notes, r.skipped)
