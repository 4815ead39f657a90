"""``fragility demo``: the paper's comparison on embedded data, end to end.

Trains a timm backbone twice — on an exponentially imbalanced training set and on the balanced control —
with the Recorder attached (a train pass every epoch, a test sweep every epoch), runs every built-in
analyzer on both stores, prints the per-class findings and writes a report folder.
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any

import torch
from rich.console import Console
from torch import nn

from .._fingerprint import incomparable
from ..analysis import Result, Table, analyze, compare_results
from ..analysis.records import diversity_records, magnitude_records, topk_records
from .datasets import ImageData, imbalance, load
from .._safe import markup
from ..errors import DataError, close_matches, output_dir
from ..recorder import Recorder
from ..store import Store


class _PlainProgress:
    """Progress without a terminal: a plain line on stderr at most every ``every`` seconds (never silence)."""

    def __init__(self, console: Console, every: float = 10.0) -> None:
        self.console, self.every = console, every
        self.tasks: dict[int, dict[str, Any]] = {}

    def __enter__(self) -> _PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        for t in self.tasks.values():
            if "end" not in t:  # a finished task printed its last line when it finished
                self._line(t)

    def add_task(self, description: str, total: int) -> int:
        self.tasks[len(self.tasks)] = {"description": description, "total": total, "done": 0, "t0": time.monotonic(), "last": 0.0}
        return len(self.tasks) - 1

    def update(self, task: int, description: str | None = None) -> None:
        t = self.tasks[task]
        if description is not None and description != t["description"]:
            t["description"] = description
            if "end" in t:  # finished: its last line, with the last epoch's numbers (the clock stopped at its end)
                self._line(t)

    def advance(self, task: int, n: int = 1) -> None:
        t = self.tasks[task]
        t["done"] += n
        if t["done"] >= t["total"] and "end" not in t:
            t["end"] = time.monotonic()  # its clock stops: another run training next does not count
            self._line(t)
        elif time.monotonic() - t["last"] >= self.every:
            self._line(t)

    def _line(self, t: dict[str, Any]) -> None:
        t["last"] = time.monotonic()
        spent = t.get("end", t["last"]) - t["t0"]
        eta = spent / t["done"] * (t["total"] - t["done"]) if t["done"] else float("nan")
        self.console.print(f"{markup(t['description'])}: {t['done']}/{t['total']} steps, {spent:.0f} s, ETA {eta:.0f} s",
                           highlight=False, soft_wrap=True)


def _progress(console: Console):
    if not console.is_terminal:
        return _PlainProgress(console)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description:<48}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
        console=console, transient=False,
    )


def train_and_record(
    data: ImageData,
    x: torch.Tensor,
    y: torch.Tensor,
    store: str,
    *,
    model_name: str,
    epochs: int,
    seed: int,
    batch_size: int = 64,
    lr: float = 1e-3,
    progress: Any = None,
    label: str = "",
) -> dict[str, Any]:
    """Train ``model_name`` on ``(x, y)`` for ``epochs`` with a Recorder; return the final test accuracy."""
    import timm

    torch.manual_seed(seed)
    try:
        model = timm.create_model(model_name, pretrained=False, num_classes=len(data.classes))
    except Exception as exc:  # noqa: BLE001 - unknown names, bad kwargs: one line for the user
        raise DataError(f"cannot create timm model {model_name!r}: {exc}") from None
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
    n = len(y)
    steps = -(-n // batch_size)
    test = [(data.x_test[i : i + 256], data.y_test[i : i + 256]) for i in range(0, len(data.y_test), 256)]
    sweep = [(x[i : i + 256], y[i : i + 256], torch.arange(i, min(i + 256, n))) for i in range(0, n, 256)]
    task = progress.add_task(f"train {label}", total=epochs * steps) if progress else None
    g = torch.Generator().manual_seed(seed)
    with Recorder(model, store, class_names=data.classes, overwrite=True) as rec:
        last = ""
        for epoch in range(epochs):
            if progress:  # the epoch being trained, not the one before it
                progress.update(task, description=f"train {label} epoch {epoch + 1}/{epochs}{last}")
            model.train()
            perm = torch.randperm(n, generator=g)
            total_loss, correct = 0.0, 0
            with rec.capture("train", epoch=epoch):
                for s in range(0, n, batch_size):
                    idx = perm[s : s + batch_size]
                    logits = model(x[idx])
                    loss = nn.functional.cross_entropy(logits, y[idx])
                    rec.record(y[idx], index=idx)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    total_loss += float(loss.detach()) * len(idx)
                    correct += int((logits.argmax(1) == y[idx]).sum())
                    if progress:
                        progress.advance(task)
            sched.step()
            # the sound reference for magnitudes: the training images in eval mode, as the authors extract FE
            rec.evaluate(sweep, split="train_eval", epoch=epoch)
            rec.evaluate(test, split="test", epoch=epoch)
            last = f" (epoch {epoch + 1}: loss {total_loss / n:.3f} acc {correct / n:.3f})"
            if progress and epoch + 1 == epochs:
                progress.update(task, description=f"train {label} {epochs} epochs{last}")
    model.eval()
    with torch.no_grad():
        acc = float((model(data.x_test).argmax(1) == data.y_test).float().mean())
    return {"store": store, "accuracy": acc, "rows": n}


def findings(results: dict[str, dict[str, Result]], labels: tuple[str, str]) -> Table:
    """The per-class comparison a person reads first: size, accuracy, unique top-K, magnitudes, diversity."""
    la, lb = labels
    a, b = results[la], results[lb]

    rows = []
    ta, tb = topk_records(a["topk"]), topk_records(b["topk"])
    ta_tr, tb_tr = ta.last("train").classes, tb.last("train").classes
    ta_te, tb_te = ta.last("test").classes, tb.last("test").classes
    ma, mb = magnitude_records(a["magnitude"]).last("test").classes, magnitude_records(b["magnitude"]).last("test").classes
    da, db = diversity_records(a["diversity"]).last("train").classes, diversity_records(b["diversity"]).last("train").classes
    for c in range(len(ta_tr)):
        rows.append([
            ta_tr[c].name, ta_tr[c].n, tb_tr[c].n,
            ta_te[c].accuracy, tb_te[c].accuracy,
            ta_tr[c].unique, tb_tr[c].unique, ta_tr[c].unique_rarefied, tb_tr[c].unique_rarefied,
            ma[c].ratio_correct, mb[c].ratio_correct,
            ma[c].share_below_p5, mb[c].share_below_p5,
            da[c].participation_ratio, db[c].participation_ratio,
        ])
    sa, sb = la[:3], lb[:3]
    m = ta.last("train").rarefy_m
    cols = ["class", f"n {sa}", f"n {sb}", f"acc {sa}", f"acc {sb}", f"uniq {sa}", f"uniq {sb}", f"u@m {sa}", f"u@m {sb}",
            f"mag {sa}", f"mag {sb}", f"<p5 {sa}", f"<p5 {sb}", f"PR {sa}", f"PR {sb}"]
    return Table(
        f"per class at the last epoch — {la} ({sa}) vs {lb} ({sb}): n = training rows, acc = test accuracy, "
        f"uniq = unique top-K CE (train), u@m = the same expected in m={m} rows of the class (size-controlled), "
        f"mag = test/train magnitude at the training top-K (correct rows; reference: the eval sweep of the training set), "
        f"<p5 = share of test rows below the training 5th percentile, PR = FE participation ratio (train)",
        cols, rows,
    )


#: the remedies the demo tries on the imbalanced run (tau-norm with tau 1, untuned: every test row is evaluated,
#: so the numbers sit next to the balanced control's on the same rows)
DEMO_REMEDIES = ("tau-norm", "eos")


def remedy_table(rem: Result, control: dict[str, Result], labels: tuple[str, str]) -> Table:
    """Per class: the imbalanced run's recorded head, each remedied head and the balanced control side by side —
    test accuracy, unique top-K CE features of the test rows, share of test rows below the training p5."""
    la, lb = labels
    from ..remedies import remedy_records

    outcomes = remedy_records(rem).remedies
    tried = list(outcomes)
    short = {"tau-norm": "tau", "logit-adjust": "la", "crt": "crt", "reweight": "rw", "eos": "eos"}
    bal_t, bal_m = topk_records(control["topk"]).last("test").classes, magnitude_records(control["magnitude"]).last("test").classes
    first = outcomes[tried[0]].classes
    rows = []
    for c, e in enumerate(first):
        row = [e.name, e.n_train]
        row += [e.accuracy[0], *[outcomes[n].classes[c].accuracy[1] for n in tried], bal_t[c].accuracy]
        row += [e.unique[0], *[outcomes[n].classes[c].unique[1] for n in tried], bal_t[c].unique]
        row += [e.share_below_p5[0], *[outcomes[n].classes[c].share_below_p5[1] for n in tried], bal_m[c].share_below_p5]
        rows.append(row)
    heads = [la[:3], *[short.get(n, n) for n in tried], lb[:3]]
    cols = ["class", f"n {la[:3]}"] + [f"{q} {h}" for q in ("acc", "uniq", "<p5") for h in heads]
    opts = {n: outcomes[n].options for n in tried}
    names = ", ".join(f"{short.get(n, n)} = {n} ({'tau ' + format(opts[n]['tau'], 'g') if 'tau' in opts[n] else 'head retrained'})"
                      for n in tried)
    return Table(
        f"remedies for the {la} run at the last epoch, next to the {lb} control (test rows): {names}; acc = test accuracy, "
        f"uniq = unique top-K CE over the class's test rows, <p5 = share of test rows below the training 5th percentile. "
        f"Each remedy is a new classifier from the stored rows — the backbone is unchanged (fragility remedy)",
        cols, rows,
    )


def run_demo(
    *,
    data: str = "digits",
    root: str | None = None,
    model: str = "resnet10t",
    epochs: int = 10,
    imbalance_ratio: float = 20.0,
    seed: int = 0,
    out: str = "demo-report",
    k: int = 10,
    stdout: Console | None = None,
    stderr: Console | None = None,
) -> dict[str, Any]:
    """Run the demo; returns paths and the results. Findings go to ``stdout``, progress to ``stderr``."""
    stdout = stdout or Console()
    stderr = stderr or Console(stderr=True)
    if epochs < 1:
        raise DataError(f"--epochs {epochs} must be >= 1")
    import timm

    if not timm.is_model(model):
        raise DataError(f"--model {model!r} is not a timm model{close_matches(model, timm.list_models())}; see timm.list_models()")
    output_dir(out)  # before minutes of training, not after
    t0 = time.perf_counter()
    ds = load(data, root, seed=seed)
    x_imb, y_imb = imbalance(ds.x_train, ds.y_train, imbalance_ratio, seed=seed)
    stores_dir = os.path.join(out, "stores")
    if os.path.isdir(stores_dir):
        shutil.rmtree(stores_dir)
    os.makedirs(stores_dir, exist_ok=True)
    labels = ("imbalanced", "balanced")
    runs = {}
    stderr.print(
        f"[bold]fragility demo[/]: {markup(ds.name)}, {markup(model)}, {epochs} epochs; imbalanced train set "
        f"{torch.bincount(y_imb).tolist()} (ratio {imbalance_ratio:g}) vs balanced {torch.bincount(ds.y_train).tolist()}"
    )
    with _progress(stderr) as prog:
        for label, (x, y) in zip(labels, ((x_imb, y_imb), (ds.x_train, ds.y_train))):
            runs[label] = train_and_record(
                ds, x, y, os.path.join(stores_dir, f"{label}.fragility"), model_name=model, epochs=epochs, seed=seed,
                progress=prog, label=label,
            )
    results = {}
    # one subsample size for both runs' size-controlled unique counts: the smallest class of either
    m = int(min(torch.bincount(y_imb).min(), torch.bincount(ds.y_train).min()))
    for label in labels:
        stderr.print(f"analyzing {label} …")
        results[label] = analyze(runs[label]["store"], k=k, progress=True, options={"rarefy_m": max(1, m)})
    with Store(runs[labels[0]]["store"]) as sa, Store(runs[labels[1]]["store"]) as sb:  # the same seed: the same initial weights
        why = incomparable(sa.metadata, sb.metadata)
    cmp = compare_results(results[labels[0]], results[labels[1]], labels=labels, incomparable=why)  # no second read
    table = findings(results, labels)
    stdout.print(table)
    from ..remedies import remedy

    stderr.print(f"trying remedies on the {labels[0]} run …")
    remedies = remedy_table(remedy(runs[labels[0]]["store"], DEMO_REMEDIES, tau=1.0, k=k, progress=True), results[labels[1]], labels)
    stdout.print(remedies)
    from ..report import build_report

    stderr.print("writing report …")
    index = build_report([runs[lab]["store"] for lab in labels], out, labels=list(labels), results=results, comparison=cmp,
                         headline=table, progress=True)
    elapsed = time.perf_counter() - t0
    stdout.print(
        f"test accuracy: {labels[0]} {runs[labels[0]]['accuracy']:.3f}, {labels[1]} {runs[labels[1]]['accuracy']:.3f}; "
        f"report: {markup(index)} ({elapsed:.0f} s)"
    )
    return {"runs": runs, "results": results, "comparison": cmp, "findings": table, "remedies": remedies, "report": index,
            "seconds": elapsed}
