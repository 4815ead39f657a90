"""PyTorch Lightning: a :class:`FragilityCallback` that records training batches, validation and eval sweeps.

Lightning is an optional dependency (``pip install lightning``), imported only here.

What a hand-written callback gets wrong, and this one handles:

* ``on_train_batch_end`` runs *after* the optimizer step — fine: every stored value comes from the forward
  that produced it (the Recorder copies the head's weights during that forward);
* validation runs *inside* the training epoch: the training pass is ended before it and continued (a new
  pass of the same ``train@epoch`` group, which analyses merge) when training batches come again;
* the sanity-check validation is not recorded (and its forwards are not captured);
* gradient accumulation: ``on_train_batch_end`` runs per micro-batch, one forward each;
* ``limit_train_batches`` and friends: only the batches that run are recorded;
* resuming from a checkpoint (``trainer.fit(..., ckpt_path=...)``): the store is continued, not replaced,
  and epochs come from the trainer, so they stay right;
* DDP: the Recorder writes one store per rank (``<path>/rank<N>``), read back as one by ``fragility.Store``.

Example:
    >>> from fragility.integrations.lightning import FragilityCallback           # doctest: +SKIP
    >>> trainer = lightning.Trainer(callbacks=[FragilityCallback("run.fragility", sweeps={"test": test_loader})])
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

try:
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover - the older package name
    try:
        import pytorch_lightning as pl
    except ImportError as exc:
        raise ImportError("fragility.integrations.lightning needs PyTorch Lightning: pip install lightning") from exc

from ..errors import RecorderError
from ..recorder import Recorder

__all__ = ["FragilityCallback", "labels_and_index"]


def labels_and_index(batch: Any) -> tuple[Any, Any]:
    """Labels and sample ids of a batch: ``(x, y)``, ``(x, y, index)`` or a dict with ``y``/``label`` and ``index``."""
    if isinstance(batch, Mapping):
        labels = batch.get("y", batch.get("label", batch.get("labels")))
        return labels, batch.get("index")
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[1], batch[2] if len(batch) >= 3 else None
    raise RecorderError(
        f"cannot find labels in a batch of type {type(batch).__name__}; yield (x, y[, index]) or pass "
        f"FragilityCallback(batch_fn=lambda batch: (labels, index))"
    )


class FragilityCallback(pl.Callback):
    """Record FE, CE and logits of a LightningModule's backbone while ``trainer.fit`` runs.

    Args:
        path: the store to write (one per rank under DDP).
        model: the module to tap — a module, or the name of a submodule of the LightningModule (default:
            the LightningModule itself if it has timm's ``get_classifier()``, else its ``model`` attribute).
        sweeps: ``{split: dataloader}`` swept in eval mode at the end of every training epoch (e.g. the
            test set), recorded as passes of that split.
        train_eval: an eval-mode sweep of the training set at the end of every training epoch, before the
            other sweeps, recorded as split ``train_eval`` — the sound reference of the magnitude analyses (the
            training pass itself runs in train mode while the weights move). ``True`` (default) sweeps the
            trainer's training dataloader (with its augmentations); pass an un-augmented loader of the training
            set for the authors' extraction, or ``False`` for none.
        validation: record the validation batches (split ``val``, or ``val<i>`` for several loaders).
        batch_fn: ``batch -> (labels, index)`` (default :func:`labels_and_index`).
        live_metrics: log per-class fragility metrics (:class:`fragility.live.LiveMetrics`) to the
            trainer's logger at the end of every validation and sweep pass.
        **options: every :class:`fragility.Recorder` option (``dtype``, ``every``, ``max_rows_per_class``,
            ``classifier``, ``class_names``, ``overwrite``, …).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        model: nn.Module | str | None = None,
        sweeps: Mapping[str, Any] | None = None,
        train_eval: Any = True,
        validation: bool = True,
        batch_fn: Callable[[Any], tuple[Any, Any]] = labels_and_index,
        live_metrics: bool = False,
        **options: Any,
    ) -> None:
        super().__init__()
        self.path = os.fspath(path)
        self.model = model
        self.sweeps = dict(sweeps or {})
        self.train_eval = train_eval
        self.validation = validation
        self.batch_fn = batch_fn
        self.options = options
        self.live_metrics = live_metrics
        self.recorder: Recorder | None = None
        self._continue_train: int | None = None  # epoch whose training pass validation interrupted
        self._val_loader: int | None = None
        self._paused: Any = None
        self._swept: set[tuple[str, int]] = set()  # (split, epoch) sweeps a resumed store holds complete

    # ------------------------------------------------------------------ set-up and tear-down
    def _target(self, pl_module: nn.Module) -> nn.Module:
        if isinstance(self.model, nn.Module):
            return self.model
        if isinstance(self.model, str):
            return pl_module.get_submodule(self.model)
        if hasattr(pl_module, "get_classifier"):
            return pl_module
        inner = getattr(pl_module, "model", None)
        if isinstance(inner, nn.Module):
            return inner
        raise RecorderError(
            f"{type(pl_module).__name__} has no get_classifier() and no .model; pass FragilityCallback(model=<the timm "
            f"model or the name of the submodule>)"
        )

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        # here (not in setup) the checkpoint being resumed is known and the model sits on its device
        if self.recorder is None:
            resuming = getattr(trainer, "ckpt_path", None) is not None
            options = dict(self.options)
            if self.live_metrics:
                from .. import make_plugin_manager
                from ..live import LiveMetrics

                def log(tag: str, value: float, step: int) -> None:
                    for logger in trainer.loggers:
                        logger.log_metrics({tag: value}, step=step)

                pm = options.get("plugin_manager") or make_plugin_manager()
                pm.register(LiveMetrics(log=log))
                options["plugin_manager"] = pm
            self.recorder = Recorder(self._target(pl_module), self.path, resume=resuming, **options)
            if resuming:  # a checkpoint taken before the epoch's end: its sweeps may be in the store already
                from ..store import Store

                with Store(self.path) as store:
                    self._swept = {(p.split, p.epoch) for p in store.select(complete_only=True)}

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit" and self.recorder is not None:
            self._leave_pause()
            self.recorder.close()
            self.recorder = None

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        if self.recorder is not None:  # rows so far are kept; the open pass stays incomplete
            self._leave_pause()
            self.recorder.abort_pass()  # the rows so far are kept, the pass marked incomplete
            self.recorder.close()
            self.recorder = None

    # ------------------------------------------------------------------ training
    def _open(self, split: str, epoch: int) -> None:
        rec = self.recorder
        if rec.current_pass is not None:
            rec.end_pass()
        rec.start_pass(split, epoch)

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._open("train", trainer.current_epoch)

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self._continue_train is not None:  # validation ran inside the epoch: training goes on
            self._open("train", self._continue_train)
            self._continue_train = None

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        labels, index = self.batch_fn(batch)
        self.recorder.record(labels, index=index)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        rec = self.recorder
        self._continue_train = None
        if rec.current_pass is not None:
            rec.end_pass()
        epoch = trainer.current_epoch
        sweeps = {"train_eval": self._train_eval_loader(trainer), **self.sweeps}
        for split, loader in sweeps.items():
            if loader is not None and (split, epoch) not in self._swept:  # never the same sweep twice after a resume
                rec.evaluate(loader, split=split, epoch=epoch, device=pl_module.device)

    def _train_eval_loader(self, trainer: Any) -> Any:
        if self.train_eval is False or self.train_eval is None:
            return None
        if self.train_eval is not True:
            return self.train_eval
        from torch.utils.data import DataLoader

        loader = getattr(trainer, "train_dataloader", None)
        if not isinstance(loader, DataLoader):  # a collection of loaders: which rows form "the training set" is the user's call
            raise RecorderError(
                f"FragilityCallback(train_eval=True) sweeps the training dataloader, but the trainer's is a "
                f"{type(loader).__name__}; pass train_eval=<an un-augmented DataLoader of the training set>, or train_eval=False"
            )
        return loader

    # ------------------------------------------------------------------ validation
    def _leave_pause(self) -> None:
        if self._paused is not None:
            self._paused.__exit__(None, None, None)
            self._paused = None

    def on_validation_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        rec = self.recorder
        if rec is None:
            return
        current = rec.current_pass
        open_train = current is not None and current["split"] == "train"
        if trainer.sanity_checking or not self.validation:
            # not recorded: keep its forwards out of the training pass
            self._paused = rec.paused()
            self._paused.__enter__()
            return
        if open_train:
            self._continue_train = current["epoch"]
            rec.end_pass()
        self._val_loader = None

    def on_validation_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.recorder is None or self._paused is not None:
            return
        if dataloader_idx != self._val_loader:
            loaders = trainer.num_val_batches
            split = "val" if not isinstance(loaders, list) or len(loaders) <= 1 else f"val{dataloader_idx}"
            self._open(split, trainer.current_epoch)
            self._val_loader = dataloader_idx

    def on_validation_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.recorder is None or self._paused is not None:
            return
        labels, index = self.batch_fn(batch)
        self.recorder.record(labels, index=index)

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self.recorder is None:
            return
        if self._paused is not None:
            self._leave_pause()
            return
        if self.recorder.current_pass is not None:
            self.recorder.end_pass()
        self._val_loader = None
