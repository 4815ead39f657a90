"""A self-contained HTML report (images embedded) with PNG and JSON files next to it.

Sections come from plugins through ``fragility_register_report_sections``; the built-in ones live in
``plugins/report_sections.py``. A section function receives a :class:`ReportContext` and returns a list of
items: ``(caption, matplotlib Figure)`` pairs or :class:`fragility.analysis.Table` objects.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


from ._manager import PluginManager, manager
from .registrars import ReportContext, ReportSectionRegistrar
from ._fingerprint import incomparable
from .analysis import Result, Table, analyze, compare_results, jsonable
from .analysis._engine import TRAIN_EVAL
from .errors import OutputError, PluginError, output_dir
from .store import Store


def run_label(path: str | os.PathLike) -> str:
    """A store's name for tables and reports: its folder name without ``.fragility``."""
    return os.path.basename(os.path.normpath(os.fspath(path))).removesuffix(".fragility")


def literal_text(fig: Any) -> None:
    """Show every string already in a figure literally: each ``$`` is escaped for matplotlib's maths text, in
    every text artist and every fixed tick label (class names). Run before drawing, so the text matplotlib
    makes at draw time (tick formatters, e.g. a log axis's ``10^2``) still renders as maths: names from a
    store — which may hold ``$`` — reach plots only as literal text, with maths text left on."""
    from matplotlib.text import Text
    from matplotlib.ticker import FixedFormatter, FuncFormatter

    def esc(s: Any) -> str:
        return str(s).replace("$", r"\$")

    for t in fig.findobj(Text):
        if "$" in t.get_text():
            t.set_text(esc(t.get_text()))
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            for fmt in (axis.get_major_formatter(), axis.get_minor_formatter()):
                if getattr(fmt, "_fragility_literal", False):  # shared axes share their formatter: escape it once
                    continue
                if isinstance(fmt, FixedFormatter):  # tick labels given as strings (class names)
                    fmt.seq = [esc(v) for v in fmt.seq]
                elif isinstance(fmt, FuncFormatter):  # set_ticklabels' own wrapper of the strings, or a section's function
                    fmt.func = (lambda f: lambda x, pos=None: esc(f(x, pos)))(fmt.func)
                fmt._fragility_literal = True


