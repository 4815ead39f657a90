"""Small pieces shared by the store commands and the analysis that import neither torch nor the analysis
engine: ``inspect``, ``verify``, ``repair`` and ``watch`` stay light (``fragility inspect`` never imports torch)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: loss name -> (what it is, whether the model uses LDAM's normalised head); :mod:`fragility.paper.losses` builds them
LOSSES = {
    "ce": ("cross-entropy", False),
    "focal": ("focal loss (gamma: --focal-gamma, default 2 as in the authors' code)", False),
    "cb": ("class-balanced cross-entropy (beta 0.9999) from the start", False),
    "ldam": ("LDAM (max margin 0.5, s 30), normalised head", True),
    "ldam-drw": ("LDAM with deferred re-weighting: class-balanced weights from the DRW epoch", True),
    "ce-drw": ("cross-entropy with deferred re-weighting", False),
}
#: the version of the JSON layout of results and of the CLI's --json envelope (fragility/schemas/output.schema.json)
SCHEMA_VERSION = 1


def jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays (and NaN) into plain JSON values (NaN becomes ``None``)."""
    import math

    import numpy as np

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


#: the data sets :func:`fragility.paper.datasets.load` reads
DATASET_NAMES = ("digits", "cifar10", "cifar100", "svhn", "celeba")

#: the split of an eval-mode sweep of the training set: the sound reference of training magnitudes
TRAIN_EVAL = "train_eval"


def sound_reference_split(passes: Sequence[Any]) -> str:
    """The sound reference among ``passes``: ``train_eval`` (an eval sweep of the training set) when one holds
    rows, else ``train`` (the training pass, recorded in train mode)."""
    return TRAIN_EVAL if any(p.split == TRAIN_EVAL and p.rows for p in passes) else "train"


class _progress:
    """A transient progress bar of ``unit`` on stderr (shown only on a terminal); yields ``advance(n)``."""

    def __init__(self, enabled: bool, total: int, what: str = "analyzing", unit: str = "rows") -> None:
        self.enabled = enabled
        self.total = total
        self.what = what
        self.unit = unit

    def __enter__(self):
        if not self.enabled:
            return lambda n: None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._p = Progress(
            TextColumn(self.what), BarColumn(), MofNCompleteColumn(), TextColumn(self.unit), TimeRemainingColumn(),
            console=Console(stderr=True), transient=True, disable=not Console(stderr=True).is_terminal,
        )
        self._p.start()
        task = self._p.add_task(self.unit, total=self.total)
        return lambda n: self._p.advance(task, n)

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._p.stop()
