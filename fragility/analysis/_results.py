"""Results: per-class tables (class size always shown), JSON-serializable, rendered by rich, saved as CSV/JSON."""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._safe import markup, printable
from ..errors import OutputError, output_dir


def jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays (and NaN) into plain JSON values (NaN becomes ``None``)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


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

    def __rich__(self):
        from rich.table import Table as RichTable

        # names in titles and cells come from stores: shown literally, never as markup or control codes
        t = RichTable(title=markup(self.title), title_justify="left", header_style="bold")
        for c in self.columns:
            t.add_column(markup(c), justify="left" if c in ("class", "group", "top-K features") else "right")
        for r in self.rows:
            t.add_row(*(markup(_fmt(v)) for v in r))
        return t


@dataclass
class Result:
    """What an analyzer computes: tables for people, ``data`` for programs, ``notes`` for caveats."""

    analyzer: str
    tables: list[Table] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def __repr__(self) -> str:  # short: the data can be megabytes (print(result) renders the tables)
        groups = list((self.data or {}).get("groups", {}))
        shown = ", ".join(repr(g) for g in groups[:4]) + (f", … ({len(groups)} groups)" if len(groups) > 4 else "")
        return f"<Result {self.analyzer!r}: {len(self.tables)} tables, groups [{shown}], {len(self.notes)} notes>"

    def to_dict(self) -> dict[str, Any]:
        return jsonable(
            {"analyzer": self.analyzer, "notes": self.notes, "tables": [t.to_dict() for t in self.tables], "data": self.data}
        )

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), allow_nan=False, **kwargs)

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

    def __rich__(self):
        from rich.console import Group
        from rich.text import Text

        parts: list[Any] = [Text(printable(f"● {self.analyzer}"), style="bold cyan")]
        parts.extend(self.tables)
        parts.extend(Text(printable(f"  note: {n}"), style="yellow") for n in self.notes)
        return Group(*parts)
