"""Per-epoch fragility metrics as training scalars, while training runs.

:class:`LiveMetrics` is a plugin: register it on the plugin manager the Recorder uses. When an evaluation
pass ends (e.g. the test sweep of an epoch) it reads that pass and the newest complete training pass — a
cheap read of the two just-finished passes, not of the store — runs the ``topk``, ``magnitude`` and
``diversity`` analyzers on them and logs, per class, with the epoch as step:

* ``fragility/<split>/accuracy/<class>``
* ``fragility/train/unique_topk/<class>`` — distinct top-K CE features over the class's training rows

The training rows are those of the newest eval sweep of the training split (split ``train_eval``) when the
run records one — the sound reference — else of the newest training pass (recorded in train mode).
* ``fragility/<split>/magnitude_ratio/<class>`` — test (correct rows) / train magnitude at the training top-K
* ``fragility/<split>/share_below_train_p5/<class>``
* ``fragility/train/participation_ratio/<class>`` — of the class's training FE covariance

to TensorBoard (``log_dir=``, through ``torch.utils.tensorboard``; needs the ``tensorboard`` package) and/or
any ``log(tag, value, step)`` callable (a Lightning logger: see ``FragilityCallback(live_metrics=True)``).

Example:
    >>> from fragility.live import LiveMetrics                            # doctest: +SKIP
    >>> pm = fragility.make_plugin_manager()
    >>> pm.register(LiveMetrics(log_dir="runs/imbalanced"))
    >>> rec = fragility.Recorder(model, "run.fragility", plugin_manager=pm)
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

from .analysis._engine import TRAIN_EVAL, sound_reference_split
from .hookspecs import hookimpl

__all__ = ["LiveMetrics"]


class LiveMetrics:
    """Log per-class fragility metrics at the end of every evaluation pass.

    Args:
        log_dir: a TensorBoard log folder (a ``SummaryWriter`` is created on first use).
        log: ``log(tag, value, step)``, called for every scalar (in addition to TensorBoard, if both).
        k: top-K size (at most the feature dimension).
    """

    def __init__(self, log_dir: str | None = None, *, log: Callable[[str, float, int], Any] | None = None, k: int = 10) -> None:
        self.log_dir = log_dir
        self.log = log
        self.k = k
        self._writer: Any = None
        self._store: Any = None  # one Store for the whole run, refreshed at every pass: only new or changed passes are read
        self._charts: set[tuple[str, str]] = set()  # (split, metric) charts in TensorBoard's custom-scalars layout
        #: the scalars of the last evaluation pass, ``{tag: value}``
        self.last: dict[str, float] = {}

    def _emit(self, tag: str, value: Any, step: int) -> None:
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            return
        value = float(value)
        self.last[tag] = value
        if self.log_dir is not None:
            if self._writer is None:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(self.log_dir)
            self._writer.add_scalar(tag, value, step)
            _, split, metric, _ = tag.split("/", 3)
            if (split, metric) not in self._charts:
                self._charts.add((split, metric))
                self._layout_changed = True
        if self.log is not None:
            self.log(tag, value, step)

    @hookimpl
    def fragility_pass_end(self, pass_info: dict) -> None:
        if pass_info.get("mode") != "eval" or not pass_info.get("rows"):
            return
        from .analysis import analyze
        from .analysis.records import diversity_records, magnitude_records, topk_records

        store = self._open(pass_info["store"])
        # the reference: the newest eval sweep of the training split when recorded, else the training pass
        complete = [p for p in store.passes if p.complete and p.rows]
        ref = sound_reference_split(complete)
        trains = [p for p in complete if p.split == ref]
        ends = [p for p in store.passes if p.name == pass_info["name"]]
        if not trains or not ends or ends[0].split in ("train", TRAIN_EVAL):
            return
        train, this = trains[-1], ends[0]
        parts = [p.name for p in trains if p.epoch == train.epoch and p.split == train.split]  # an epoch split around validation
        k = min(self.k, store.feature_dim)
        # what is logged needs neither minimal sufficient sets nor k-NN archetypes: skipped (the cost of a
        # k-NN over every row would otherwise dominate)
        res = analyze(store, ["topk", "magnitude", "diversity"], passes=[*parts, this.name], k=k,
                      reference_split=train.split, reference_epoch=train.epoch, knn_max_rows=1, options={"minimal_sets": False})
        names = store.class_names
        tg, rg = f"{this.split}@{this.epoch}", f"{train.split}@{train.epoch}"
        step = int(this.epoch)
        self.last = {}
        top, div = topk_records(res["topk"]).groups, diversity_records(res["diversity"]).groups
        mag = magnitude_records(res["magnitude"]).groups.get(tg)
        for c, name in enumerate(names):
            self._emit(f"fragility/{this.split}/accuracy/{name}", top[tg].classes[c].accuracy, step)
            if top[rg].classes[c].n:
                self._emit(f"fragility/train/unique_topk/{name}", top[rg].classes[c].unique, step)
                self._emit(f"fragility/train/participation_ratio/{name}", div[rg].classes[c].participation_ratio, step)
            if mag is not None:
                self._emit(f"fragility/{this.split}/magnitude_ratio/{name}", mag.classes[c].ratio_correct, step)
                self._emit(f"fragility/{this.split}/share_below_train_p5/{name}", mag.classes[c].share_below_p5, step)
        if self._writer is not None:
            if getattr(self, "_layout_changed", False):
                self._write_layout()
            self._writer.flush()

    def _write_layout(self) -> None:
        """TensorBoard's custom-scalars layout: one chart per metric and split, a line per class (instead of
        one chart per class × metric × split)."""
        import re

        charts = {f"{metric} ({split})": ["Multiline", [f"^fragility/{re.escape(split)}/{re.escape(metric)}/"]]
                  for split, metric in sorted(self._charts)}
        self._writer.add_custom_scalars({"fragility: per class": charts})
        self._layout_changed = False

    def _open(self, path: str) -> Any:
        """The run's store, opened once and then refreshed (a new path: the old one is closed)."""
        from .store import Store

        if self._store is not None and os.path.realpath(self._store.path) == os.path.realpath(path):
            self._store.refresh()
        else:
            self._close_store()
            self._store = Store(path)
        return self._store

    def _close_store(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    @hookimpl
    def fragility_recording_end(self, store_path: str, summary: dict) -> None:
        self._close_store()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
