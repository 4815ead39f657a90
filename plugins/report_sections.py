"""Built-in report sections. Each figure answers one question a reader has — which classes are fragile, and
why — with the compared runs on shared axes, the minority classes marked, and a caption written from the
numbers (it says so when the data do *not* show the paper's finding).

Minority classes: a class is a minority class of a run when its training rows are fewer than the geometric
mean of the run's largest and smallest non-empty class, and the largest is at least twice the smallest
(:func:`minority`). A balanced run has none; a figure marks the classes that are minority in any run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal, TypeVar, overload

import numpy as np

import fragility
from fragility.analysis.records import (
    DiversityRecords,
    Grouped,
    MagnitudeRecords,
    TopkRecords,
    diversity_records,
    magnitude_records,
    topk_records,
)
from fragility.registrars import ReportContext
from fragility.functional import wilson


class _LazyPyplot:
    """matplotlib is imported on first use: registering the plugin (every Recorder does) stays cheap."""

    def __getattr__(self, name):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as pyplot

        return getattr(pyplot, name)


plt = _LazyPyplot()
G = TypeVar("G")

RUN_COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#8172b3", "#937860", "#da8bc3")
MINORITY_SHADE = "#f6e3cf"
NOT_SHARED = "#d9d9d9"


#: the built-in analyzers' records (fragility.analysis.records): what the sections read
RECORDS = {"topk": topk_records, "magnitude": magnitude_records, "diversity": diversity_records}


@overload
def _runs(ctx: ReportContext, analyzer: Literal["topk"]) -> list[tuple[str, TopkRecords]]: ...
@overload
def _runs(ctx: ReportContext, analyzer: Literal["magnitude"]) -> list[tuple[str, MagnitudeRecords]]: ...
@overload
def _runs(ctx: ReportContext, analyzer: Literal["diversity"]) -> list[tuple[str, DiversityRecords]]: ...
def _runs(ctx: ReportContext, analyzer: str) -> list[tuple[str, Any]]:
    """``(label, records)`` of every run that has ``analyzer``'s result (typed, so a renamed field shows at every reader)."""
    return [(lab, _records(ctx, lab, analyzer)) for lab in ctx.labels if analyzer in ctx.results[lab]]


def _records(ctx: ReportContext, lab: str, analyzer: str) -> Any:
    """A run's records of one analyzer, built once per report (``ctx.extra["records"]``): every section reads them."""
    cache = ctx.extra.setdefault("records", {})
    if (lab, analyzer) not in cache:
        cache[lab, analyzer] = RECORDS[analyzer](ctx.results[lab][analyzer])
    return cache[lab, analyzer]


def _num(v) -> float:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else float("nan")


def _fmt(v: float) -> str:
    return "–" if not math.isfinite(v) else f"{v:.3g}"


def minority(counts: Sequence[int]) -> set[int]:
    """The minority classes of one run: fewer training rows than the geometric mean of its largest and
    smallest non-empty class, when the largest is at least twice the smallest; none otherwise."""
    nz = [n for n in counts if n > 0]
    if not nz or max(nz) < 2 * min(nz):
        return set()
    cut = math.sqrt(max(nz) * min(nz))
    return {c for c, n in enumerate(counts) if 0 < n < cut}


def training_group(records: Grouped[G]) -> G | None:
    """An analyzer's last group of the training set: the training pass, else the eval sweep of the training
    set (stores of published checkpoints hold only that)."""
    return records.last("train") or records.last("train_eval")


def train_counts(ctx) -> dict[str, list[int]]:
    """Training rows per class of each run, from the analyzers' last training group."""
    out = {}
    for lab in ctx.labels:
        res = ctx.results[lab]
        top = _records(ctx, lab, "topk") if "topk" in res else None
        mag = _records(ctx, lab, "magnitude") if "magnitude" in res else None
        if top is not None and (g := training_group(top)) is not None:
            out[lab] = [c.n for c in g.classes]
        elif mag is not None and mag.train_n is not None:
            out[lab] = [int(n) for n in mag.train_n]
    return out


def _minorities(ctx) -> set[int]:
    found: set[int] = set()
    for counts in train_counts(ctx).values():
        found |= minority(counts)
    return found


#: head / middle / tail colours of figures that group many classes
BAND_COLOURS = ("#4c72b0", "#937860", "#c44e52")