def _png(fig: Any) -> bytes:
    literal_text(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _table_html(t: Table) -> str:
    from .analysis._results import _fmt

    head = "".join(f"<th>{html.escape(c)}</th>" for c in t.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in r) + "</tr>" for r in jsonable(t.rows))
    # the title wraps with the page; the table scrolls inside its box (at 800 px a wide table no longer
    # overflows the page)
    return (f"<div class='table'><p class='caption'>{html.escape(t.title)}</p><div class='scroll'><table>"
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div></div>")


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1200px;color:#222;padding:0 1rem}
h1{font-size:1.6rem} h2{font-size:1.25rem;border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2.2rem}
figure{margin:1rem 0} figcaption{color:#555;font-size:.9rem} img{max-width:100%;border:1px solid #eee}
div.table{margin:1rem 0} div.scroll{overflow-x:auto;max-width:100%} table{border-collapse:collapse;font-size:.82rem}
p.caption{font-weight:600;padding:.3rem 0;margin:0}
td,th{border:1px solid #ddd;padding:.2rem .45rem;text-align:right} td:first-child,th:first-child{text-align:left}
.meta{color:#555;font-size:.9rem}
"""


def build_report(
    stores: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    labels: Sequence[str] | None = None,
    results: dict[str, dict[str, Result]] | None = None,
    comparison: Result | None = None,
    headline: Table | Sequence[Table] | None = None,
    k: int = 10,
    analyzers: Sequence[str] | None = None,
    plugin_manager: PluginManager | None = None,
    progress: bool = False,
    knn_max_rows: int = 10000,
    options: dict[str, Any] | None = None,
    epoch: int | str | Sequence[int] | None = None,
) -> str:
    """Write ``out/index.html`` (self-contained), ``out/plots/*.png`` and ``out/results/<run>/*.json|csv``.

    Args:
        stores: one store, or two for the side-by-side comparison (e.g. imbalanced, balanced).
        labels: a name per store (default: the stores' folder names).
        results: precomputed ``analyze`` results per label (computed here when missing).
        comparison: a :func:`fragility.compare` result to show (derived from ``results`` for two runs).
        headline: a table, or tables, shown first (e.g. ``fragility reproduce``'s grid, checkpoint and recipe).
        analyzers: the analyzers to run where ``results`` are missing (default: the built-in set); every
            analyzer's tables appear in the report's generic "Tables" section, from the same analysis.
        knn_max_rows, options, epoch: passed to :func:`fragility.analyze` where ``results`` are missing (e.g.
            ``options={"knn": "all"}``, ``epoch=range(0, 200, 20)``).

    Returns:
        The path of ``index.html``.
    """
    out = os.fspath(out)
    plugin_manager = manager(plugin_manager)  # one for the analyses and the report sections
    labels = list(labels or [run_label(s) for s in stores])
    if len(set(labels)) != len(labels):
        labels = [f"{lab} ({i + 1})" for i, lab in enumerate(labels)]
    opened = {lab: Store(s) for lab, s in zip(labels, stores)}
    try:
        results = dict(results or {})
        # one subsample size for every run's size-controlled counts: the smallest training class of any run
        sizes = [n for st in opened.values() for n in (st.metadata.get("class_counts") or []) if n]
        options = {**({"rarefy_m": min(sizes)} if sizes else {}), **(options or {})}
        for lab in labels:
            if lab not in results:
                results[lab] = analyze(opened[lab], analyzers, k=k, progress=progress, plugin_manager=plugin_manager, options=options,
                                       knn_max_rows=knn_max_rows, epoch=epoch)
        if comparison is None and len(labels) == 2 and all({"topk", "magnitude"} <= set(results[lab]) for lab in labels):
            # the training side: the training passes, or (stores of published checkpoints) the eval sweeps of the training set
            train = next((s for s in ("train", TRAIN_EVAL) if all(results[lab]["topk"].group_names(s) for lab in labels)), None)
            if train is not None:
                comparison = compare_results(results[labels[0]], results[labels[1]], labels=(labels[0], labels[1]), train_split=train,
                                             incomparable=incomparable(opened[labels[0]].metadata, opened[labels[1]].metadata))
        from .remedies import saved_results

        # remedies tried on a store (`fragility remedy`, saved next to it) and still describing its sweeps
        remedies = {lab: found for lab in labels if (found := saved_results(opened[lab])) is not None}
        ctx = ReportContext(labels, opened, results, comparison, {"remedies": remedies})
        reg = manager(plugin_manager).report_sections()
        output_dir(os.path.join(out, "plots"))
        for lab in labels:
            for r in results[lab].values():
                r.save(os.path.join(out, "results", lab.replace("/", "_")))
        if comparison is not None:
            comparison.save(os.path.join(out, "results"))
        parts = [f"<h1>fragility report</h1><p class='meta'>{html.escape(_describe(opened, labels))}</p>"]
        for t in [headline] if isinstance(headline, Table) else headline or []:
            parts.append(_table_html(t))
        from ._light import _progress

        # names from stores reach plot text: _png shows them literally (literal_text), maths text stays on
        with _progress(progress, len(reg.sections), "writing report", unit="sections") as advance:
            parts += _sections(reg, ctx, out, advance)
        doc = (
            "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>fragility report</title>"
            f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>"
        )
        index = os.path.join(out, "index.html")
        try:
            with open(index, "w") as fh:
                fh.write(doc)
        except OSError as exc:
            raise OutputError(f"cannot write the report {index}: {exc.strerror or exc}; choose another --out folder") from None
        return index
    finally:
        for s in opened.values():
            s.close()


def _sections(reg: ReportSectionRegistrar, ctx: ReportContext, out: str, advance: Callable[[int], None]) -> list[str]:
    """Render every registered section in order: HTML parts, and each figure also as ``out/plots/<name>-NN.png``."""
    parts: list[str] = []
    for name, (order, title, func) in sorted(reg.sections.items(), key=lambda kv: (kv[1][0], kv[0])):
        items = func(ctx) or []
        if items:
            parts.append(f"<h2>{html.escape(title)}</h2>")
        for i, item in enumerate(items):
            if isinstance(item, Table):
                parts.append(_table_html(item))
                continue
            caption, fig = item
            png = _png(fig)
            with open(os.path.join(out, "plots", f"{name}-{i:02d}.png"), "wb") as fh:
                fh.write(png)
            b64 = base64.b64encode(png).decode()
            parts.append(
                f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{b64}'>"
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
        advance(1)
    return parts


def _describe(stores: dict[str, Store], labels: list[str]) -> str:
    bits = []
    for lab in labels:
        s = stores[lab]
        bits.append(f"{lab}: {s.metadata.get('model_name', '?')}, {s.num_classes} classes, {len(s.passes)} passes, D={s.feature_dim}")
    text = " · ".join(bits)
    if len(labels) > 1:
        first = stores[labels[0]].metadata
        why = next((w for w in (incomparable(first, stores[lab].metadata) for lab in labels[1:]) if w), None)
        text += (". All runs start from the same initial weights (their architecture and initialisation fingerprints "
                 "agree), so feature indices are compared across runs." if why is None else
                 f". Feature indices are not compared across runs: {why}.")
    return text
