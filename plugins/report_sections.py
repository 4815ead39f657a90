"""Built-in report sections: per-class accuracy with class counts, stacked top-K bars labelled with feature
indices (the paper's figure), instance frequency curves, train vs test magnitude, diversity vs class size,
epoch trajectories, and the two-run comparison."""

from __future__ import annotations

import numpy as np

import fragility
from fragility.analysis import last_group


class _LazyPyplot:
    """matplotlib is imported on first use: registering the plugin (every Recorder does) stays cheap."""

    def __getattr__(self, name):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as pyplot

        return getattr(pyplot, name)


plt = _LazyPyplot()


def _runs(ctx, analyzer: str):
    return [(lab, ctx.results[lab][analyzer].data) for lab in ctx.labels if analyzer in ctx.results[lab]]


def _fig(n: int, height: float = 3.4, width: float = 6.0):
    fig, axes = plt.subplots(1, n, figsize=(width * n, height), squeeze=False)
    return fig, axes[0]


def accuracy(ctx):
    runs = _runs(ctx, "topk")
    if not runs:
        return []
    fig, axes = _fig(len(runs))
    for ax, (lab, data) in zip(axes, runs):
        test, train = last_group(data, "test") or last_group(data, "train"), last_group(data, "train")
        names = [c["class"] for c in test["classes"]]
        acc = [c["accuracy"] if c["accuracy"] is not None else 0 for c in test["classes"]]
        counts = [c["n"] for c in (train or test)["classes"]]
        bars = ax.bar(range(len(names)), acc, color="#4c72b0")
        for b, n in zip(bars, counts):
            ax.annotate(f"n={n}", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(names)), names, rotation=45 if len(names) > 10 else 0, fontsize=8)
        ax.set_ylim(0, 1.12)
        ax.set_ylabel("test accuracy")
        ax.set_title(f"{lab}: accuracy per class (n = training rows)")
    return [("Per-class test accuracy at the last epoch, annotated with the class's training size.", fig)]


def topk_bars(ctx):
    runs = _runs(ctx, "topk")
    if not runs:
        return []
    fig, axes = _fig(len(runs), height=4.2, width=7.0)
    for ax, (lab, data) in zip(axes, runs):
        g = last_group(data, "train") or last_group(data, "test")
        k = data["k"]
        cmap = plt.get_cmap("tab20")
        for c, entry in enumerate(g["classes"]):
            t = entry["topk"]["all"]
            if entry["n"] == 0 or t["indices"] is None:
                continue
            bottom = 0.0
            for j, (idx, val) in enumerate(zip(t["indices"], t["values"])):
                if idx is None or val is None or val <= 0:
                    continue
                ax.bar(c, val, bottom=bottom, color=cmap(j % 20), edgecolor="white", linewidth=0.4)
                if val > 0.04 * max(1e-9, sum(v for v in t["values"] if v and v > 0)):
                    ax.text(c, bottom + val / 2, str(idx), ha="center", va="center", fontsize=6)
                bottom += val
        ax.set_xticks(range(len(g["classes"])), [e["class"] for e in g["classes"]], fontsize=8)
        ax.set_ylabel(f"mean {data['embedding']} value")
        ax.set_title(f"{lab}: class top-{k} {data['embedding']} ({g['split']}@{g['epoch']}), labelled by feature index")
    return [("The paper's figure: each class's top-K mean CE stacked, each segment labelled with its feature index.", fig)]


def frequency(ctx):
    runs = _runs(ctx, "topk")
    if not runs:
        return []
    fig, axes = _fig(len(runs))
    for ax, (lab, data) in zip(axes, runs):
        g = last_group(data, "train") or last_group(data, "test")
        for entry in g["classes"]:
            if entry["n"] == 0:
                continue
            f = np.sort(np.asarray(entry["freq"], dtype=float))[::-1]
            f = f[f > 0]
            ax.plot(np.arange(1, len(f) + 1), f, label=f"{entry['class']} (n={entry['n']})", lw=1.2)
        ax.set_xscale("log")
        ax.set_xlabel("feature rank")
        ax.set_ylabel("share of rows with the feature in their top-K")
        ax.set_title(f"{lab}: instance top-{data['k']} frequency curves")
        ax.legend(fontsize=6, ncol=2)
    return [("Instance top-K frequencies per class, sorted: a long flat tail means many distinct features (docs/analyzers.md).", fig)]


