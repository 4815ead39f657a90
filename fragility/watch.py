"""``fragility watch``: a live view of a store while it is being written.

Every refresh re-reads the store through the validation layer — one Store kept open, only new or changed
pass files validated again (SWMR readers see rows as the writer commits them) — shows the passes and the rows per class of the newest one, and — once a training and a test pass of
the newest epoch are complete — their per-class metrics, with the classes that look fragile marked. The
metrics are computed once per new complete pass, not on every refresh. A writer that ends or is killed
leaves the view running on the store as it is (the interrupted pass reads incomplete).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._safe import markup
from .errors import FragilityError
from .store import Store
from ._light import TRAIN_EVAL, sound_reference_split
from .store._format import LOCK_FILE

#: a class "looks fragile" when this share of its test rows falls below the training 5th percentile
#: (4× the 5% expected of a class whose test rows look like its training rows) and its 95 % Wilson interval
#: lies above that 5% ...
FRAGILE_SHARE_BELOW_P5 = 0.2
#: ... or its test accuracy trails the overall accuracy by this much, also at the upper end of its interval
FRAGILE_ACCURACY_GAP = 0.1
#: the share of a class's test rows below the training p5 when nothing drifted
EXPECTED_SHARE_BELOW_P5 = 0.05


def writer_state(path: str) -> str:
    """``"writing"`` (a live process holds the store), ``"gone"`` (it ended or died) or ``"none"``.
    (:class:`Watcher` tells a ``"finished"`` writer from one killed inside a pass by the passes' state.)"""
    lock = os.path.join(path, LOCK_FILE)
    try:
        with open(lock) as fh:
            pid = int(fh.read(32).strip() or 0)
    except (OSError, ValueError):
        return "none"
    if pid <= 0:
        return "none"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "gone"
    except PermissionError:
        return "writing"
    # a live pid may be a finished writer's process still running other work: check the flock itself
    import fcntl

    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return "gone"
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return "writing"
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return "gone"
    finally:
        os.close(fd)


@dataclass
class Snapshot:
    """What one refresh saw."""

    path: str
    writer: str
    passes: list[dict[str, Any]]
    class_names: list[str]
    newest_counts: list[int] | None
    metrics: dict[str, Any] | None = None
    error: str | None = None
    seen_at: float = field(default_factory=time.time)
    damaged: list[str] = field(default_factory=list)

    def line(self) -> str:
        """One plain line for logs and terminals without a cursor."""
        if self.error:
            return f"{self.path}: {self.error}"
        rows = sum(p["rows"] for p in self.passes)
        newest = self.passes[-1] if self.passes else None
        what = f"newest {newest['split']}@{newest['epoch']} {newest['rows']} rows{'' if newest['complete'] else ' (incomplete)'}" if newest else "no pass yet"
        fragile = ""
        if self.metrics:
            names = [c["class"] for c in self.metrics["classes"] if c["fragile"]]
            fragile = f"; fragile at {self.metrics['test']}: {', '.join(names) or 'none'}"
            if self.metrics.get("provisional"):
                fragile += " (provisional: train-mode reference)"
        damaged = f" ({len(self.damaged)} damaged: {', '.join(self.damaged)})" if self.damaged else ""
        return f"{self.path}: {len(self.passes)} passes{damaged}, {rows} rows, {what}; writer {self.writer}{fragile}"


def is_fragile(share: float | None, share_ci: Any, acc: float | None, acc_ci: Any, overall: float | None) -> bool:
    """A class looks fragile at the 95 % level: many test rows below the training p5 (the share at least
    FRAGILE_SHARE_BELOW_P5 and its Wilson interval above the 5 % expected without drift), or an accuracy whose
    whole interval trails the overall accuracy by FRAGILE_ACCURACY_GAP. Small classes need clear effects."""
    by_share = share is not None and share_ci is not None and share >= FRAGILE_SHARE_BELOW_P5 and share_ci[0] > EXPECTED_SHARE_BELOW_P5
    by_acc = acc_ci is not None and overall is not None and acc_ci[1] < overall - FRAGILE_ACCURACY_GAP
    return bool(by_share or by_acc)


class Watcher:
    """Refreshes snapshots of a store; metrics recomputed only when a new complete pass appears."""

    def __init__(self, path: str | os.PathLike, k: int = 10) -> None:
        self.path = os.fspath(path)
        self.k = k
        self._metrics_key: tuple | None = None
        self._metrics: dict[str, Any] | None = None
        self._store: Store | None = None

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def snapshot(self) -> Snapshot:
        writer = writer_state(self.path)
        try:
            if self._store is None:
                self._store = Store(self.path)
            else:
                self._store.refresh()
            s = self._store
            passes = [p.to_dict() for p in s.passes]
            counts = None
            if s.passes and s.passes[-1].rows:
                labels = s.read(s.passes[-1], ["label"])["label"]
                counts = np.bincount(labels[labels >= 0], minlength=s.num_classes).tolist()
            metrics = self._metrics_for(s)
            if writer == "gone":  # ended: cleanly (every pass complete) or killed inside a pass
                writer = "finished" if all(p.complete for p in s.passes) else "gone (killed inside a pass)"
            return Snapshot(self.path, writer, passes, s.class_names, counts, metrics, damaged=[d.name for d in s.damaged])
        except FragilityError as exc:  # a store still being created, or broken: say so and keep watching
            self.close()
            return Snapshot(self.path, writer, [], [], None, None, error=str(exc))

    def _metrics_for(self, s: Store) -> dict[str, Any] | None:
        complete = [p for p in s.passes if p.complete and p.rows]
        # the reference: an eval sweep of the training split when recorded, else the (train-mode) training pass
        ref = sound_reference_split(complete)
        trains = [p for p in complete if p.split == ref]
        tests = [p for p in complete if p.split not in ("train", TRAIN_EVAL)]
        if not trains or not tests:
            return None
        train, test = trains[-1], max(tests, key=lambda p: (p.epoch, p.name))
        key = (train.name, test.name)
        if key == self._metrics_key:
            return self._metrics
        from .analysis import analyze
        from .analysis.records import magnitude_records, topk_records

        k = min(self.k, s.feature_dim)
        res = analyze(s, ["topk", "magnitude"], passes=[train.name, test.name], k=k, reference_split=train.split,
                      reference_epoch=train.epoch)
        provisional = train.mode == "train"
        tg = f"{test.split}@{test.epoch}"
        top = topk_records(res["topk"]).groups
        found = magnitude_records(res["magnitude"]).groups.get(tg)
        mag = found.classes if found is not None else []
        test_classes = top[tg].classes
        n_all = sum(c.n for c in test_classes)
        overall = sum((c.accuracy or 0) * c.n for c in test_classes) / n_all if n_all else None
        train_classes = top[f"{train.split}@{train.epoch}"].classes
        classes = []
        for c, entry in enumerate(test_classes):
            m = mag[c] if c < len(mag) else None
            share, share_ci = (m.share_below_p5, m.share_below_p5_ci) if m is not None else (None, None)
            acc, acc_ci = entry.accuracy, entry.accuracy_ci
            fragile = is_fragile(share, share_ci, acc, acc_ci, overall)
            classes.append({
                "class": entry.name, "n_train": train_classes[c].n, "n_test": entry.n,
                "accuracy": acc, "unique_train": train_classes[c].unique,
                "ratio_correct": m.ratio_correct if m is not None else None, "share_below_p5": share, "fragile": fragile,
            })
        self._metrics_key = key
        self._metrics = {"train": f"{train.split}@{train.epoch}", "test": tg, "k": k, "accuracy": overall, "classes": classes,
                         "provisional": provisional}
        return self._metrics


def render(snap: Snapshot):
    """A rich renderable of a snapshot (every name escaped)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from .analysis._results import _fmt

    parts: list[Any] = [Text.from_markup(f"[bold]fragility watch[/] {markup(snap.path)} — writer {markup(snap.writer)}, "
                                         f"{time.strftime('%H:%M:%S', time.localtime(snap.seen_at))}")]
    if snap.error:
        parts.append(Text(f"  {snap.error}", style="yellow"))
        return Group(*parts)
    t = Table(title="passes (newest 8)", title_justify="left")
    for col in ("pass", "split", "epoch", "mode", "rows", "complete"):
        t.add_column(col, justify="right" if col in ("epoch", "rows") else "left")
    for p in snap.passes[-8:]:
        t.add_row(markup(p["name"]), markup(p["split"]), str(p["epoch"]), markup(p["mode"]), str(p["rows"]),
                  "yes" if p["complete"] else ("[red]no (crashed)[/]" if snap.writer.startswith("gone") else "[yellow]writing[/]"))
    parts.append(t)
    if snap.newest_counts is not None and snap.passes:
        p = snap.passes[-1]
        parts.append(Text(f"rows per class in {p['split']}@{p['epoch']}: " + ", ".join(
            f"{n}={c}" for n, c in zip(snap.class_names, snap.newest_counts))))
    m = snap.metrics
    if m:
        t = Table(title=f"{m['test']} against training {m['train']} (top-{m['k']} CE); fragile (95 % intervals): share below the "
                        f"training p5 ≥ {FRAGILE_SHARE_BELOW_P5:g} and above 0.05, or accuracy {FRAGILE_ACCURACY_GAP:g} below the "
                        f"overall {_fmt(m['accuracy'])}" + ("; PROVISIONAL: the reference is a train-mode pass — record an eval sweep "
                        "of the training split (split 'train_eval')" if m.get("provisional") else ""),
                  title_justify="left")
        for col in ("class", "n train", "n test", "accuracy", "unique (train)", "magnitude test/train", "share < train p5", "fragile"):
            t.add_column(col, justify="left" if col in ("class", "fragile") else "right")
        for c in m["classes"]:
            t.add_row(markup(c["class"]), str(c["n_train"]), str(c["n_test"]), _fmt(c["accuracy"]), str(c["unique_train"]),
                      _fmt(c["ratio_correct"]), _fmt(c["share_below_p5"]),
                      ("[yellow]provisional[/]" if m.get("provisional") else "[bold red]fragile[/]") if c["fragile"] else "")
        parts.append(t)
    else:
        parts.append(Text("per-class metrics appear once a training and a test pass of an epoch are complete", style="dim"))
    return Group(*parts)