def bands(counts: Sequence[int]) -> dict[str, list[int]]:
    """Classes in thirds by training rows, largest first (ties: lower class first): head, middle, tail."""
    order = sorted(range(len(counts)), key=lambda c: (-counts[c], c))
    n = len(order)
    cut = [0, -(-n // 3), -(-2 * n // 3), n]
    return {name: sorted(order[cut[i] : cut[i + 1]]) for i, name in enumerate(("head", "middle", "tail"))}


def _mean(values, idx) -> float:
    v = [values[i] for i in idx if math.isfinite(values[i])]
    return float(np.mean(v)) if v else float("nan")


def _figure(rows: int, width: float = 11.0, height: float = 3.3, sharey: bool = True):
    fig, axes = plt.subplots(rows, 1, figsize=(width, height * rows), squeeze=False, sharex=True, sharey=sharey,
                             layout="constrained")
    return fig, list(axes[:, 0])


def _grouped(ax, names: list[str], series: list[tuple[str, list[float]]], minor: set[int],
             intervals: dict[str, list[Any]] | None = None) -> None:
    """Bars per class, one per run side by side; minority classes shaded; ``intervals`` (per run, per class
    ``[lo, hi]`` or None) drawn as error bars (gid ``ci-<run>``)."""
    x = np.arange(len(names))
    w = 0.8 / max(1, len(series))
    for c in sorted(minor):
        ax.axvspan(c - 0.45, c + 0.45, color=MINORITY_SHADE, zorder=0, lw=0, gid=f"minority-{c}")
    for i, (lab, vals) in enumerate(series):
        pos = x - 0.4 + w * (i + 0.5)
        ax.bar(pos, vals, w, color=RUN_COLOURS[i % len(RUN_COLOURS)], label=lab, zorder=2, gid=f"run-{i}")
        cis = (intervals or {}).get(lab)
        if cis:
            have = [c for c in range(len(vals)) if c < len(cis) and cis[c] is not None and math.isfinite(vals[c])]
            if have:
                lo = [vals[c] - cis[c][0] for c in have]
                hi = [cis[c][1] - vals[c] for c in have]
                bars = ax.errorbar(pos[have], [vals[c] for c in have], yerr=[lo, hi], fmt="none", ecolor="#333333", elinewidth=0.8,
                                   capsize=2, zorder=4)
                bars[2][0].set_gid(f"ci-{i}")
    ax.grid(axis="y", color="#eeeeee", zorder=1)


#: classes above which figures stop labelling every class and every bar segment
MANY_CLASSES = 20
#: class tick labels shown at most (every n-th class beyond)
MAX_CLASS_TICKS = 20


#: runs whose largest values differ by more than this factor get their own y axes (e.g. LDAM's cosine logits
#: against cross-entropy's: one shared axis would flatten one of them)
SCALE_RATIO = 5.0


def _own_axes(peaks: Sequence[float]) -> float | None:
    """The ratio of the runs' largest values when it calls for one y axis per run (else ``None``)."""
    vals = [abs(v) for v in peaks if v is not None and math.isfinite(v) and v != 0]
    if len(vals) < 2 or max(vals) / min(vals) <= SCALE_RATIO:
        return None
    return max(vals) / min(vals)


def _class_ticks(ax, names: list[str], counts: dict[str, list[int]], labels: list[str], minor: set[int]) -> None:
    """Class names (and their training rows per run) under the axis; with many classes every n-th class,
    rotated, so no two labels overlap (tested on 100 classes)."""
    if len(names) > MANY_CLASSES:
        step = -(-len(names) // MAX_CLASS_TICKS)
        shown = list(range(0, len(names), step))
        ax.set_xticks(shown, [names[c] for c in shown], fontsize=7, rotation=90)
        ax.set_xlabel(f"class (every {step}th of {len(names)} labelled; shaded = minority class)", fontsize=8)
        return
    ticks = []
    for c, name in enumerate(names):
        ns = "/".join(str(counts[lab][c]) if lab in counts and c < len(counts[lab]) else "?" for lab in labels)
        ticks.append(f"{name}\n{ns}")
    ax.set_xticks(range(len(names)), ticks, fontsize=7)
    for c, t in enumerate(ax.get_xticklabels()):
        if c in minor:
            t.set_fontweight("bold")
    ax.set_xlabel(f"class (training rows: {' / '.join(labels)}); shaded and bold = minority class", fontsize=8)


def _legend(fig, ax, extra: Sequence = ()) -> None:
    from matplotlib.patches import Patch

    handles, labels = ax.get_legend_handles_labels()
    handles, labels = list(handles) + [h for h, _ in extra], list(labels) + [lab for _, lab in extra]
    handles.append(Patch(color=MINORITY_SHADE))
    labels.append("minority class")
    fig.legend(handles, labels, loc="outside upper center", ncol=len(labels), fontsize=8, frameon=False)


def _floats(values: Iterable[Any]) -> list[float]:
    """Numbers as floats, NaN where missing or not finite."""
    return [_num(v) for v in values]


# ----------------------------------------------------------------------------------------------------------
# captions: sentences from the numbers


def pooled_share(shares: list[float], n: list[int], classes) -> tuple[int, int]:
    """``(rows with the property, rows)`` pooled over ``classes`` from per-class shares and class sizes."""
    k = tot = 0
    for c in classes:
        if c < len(shares) and c < len(n) and n[c] and math.isfinite(shares[c]):
            k += round(shares[c] * n[c])
            tot += n[c]
    return k, tot


def verdict(a: tuple[int, int], b: tuple[int, int]) -> tuple[str, Any, Any]:
    """Compare two pooled shares by their 95 % Wilson intervals: ``"higher"`` / ``"lower"`` when the intervals
    separate (a finding), ``"overlap"`` when they do not (not shown), ``"none"`` without rows."""
    ca, cb = wilson(*a), wilson(*b)
    if ca is None or cb is None:
        return "none", ca, cb
    if ca[0] > cb[1]:
        return "higher", ca, cb
    if ca[1] < cb[0]:
        return "lower", ca, cb
    return "overlap", ca, cb


def _ci(share: float, ci: Any) -> str:
    return f"{_fmt(share)} [{_fmt(ci[0])}–{_fmt(ci[1])}]" if ci else _fmt(share)


def fragile_caption(acc: dict[str, list[float]], p5: dict[str, list[float]], names: list[str], minor: set[int],
                    n: dict[str, list[int]] | None = None) -> str:
    """Which classes are fragile: accuracy and the share of test rows below the training 5th percentile.

    ``n``: test rows per class and run. Marked and other classes are compared on their pooled shares with
    95 % Wilson intervals: a difference is called a finding only when the intervals separate, and when two
    runs are shown the second is the control — a control with the same or a stronger effect is said to
    contradict the finding."""
    bits = []
    labels = list(acc)
    n = n or {}
    if labels and acc[labels[0]]:
        first = labels[0]
        vals = acc[first]
        worst = min((c for c in range(len(vals)) if math.isfinite(vals[c])), key=lambda c: vals[c], default=None)
        if worst is not None:
            others = ", ".join(f"{_fmt(acc[lab][worst])} in {lab}" for lab in labels[1:] if worst < len(acc[lab]))
            bits.append(f"Least accurate class in {first}: {names[worst]} ({_fmt(vals[worst])}{'; ' + others if others else ''}).")
    if not minor:
        bits.append("No run is imbalanced enough to have minority classes, so the minority comparison does not apply.")
        return " ".join(bits)
    rest = [c for c in range(len(names)) if c not in minor]
    bits.insert(0, f"Marked: class{'es' if len(minor) > 1 else ''} {', '.join(names[c] for c in sorted(minor))}, the minority "
                   "classes (fewer training rows than the geometric mean of the largest and smallest class); in a balanced "
                   "run the same classes serve as the control. Shares are pooled over the classes, with 95 % Wilson intervals.")
    effects: dict[str, tuple[str, float]] = {}
    for lab in labels:
        rows = n.get(lab, [])
        am, ar = _mean(acc[lab], minor), _mean(acc[lab], rest)
        if math.isfinite(am) and math.isfinite(ar):
            v, cm, cr = verdict(pooled_share(acc[lab], rows, minor), pooled_share(acc[lab], rows, rest))
            word = {"lower": "lower: a finding, the intervals separate", "higher": "not lower", "overlap": "not shown: the intervals overlap",
                    "none": "lower" if am < ar else "not lower"}[v]
            bits.append(f"{lab}: the marked classes' test accuracy {_ci(am, cm)} vs {_ci(ar, cr)} for the others ({word}).")
        if lab not in p5:
            continue
        pm, pr = _mean(p5[lab], minor), _mean(p5[lab], rest)
        if not (math.isfinite(pm) and math.isfinite(pr)):
            continue
        v, cm, cr = verdict(pooled_share(p5[lab], rows, minor), pooled_share(p5[lab], rows, rest))
        if v == "none":
            v = "higher" if pm > pr else "lower"
        effects[lab] = (v, pm - pr)
        if v == "higher":
            bits.append(f"{lab}: {_ci(pm, cm)} of the marked classes' test rows fall below their class's training 5th percentile "
                        f"of top-K magnitude, vs {_ci(pr, cr)} for the others (about 0.05 if test matched train) — a finding: the "
                        f"intervals separate.")
        elif v == "overlap":
            bits.append(f"{lab}: not shown — {_ci(pm, cm)} of the marked classes' test rows fall below their class's training 5th "
                        f"percentile, vs {_ci(pr, cr)} for the others, and the intervals overlap.")
        else:
            bits.append(f"{lab}: the data do not show the paper's magnitude finding here — the marked classes' test rows fall "
                        f"below the training 5th percentile no more often ({_ci(pm, cm)}) than the others' ({_ci(pr, cr)}).")
    if len(labels) == 2 and labels[0] in effects and labels[1] in effects:
        (v0, d0), (v1, d1) = effects[labels[0]], effects[labels[1]]
        if v1 == "higher" and d1 >= d0:
            bits.append(f"The control {labels[1]} shows the same or a stronger effect (difference {_fmt(d1)} vs {_fmt(d0)}), so the "
                        f"magnitude difference of {labels[0]} is not evidence of an imbalance effect: the control contradicts it.")
    return " ".join(bits)


def shared_features(group) -> dict[int, list[int]]:
    """feature index -> the classes whose class top-K (all rows) contains it, for features in two or more."""
    owners: dict[int, list[int]] = {}
    for c, entry in enumerate(group.classes):
        idx = entry.topk.all.indices if entry.topk is not None else None
        for f in [] if idx is None else list(idx):
            if f is not None:
                owners.setdefault(int(f), []).append(c)
    return {f: cs for f, cs in owners.items() if len(cs) > 1}


def topk_caption(per_run: dict[str, tuple[dict[int, list[int]], int, list[int]]], names: list[str], minor: set[int], k: int) -> str:
    """Identity: how many top-K slots a class shares with other classes."""
    bits = []
    for lab, (shared, n_classes, sizes) in per_run.items():
        share = [sum(1 for cs in shared.values() if c in cs) for c in range(n_classes)]
        if shared:
            top = max(shared, key=lambda f: (len(shared[f]), -f))
            bits.append(f"{lab}: {len(shared)} features are in the top-{k} of two or more classes (feature {top} in "
                        f"{len(shared[top])}: {', '.join(names[c] for c in shared[top])}).")
        else:
            bits.append(f"{lab}: every class's top-{k} features are its own (none shared).")
        if minor:
            rest = [c for c in range(n_classes) if c not in minor and sizes[c] > 0]
            mi = [c for c in minor if c < n_classes and sizes[c] > 0]
            sm, sr = _mean([float(v) for v in share], mi), _mean([float(v) for v in share], rest)
            if math.isfinite(sm) and math.isfinite(sr):
                word = "more" if sm > sr else "not more"
                bits.append(f"{lab}: the marked classes share {_fmt(sm)} of their top-{k} features with other classes on average, "
                            f"the others {_fmt(sr)} ({word}).")
    return "Coloured segments are features shared with another class (same colour = same feature); grey ones are the class's own. " + " ".join(bits)


def unique_caption(unique: dict[str, list[float]], names: list[str], minor: set[int], k: int) -> str:
    bits = []
    rest = [c for c in range(len(names)) if c not in minor]
    for lab, vals in unique.items():
        if not minor:
            bits.append(f"{lab}: {_fmt(min(vals, default=float('nan')))}–{_fmt(max(vals, default=float('nan')))} distinct features per class.")
            continue
        um, ur = _mean(vals, minor), _mean(vals, rest)
        if math.isfinite(um) and math.isfinite(ur):
            if um < ur:
                bits.append(f"{lab}: the marked classes' rows use {_fmt(um)} distinct top-{k} features on average, the others {_fmt(ur)}.")
            else:
                bits.append(f"{lab}: the data do not show less diverse marked classes — {_fmt(um)} distinct top-{k} features vs {_fmt(ur)}.")
    return " ".join(bits)


def magnitude_caption(ratios: dict[str, tuple[list[float], list[float]]], cis: dict[str, tuple[list, list]] | None = None) -> str:
    """Correct vs misclassified test rows' magnitude ratios; with ``cis`` (per run, per class bootstrap intervals
    of both ratios) it counts the classes where the two intervals separate — only those are a finding."""
    bits = []
    for lab, (corr, wrong) in ratios.items():
        rc = float(np.nanmedian(corr)) if any(math.isfinite(v) for v in corr) else float("nan")
        rw = float(np.nanmedian(wrong)) if any(math.isfinite(v) for v in wrong) else float("nan")
        if not math.isfinite(rw):
            bits.append(f"{lab}: no misclassified test rows to compare (correct rows reach {_fmt(rc)} of the training magnitude).")
        elif rw < rc:
            bits.append(f"{lab}: misclassified test rows reach a median {_fmt(rw)} of the training magnitude, correct ones {_fmt(rc)}.")
        else:
            bits.append(f"{lab}: the data do not show the paper's finding — misclassified test rows reach {_fmt(rw)} of the "
                        f"training magnitude, no less than correct ones ({_fmt(rc)}).")
        if cis and lab in cis and math.isfinite(rw):
            cc, cw = cis[lab]
            both = [c for c in range(min(len(cc), len(cw))) if cc[c] is not None and cw[c] is not None]
            below = [c for c in both if cw[c][1] < cc[c][0]]
            if both:
                bits.append(f"{lab}: the 95 % bootstrap intervals separate (misclassified below correct) in {len(below)} of "
                            f"{len(both)} classes with both kinds of rows" + (" — a finding there only." if below else
                            " — so no class shows it beyond the noise."))
    return "Test/train mean CE at each class's training top-K features (1 = as in training). " + " ".join(bits)


def diversity_caption(pr: dict[str, tuple[list[int], list[float]]], minor: set[int]) -> str:
    bits = []
    for lab, (n, vals) in pr.items():
        keep = [i for i in range(len(n)) if n[i] > 1 and math.isfinite(vals[i])]
        if len(keep) >= 3 and len({n[i] for i in keep}) > 1:
            from scipy.stats import spearmanr

            rho = float(spearmanr([n[i] for i in keep], [vals[i] for i in keep]).statistic)
            trend = "larger classes are more diverse" if rho > 0.3 else "class size does not order diversity"
            bits.append(f"{lab}: Spearman ρ = {_fmt(rho)} between training rows and participation ratio ({trend}).")
        if minor:
            rest = [i for i in range(len(n)) if i not in minor]
            pm, pr_ = _mean(vals, minor), _mean(vals, rest)
            if math.isfinite(pm) and math.isfinite(pr_):
                bits.append(f"{lab}: the marked classes' participation ratio {_fmt(pm)} vs {_fmt(pr_)}.")
    return "FE participation ratio (effective number of dimensions the class's features use) against class size. " + " ".join(bits)


# ----------------------------------------------------------------------------------------------------------
# sections


def fragile(ctx):
    """Which classes are fragile: test accuracy and the share of test rows below the training 5th percentile."""
    runs = _runs(ctx, "topk")
    if not runs:
        return []
    counts, minor = train_counts(ctx), _minorities(ctx)
    names = [c.name for c in (runs[0][1].last("test") or training_group(runs[0][1])).classes]
    acc = {lab: (_floats(c.accuracy for c in g.classes) if (g := d.last("test")) else []) or [float("nan")] * len(names)
           for lab, d in runs}
    p5 = {lab: _floats(c.share_below_p5 for c in g.classes) if (g := d.last("test")) else [] for lab, d in _runs(ctx, "magnitude")}
    p5 = {lab: v for lab, v in p5.items() if v}
    acc_ci = {lab: [c.accuracy_ci for c in d.last("test").classes] for lab, d in runs if d.last("test")}
    p5_ci = {lab: [c.share_below_p5_ci for c in d.last("test").classes] for lab, d in _runs(ctx, "magnitude") if d.last("test")}
    fig, axes = _figure(2 if p5 else 1, sharey=False)
    _grouped(axes[0], names, list(acc.items()), minor, acc_ci)
    axes[0].set_ylim(0, 1.05)
    axes[0].set_ylabel("test accuracy")
    axes[0].set_title("Which classes are fragile? Test accuracy per class (last epoch)", fontsize=10)
    if p5:
        _grouped(axes[1], names, list(p5.items()), minor, p5_ci)
        axes[1].axhline(0.05, color="#555555", lw=0.8, ls="--", label="0.05 (test like train)", zorder=3)
        highs = [ci[1] for cis in p5_ci.values() for ci in cis if ci is not None]  # room for the error bars too
        axes[1].set_ylim(0, min(1.05, max(0.1, 1.1 * max([v for vals in p5.values() for v in vals if math.isfinite(v)] + highs, default=0.9))))
        axes[1].set_ylabel("share below train p5")
        axes[1].set_title("Share of test rows whose top-K magnitude is below the class's training 5th percentile "
                          "(bars: 95 % Wilson intervals)", fontsize=10)
    _class_ticks(axes[-1], names, counts, [lab for lab, _ in runs], minor)
    _legend(fig, axes[-1])
    n_test = {lab: [int(c.n) for c in d.last("test").classes] for lab, d in runs if d.last("test")}
    return [(fragile_caption(acc, p5, names, minor, n_test), fig)]


def topk_bars(ctx):
    """Identity: each class's top-K mean CE stacked, coloured by feature so a shared feature is visible."""
    runs = [(lab, d, training_group(d) or d.last("test")) for lab, d in _runs(ctx, "topk")]
    runs = [r for r in runs if r[2] is not None]
    if not runs:
        return []
    minor = _minorities(ctx)
    peaks = [max((sum(float(v) for v in e.topk.all.values if v is not None and v > 0)
                  for e in g.classes if e.topk.all.values is not None), default=0.0) for _, _, g in runs]
    ratio = _own_axes(peaks)
    fig, axes = _figure(len(runs), height=3.6, sharey=ratio is None)
    cmap = plt.get_cmap("tab20")
    per_run = {}
    for ax, (lab, data, g) in zip(axes, runs):
        shared = shared_features(g)
        colour = {f: cmap(i % 20) for i, f in enumerate(sorted(shared, key=lambda f: (-len(shared[f]), f)))}
        names = [e.name for e in g.classes]
        for c in sorted(minor):
            ax.axvspan(c - 0.45, c + 0.45, color=MINORITY_SHADE, zorder=0, lw=0)
        for c, entry in enumerate(g.classes):
            t = entry.topk.all
            if entry.n == 0 or t.indices is None:
                continue
            pos = [v for v in t.values if v is not None and v > 0]
            bottom, total = 0.0, sum(pos)
            for idx, val in zip(t.indices, t.values):
                if idx is None or val is None or val <= 0:
                    continue
                ax.bar(c, val, 0.7, bottom=bottom, color=colour.get(idx, NOT_SHARED), edgecolor="white", linewidth=0.4, zorder=2,
                       gid=f"class-{c}-feature-{idx}")
                if val > 0.05 * total and len(g.classes) <= MANY_CLASSES:  # many classes: no room for labels
                    ax.text(c, bottom + val / 2, str(idx), ha="center", va="center", fontsize=6, zorder=3)
                bottom += val
        ax.set_ylabel(f"{lab}\nmean {data.embedding}", fontsize=8)
        ax.set_title(f"{lab}: class top-{data.k} {data.embedding} ({g.split}@{g.epoch}), segments labelled by feature",
                     fontsize=10)
        per_run[lab] = (shared, len(names), [e.n for e in g.classes])
    _class_ticks(axes[-1], names, train_counts(ctx), [lab for lab, _, _ in runs], minor)
    own = f" Each run has its own y axis: their mean CE differ in scale ({ratio:.0f}×)." if ratio else ""
    return [(topk_caption(per_run, names, minor, runs[0][1].k) + own, fig)]


def unique(ctx):
    """Diversity of identity: how many distinct features a class's rows have in their top-K."""
    found = [(lab, d, training_group(d)) for lab, d in _runs(ctx, "topk")]
    found = [r for r in found if r[2] is not None]
    if not found:
        return []
    runs = [(lab, g) for lab, _, g in found]
    minor = _minorities(ctx)
    names = [c.name for c in runs[0][1].classes]
    k = found[0][1].k
    # the size-controlled count (expected distinct features in m rows of each class) when every run has it:
    # raw counts grow with a class's rows, so comparing them across classes partly restates the class sizes
    ms = {g.rarefy_m for _, g in runs}
    sized = len(ms) == 1 and None not in ms
    vals = {lab: _floats(c.unique_rarefied if sized else c.unique for c in g.classes) for lab, g in runs}
    fig, axes = _figure(1)
    _grouped(axes[0], names, list(vals.items()), minor)
    m = ms.pop() if sized else None
    axes[0].set_ylabel(f"distinct top-{k} features" + (f" in {m} rows" if sized else ""))
    axes[0].set_title(f"Distinct top-{k} features expected in {m} training rows of each class (size-controlled)" if sized
                      else f"How many distinct features do a class's training rows have in their top-{k}?", fontsize=10)
    _class_ticks(axes[0], names, train_counts(ctx), [lab for lab, _ in runs], minor)
    _legend(fig, axes[0])
    what = (f"Size-controlled: the expected number of distinct top-{k} features in a random {m} of each class's training "
            f"rows (incidence rarefaction; the raw count grows with the class's rows). " if sized else
            "Raw counts (they grow with a class's rows; no common subsample size was available). ")
    return [(what + unique_caption(vals, names, minor, k), fig)]


def magnitude(ctx):
    """Why: test rows' magnitude at the class's training top-K, relative to training, correct vs misclassified."""
    runs = [(lab, d, d.last("test")) for lab, d in _runs(ctx, "magnitude")]
    runs = [r for r in runs if r[2] is not None]
    if not runs:
        return []
    minor = _minorities(ctx)
    names = [c.name for c in runs[0][2].classes]
    fig, axes = _figure(2)
    ratios = {lab: (_floats(c.ratio_correct for c in g.classes), _floats(c.ratio_incorrect for c in g.classes)) for lab, _, g in runs}
    boot = {lab: ([c.ratio_correct_ci for c in g.classes], [c.ratio_incorrect_ci for c in g.classes]) for lab, _, g in runs}
    _grouped(axes[0], names, [(lab, r[0]) for lab, r in ratios.items()], minor, {lab: b[0] for lab, b in boot.items()})
    _grouped(axes[1], names, [(lab, r[1]) for lab, r in ratios.items()], minor, {lab: b[1] for lab, b in boot.items()})
    for ax, what in zip(axes, ("correctly classified", "misclassified")):
        ax.axhline(1.0, color="#555555", lw=0.8, ls="--", zorder=3)
        ax.set_ylabel("test / train")
        ax.set_title(f"Top-K magnitude of {what} test rows relative to training", fontsize=10)
    _class_ticks(axes[-1], names, train_counts(ctx), [lab for lab, _, _ in runs], minor)
    _legend(fig, axes[-1])
    return [(magnitude_caption(ratios, boot), fig)]


def diversity(ctx):
    runs = [(lab, training_group(d) or d.last("test")) for lab, d in _runs(ctx, "diversity")]
    runs = [(lab, g) for lab, g in runs if g is not None]
    if not runs:
        return []
    minor = _minorities(ctx)
    fig, axes = _figure(1, width=8, height=4)
    ax = axes[0]
    pr = {}
    for i, (lab, g) in enumerate(runs):
        n = [c.n for c in g.classes]
        vals = _floats(c.participation_ratio for c in g.classes)
        pr[lab] = (n, vals)
        colour = RUN_COLOURS[i % len(RUN_COLOURS)]
        for c, entry in enumerate(g.classes):
            if n[c] == 0 or not math.isfinite(vals[c]):
                continue
            ax.scatter(n[c], vals[c], color=colour, marker="o", s=36 if c in minor else 22,
                       facecolors=colour if c in minor else "white", zorder=3, label=lab if c == 0 else None)
            if len(g.classes) <= MANY_CLASSES:  # many classes: names would pile up; the tables hold them
                ax.annotate(entry.name, (n[c], vals[c]), fontsize=6, xytext=(3, 2), textcoords="offset points")
    ax.set_xscale("log")  # matplotlib's own tick labels (10^1, 10^2) render as maths: report.literal_text escapes only names
    ax.set_xlabel("training rows in the class (filled = minority class)")
    ax.set_ylabel("FE participation ratio")
    ax.set_title("Is a class's latent space narrower when it has fewer rows?", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    # the size-matched value (mean PR of m-row subsamples) compares classes at equal size, where every run has it
    matched = {lab: [c.participation_ratio_matched.mean if c.participation_ratio_matched else None for c in g.classes] for lab, g in runs}
    ms = {c.participation_ratio_matched.m for _, g in runs for c in g.classes if c.participation_ratio_matched}
    sized = ""
    if minor and len(ms) == 1:
        m = ms.pop()
        rest = [i for i in range(len(names_of(runs))) if i not in minor]
        bits = []
        for lab, vals in matched.items():
            v = [float("nan") if x is None else x for x in vals]
            pm, pr_ = _mean(v, minor), _mean(v, rest)
            if math.isfinite(pm) and math.isfinite(pr_):
                bits.append(f"{lab}: {_fmt(pm)} vs {_fmt(pr_)}")
        if bits:
            sized = (f" At equal size — the mean ratio of {m}-row subsamples, since a class of n rows spans at most n − 1 "
                     f"directions — the marked classes' participation ratio vs the others': {'; '.join(bits)}.")
    return [(diversity_caption(pr, minor) + sized, fig)]


def names_of(runs) -> list[str]:
    return [c.name for c in runs[0][1].classes] if runs else []


#: the two panels of a trajectory row: overlap with the final top-K, and the magnitude there
SERIES = (lambda t: t.identity_overlap, lambda t: t.magnitude)


def trajectory(ctx):
    runs = [(lab, d) for lab, d in _runs(ctx, "magnitude") if len(d.trajectory) > 1]
    if not runs:
        return []
    minor = _minorities(ctx)
    peaks = [max((_num(v) for t in d.trajectory.values() for v in t.magnitude if math.isfinite(_num(v))), default=0.0)
             for _, d in runs]
    ratio = _own_axes(peaks)
    fig, axes = plt.subplots(len(runs), 2, figsize=(11, 3.2 * len(runs)), squeeze=False, sharey=False if ratio else "col",
                             layout="constrained")
    cmap = plt.get_cmap("tab10")
    counts = train_counts(ctx)
    grouped = False
    for row, (lab, data) in enumerate(runs):
        traj = sorted(data.trajectory.values(), key=lambda t: t.epoch)
        epochs = [t.epoch for t in traj]
        C = len(traj[0].identity_overlap)
        if C > MANY_CLASSES and len(counts.get(lab, [])) == C:  # a band of 100 lines says nothing: head / middle / tail
            grouped = True
            for col, series in enumerate(SERIES):
                for b, (band, members) in enumerate(bands(counts[lab]).items()):
                    vals = np.array([[_num(series(t)[c]) for c in members] for t in traj])
                    ok = np.isfinite(vals).any(axis=1)
                    if not ok.any():
                        continue
                    ep = np.array(epochs)[ok]
                    with np.errstate(all="ignore"):
                        mean, lo, hi = np.nanmean(vals[ok], 1), np.nanmin(vals[ok], 1), np.nanmax(vals[ok], 1)
                    colour = BAND_COLOURS[b]
                    axes[row][col].fill_between(ep, lo, hi, color=colour, alpha=0.15, lw=0, gid=f"band-{band}")
                    axes[row][col].plot(ep, mean, color=colour, lw=1.6, gid=f"band-{band}",
                                        label=f"{band}: {len(members)} classes (mean; shaded: range)" if col == 1 else None)
            axes[row][0].set_ylabel(f"{lab}\noverlap with final top-K", fontsize=8)
            axes[row][1].set_ylabel("magnitude at final top-K", fontsize=8)
            axes[row][0].set_title(f"{lab}: when do the final top-K features emerge?", fontsize=10)
            axes[row][1].legend(fontsize=6, loc="best")
            continue
        few = len(minor) <= 10  # a line per marked class in the legend; beyond, one entry for all of them
        for c in range(C):
            if c in minor:
                first = c == min(minor)
                style = {"color": cmap(c % 10) if few else RUN_COLOURS[0], "lw": 1.6 if few else 0.9,
                         "label": f"class {c}" if few else (f"minority classes ({len(minor)})" if first else None)}
            else:
                style = {"color": "#bbbbbb", "lw": 0.8}
            for col, series in enumerate(SERIES):
                axes[row][col].plot(epochs, [_num(series(t)[c]) for t in traj], **style)
        axes[row][0].set_ylabel(f"{lab}\noverlap with final top-K", fontsize=8)
        axes[row][1].set_ylabel("magnitude at final top-K", fontsize=8)
        axes[row][0].set_title(f"{lab}: when do the final top-K features emerge?", fontsize=10)
        if minor:
            axes[row][1].legend(fontsize=6, ncol=2, loc="best")
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    late = []
    for lab, data in runs:
        traj = sorted(data.trajectory.values(), key=lambda t: t.epoch)
        mid = traj[len(traj) // 2].identity_overlap
        rest = [c for c in range(len(mid)) if c not in minor]
        vals = [_num(v) for v in mid]
        if minor and math.isfinite(_mean(vals, minor)) and math.isfinite(_mean(vals, rest)):
            late.append(f"{lab}: halfway through the recorded epochs, the marked classes' top-K overlaps the final one by "
                        f"{_fmt(_mean(vals, minor))}, the others' by {_fmt(_mean(vals, rest))}.")
    caption = ("Classes grouped into thirds by training rows (head, middle, tail): each band's mean, and its range shaded. "
               if grouped else "Marked (minority) classes in colour, the others grey. ") + " ".join(late)
    if ratio:
        caption += f" Each run has its own magnitude axis: their scales differ ({ratio:.0f}×)."
    return [(caption, fig)]


def _pair(v: Any, side: int) -> Any:
    """One side of a saved remedy's ``[recorded, remedied]`` pair (``None`` where the untrusted file has no pair)."""
    return v[side] if isinstance(v, list) and len(v) == 2 else None


def remedy_caption(name: str, classes: list, names: list[str], minor: set[int]) -> str:
    """Which classes a remedy helps or hurts (95 % Wilson intervals apart), and whether the share of test rows
    below the training p5 — the magnitude symptom — moved with it. ``classes``: a remedy's class records."""
    up, down = [], []
    for c, e in enumerate(classes):
        a, b = _num(_pair(e.accuracy, 0)), _num(_pair(e.accuracy, 1))
        if e.accuracy_changed is True and math.isfinite(a) and math.isfinite(b):
            (up if b > a else down).append(f"{names[c]}{' (minority)' if c in minor else ''} {a:.2f} → {b:.2f}")
    text = f"{name}: " + (f"helps {', '.join(up[:6])}" if up else "helps no class beyond its 95 % interval")
    if down:
        text += f"; hurts {', '.join(down[:6])}"
    # pooled over the (minority) classes: rows below p5 / rows, each side with its Wilson interval; a change is
    # called one only where the intervals separate
    idx = [c for c in sorted(minor) if c < len(classes)] or list(range(len(classes)))
    pooled = []
    for side in (0, 1):
        below = total = 0
        for c in idx:
            n, v = _num(classes[c].n), _num(_pair(classes[c].share_below_p5, side))
            if math.isfinite(n) and math.isfinite(v) and n > 0:
                below, total = below + round(v * n), total + int(n)
        pooled.append((below, total))
    if pooled[0][1] and pooled[1][1]:
        (b0, n0), (b1, n1) = pooled
        ci0, ci1 = wilson(b0, n0), wilson(b1, n1)
        which = "minority classes'" if minor else "classes'"
        text += (f". The {which} pooled share of test rows below the training p5 goes {_ci(b0 / n0, ci0)} → {_ci(b1 / n1, ci1)}: "
                 + ("the magnitude symptom shrinks with it (the intervals separate)" if ci1[1] < ci0[0] else
                    "it grows (the intervals separate)" if ci1[0] > ci0[1] else
                    "not shown to move (the intervals overlap), so the remedy changes the decision, not shown to change why it failed"))
    return text + "."


def remedies(ctx):
    """What head-level remedies (`fragility remedy`, saved next to a store) change, class by class."""
    out = []
    minor = _minorities(ctx)
    for i, lab in enumerate(ctx.labels):
        saved = (ctx.extra.get("remedies") or {}).get(lab)  # fragility.remedies.saved_results: records of an untrusted file
        if not saved:
            continue
        names = list(ctx.stores[lab].class_names)
        tried = list(saved.remedies.items())
        first = tried[0][1].classes

        def series(value: Callable[[Any], Any], j: int, entries: list) -> list[float]:
            return [_num(_pair(value(e), j)) for e in entries]

        def cis(j: int, entries: list) -> list[Any]:
            out_ = []
            for e in entries:
                ci = _pair(e.accuracy_ci, j)
                ok = isinstance(ci, list) and len(ci) == 2 and all(isinstance(x, (int, float)) for x in ci)
                out_.append([float(ci[0]), float(ci[1])] if ok else None)
            return out_

        def accuracy(e):
            return e.accuracy

        def share(e):
            return e.share_below_p5

        acc = [("recorded head", series(accuracy, 0, first))] + [(n, series(accuracy, 1, e.classes)) for n, e in tried]
        acc_ci = {"recorded head": cis(0, first), **{n: cis(1, e.classes) for n, e in tried}}
        p5 = [("recorded head", series(share, 0, first))] + [(n, series(share, 1, e.classes)) for n, e in tried]
        fig, axes = _figure(2, sharey=False)
        _grouped(axes[0], names, acc, minor, acc_ci)
        axes[0].set_ylim(0, 1.05)
        axes[0].set_ylabel("test accuracy")
        axes[0].set_title(f"{lab}: test accuracy per class, recorded head vs remedied heads (bars: 95 % Wilson intervals)", fontsize=10)
        _grouped(axes[1], names, p5, minor)
        axes[1].axhline(0.05, color="#555555", lw=0.8, ls="--", zorder=3)
        axes[1].set_ylabel("share below train p5")
        axes[1].set_title("Share of test rows below the class's training 5th percentile (CE magnitude at its training top-K)", fontsize=10)
        counts = {lab: [int(_num(e.n_train)) if math.isfinite(_num(e.n_train)) else 0 for e in first]}
        _class_ticks(axes[-1], names, counts, [lab], minor)
        _legend(fig, axes[-1])
        rows = _num(saved.test_rows)
        caption = (f"{lab}, test@{saved.epoch}"
                   + (f", {int(rows)} test rows" if math.isfinite(rows) else "") + ": each remedy is a new classifier built from the "
                   "stored rows (the backbone unchanged), scored on the stored test FE. "
                   + " ".join(remedy_caption(n, e.classes, names, minor) for n, e in tried))
        out.append((caption, fig))

        def summary(d: Any) -> list[float]:
            return [float("nan")] * 3 if d is None else [_num(d.accuracy), _num(d.balanced_accuracy), _num(d.tail_accuracy)]

        rows_ = [["recorded head", *summary(saved.recorded)]] + [[n, *summary(e.summary)] for n, e in tried]
        out.append(fragility.analysis.Table(f"{lab}: remedies on test@{saved.epoch} (tail = the third of the classes with "
                                            f"the fewest training rows)", ["head", "accuracy", "balanced accuracy", "tail accuracy"],
                                            [[r[0], *[round(v, 4) if math.isfinite(v) else None for v in r[1:]]] for r in rows_]))
    return out


def comparison(ctx):
    return [ctx.comparison.tables[0]] if ctx.comparison is not None and ctx.comparison.tables else []


MAX_TABLES = 12


def tables(ctx):
    """The generic section: every analyzer's tables, built-in or third-party, from the one analysis.

    Analyzers whose ``data["groups"]`` follow the built-ins' layout show the tables of the last test
    epoch; any other analyzer shows its tables (at most ``MAX_TABLES`` per analyzer and run).
    """
    out = []
    for lab in ctx.labels:
        for r in ctx.results[lab].values():
            tests = r.group_names("test")
            last = tests[-1] if tests else None
            chosen = [t for t in r.tables if last is None or t.title.startswith(f"{last}:")]
            for t in chosen[:MAX_TABLES]:
                out.append(type(t)(f"{lab} · {r.analyzer} · {t.title}", t.columns, t.rows))
    return out


@fragility.hookimpl
def fragility_register_report_sections(registrar):
    registrar.add("fragile", fragile, title="Which classes are fragile", order=10)
    registrar.add("comparison", comparison, title="Imbalanced vs balanced", order=15)
    registrar.add("magnitude", magnitude, title="Why: magnitude at the training top-K, test vs train", order=20)
    registrar.add("topk", topk_bars, title="Why: class top-K CE identity and shared features", order=30)
    registrar.add("unique", unique, title="Why: distinct top-K features per class", order=40)
    registrar.add("diversity", diversity, title="Latent class diversity", order=50)
    registrar.add("trajectory", trajectory, title="Epoch trajectories", order=60)
    registrar.add("remedies", remedies, title="Remedies: what a new head changes, and whether it changes why", order=70)
    registrar.add("tables", tables, title="Tables", order=90)