def magnitude(ctx):
    runs = _runs(ctx, "magnitude")
    if not runs:
        return []
    fig, axes = _fig(len(runs))
    for ax, (lab, data) in zip(axes, runs):
        g = last_group(data, "test")
        if g is None:
            continue
        cls = g["classes"]
        x = np.arange(len(cls))
        train = [v if v is not None else np.nan for v in data["train_mean"]]
        corr = [c["mean_correct"] if c["mean_correct"] is not None else np.nan for c in cls]
        wrong = [c["mean_incorrect"] if c["mean_incorrect"] is not None else np.nan for c in cls]
        ax.bar(x - 0.27, train, 0.27, label="train", color="#4c72b0")
        ax.bar(x, corr, 0.27, label="test correct", color="#55a868")
        ax.bar(x + 0.27, wrong, 0.27, label="test misclassified", color="#c44e52")
        ax.set_xticks(x, [c["class"] for c in cls], fontsize=8)
        ax.set_ylabel(f"mean {data['embedding']} at training top-{data['k']}")
        ax.set_title(f"{lab}: magnitude drift ({g['split']}@{g['epoch']} vs {data['reference']})")
        ax.legend(fontsize=7)
    return [("Magnitudes at each class's training top-K features: misclassified test rows fall short (docs/analyzers.md).", fig)]


def diversity(ctx):
    runs = _runs(ctx, "diversity")
    if not runs:
        return []
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.6))
    for i, (lab, data) in enumerate(runs):
        g = last_group(data, "train") or last_group(data, "test")
        cls = [c for c in g["classes"] if c["n"] > 0]
        n = [c["n"] for c in cls]
        marker = "os^D"[i % 4]
        axes[0].scatter(n, [c["participation_ratio"] or np.nan for c in cls], label=lab, marker=marker)
        axes[1].scatter(n, [c["unique_share"] or np.nan for c in cls], label=lab, marker=marker)
        for c in cls:
            axes[0].annotate(c["class"], (c["n"], c["participation_ratio"] or 0), fontsize=6)
    for ax, name in zip(axes, ("FE participation ratio", "unique top-K share (unique / D)")):
        ax.set_xscale("log")
        ax.set_xlabel("training rows in the class")
        ax.set_ylabel(name)
        ax.legend(fontsize=7)
    axes[0].set_title("latent diversity vs class size")
    return [("Diversity against class size: minority classes of the imbalanced run sit low and left.", fig)]


def trajectory(ctx):
    runs = [(lab, d) for lab, d in _runs(ctx, "magnitude") if len(d.get("trajectory", {})) > 1]
    if not runs:
        return []
    items = []
    for lab, data in runs:
        traj = sorted(data["trajectory"].values(), key=lambda t: t["epoch"])
        epochs = [t["epoch"] for t in traj]
        fig, axes = plt.subplots(1, 2, figsize=(12, 3.4))
        C = len(traj[0]["identity_overlap"])
        for c in range(C):
            ov = [t["identity_overlap"][c] for t in traj]
            mg = [t["magnitude"][c] for t in traj]
            axes[0].plot(epochs, [np.nan if v is None else v for v in ov], label=str(c), lw=1)
            axes[1].plot(epochs, [np.nan if v is None else v for v in mg], label=str(c), lw=1)
        axes[0].set_ylabel("overlap with final top-K")
        axes[1].set_ylabel("magnitude at final top-K")
        for ax in axes:
            ax.set_xlabel("epoch")
            ax.legend(fontsize=6, ncol=2, title="class", title_fontsize=6)
        axes[0].set_title(f"{lab}: identity and magnitude across training epochs")
        items.append((f"{lab}: how the final top-K features emerge over the recorded epochs.", fig))
    return items


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
            groups = r.data.get("groups", {}) if isinstance(r.data.get("groups"), dict) else {}
            tests = [g for g, v in groups.items() if isinstance(v, dict) and v.get("split") == "test"]
            last = max(tests, key=lambda g: groups[g]["epoch"]) if tests else None
            chosen = [t for t in r.tables if last is None or t.title.startswith(f"{last}:")]
            for t in chosen[:MAX_TABLES]:
                out.append(type(t)(f"{lab} · {r.analyzer} · {t.title}", t.columns, t.rows))
    return out


@fragility.hookimpl
def fragility_register_report_sections(registrar):
    registrar.add("accuracy", accuracy, title="Accuracy per class", order=10)
    registrar.add("comparison", comparison, title="Imbalanced vs balanced", order=15)
    registrar.add("topk", topk_bars, title="Class top-K CE (identity)", order=20)
    registrar.add("frequency", frequency, title="Instance top-K frequencies", order=30)
    registrar.add("magnitude", magnitude, title="Magnitude drift, train vs test", order=40)
    registrar.add("diversity", diversity, title="Latent class diversity", order=50)
    registrar.add("trajectory", trajectory, title="Epoch trajectories", order=60)
    registrar.add("tables", tables, title="Tables", order=90)
