"""The Recorder: three lines in an existing PyTorch loop stream FE, CE and logits into a store."""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ._manager import Hooks, PluginManager
from .errors import HeadError, RecorderError
from .store import FLOAT_COLUMNS, StoreWriter
from .taps import Head, affine_error, check_tolerance, model_name

__all__ = ["Recorder", "build_columns", "class_cap"]


@dataclass
class OpenPass:
    """The Recorder's open pass: what the store says of it, and the bookkeeping of its batches."""

    name: str
    split: str
    epoch: int
    mode: str  # train/eval: what its forwards ran in (until the first one: the model's mode at start)
    rank: int
    expected_mode: str | None  # the mode= given to start_pass
    per_class: np.ndarray  # rows kept per true class (max_rows_per_class; the class counts of a training pass)
    rows: int = 0
    labelled: bool | None = None  # whether its batches carry labels (all or none)
    mode_seen: str | None = None
    checked: bool = False  # the head's self-check ran on its first batch

    def info(self) -> dict[str, Any]:
        """What hooks and integrations see: name, split, epoch, mode, rank, rows."""
        return {"name": self.name, "split": self.split, "epoch": self.epoch, "mode": self.mode, "rank": self.rank,
                "rows": self.rows}


def build_columns(fe: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, logits: torch.Tensor,
                  labels: torch.Tensor | None = None, index: torch.Tensor | None = None, *, step: int = 0,
                  rank: int = 0) -> dict[str, torch.Tensor]:
    """The stored columns of one batch, from what its forward saw: ``fe`` (N, D) the head's input, its
    ``weight`` (C, D) and ``bias`` (C,), the ``logits`` (N, C) the model returned, true ``labels`` and sample
    ``index`` (``-1`` where not given). ``pred`` is the logits' argmax; CE is computed in float32 (also under
    autocast): ``ce_pred = fe · W[pred]``, ``ce_target = fe · W[label]`` (labelled batches only),
    ``bias_pred = b[pred]``; ``nonfinite`` flags rows with a non-finite FE or logit. Pure: no recorder state."""
    n, device = fe.shape[0], fe.device
    pred = logits.argmax(dim=1)
    fe32, w32, b32 = fe.float(), weight.float(), bias.float()
    cols: dict[str, torch.Tensor] = {"fe": fe, "ce_pred": fe32 * w32[pred], "bias_pred": b32[pred], "logits": logits}
    if labels is not None:
        cols["ce_target"] = fe32 * w32[labels]
    cols["label"] = labels if labels is not None else torch.full((n,), -1, dtype=torch.int64, device=device)
    cols["pred"] = pred
    cols["index"] = index if index is not None else torch.full((n,), -1, dtype=torch.int64, device=device)
    cols["step"] = torch.full((n,), step, dtype=torch.int64, device=device)
    cols["rank"] = torch.full((n,), rank, dtype=torch.int32, device=device)
    cols["nonfinite"] = ~(torch.isfinite(fe).all(1) & torch.isfinite(logits).all(1))
    return cols


def class_cap(labels: np.ndarray, counts: np.ndarray, cap: int) -> np.ndarray:
    """Rows to keep under a per-class cap, the first ones seen: row ``i`` is kept while fewer than ``cap`` rows
    of its class were kept before it (``counts``: kept so far, updated in place). Returns the boolean mask."""
    labels = np.asarray(labels, dtype=np.int64)
    order = np.argsort(labels, kind="stable")  # each class's rows in batch order
    sorted_labels = labels[order]
    first = np.searchsorted(sorted_labels, sorted_labels, side="left")
    seen = np.empty(len(labels), dtype=np.int64)
    seen[order] = np.arange(len(labels)) - first  # rows of the same class before this one in the batch
    keep = counts[labels] + seen < cap
    counts += np.bincount(labels[keep], minlength=len(counts))
    return keep


def _as_tensor(value: Any, name: str, n: int) -> torch.Tensor:
    """``value`` as a 1-D int64 tensor of ``n`` rows, where it already lives (no device copy, no sync)."""
    if not isinstance(value, torch.Tensor):
        arr = np.asarray(value)
        if arr.dtype.kind not in "iub":
            kind = "text" if arr.dtype.kind in "US" else f"{arr.dtype}" if arr.dtype.kind != "O" else "Python objects"
            first = arr.flat[0] if arr.size else None
            first = first.item() if isinstance(first, np.generic) else first
            example = f" such as {first!r:.40}" if arr.size else ""
            raise RecorderError(
                f"{name} are {kind}{example}; pass integer class ids / sample ids (e.g. class_names.index(label) per row)"
            )
        value = torch.from_numpy(np.ascontiguousarray(arr))
    t = value
    if t.dim() != 1 or t.shape[0] != n:
        raise RecorderError(f"{name} has shape {tuple(t.shape)} but the batch has {n} rows; pass one {name[:-1] if name.endswith('s') else name} per row")
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        raise RecorderError(f"{name} has dtype {t.dtype}; pass integer class ids / sample ids")
    return t.to(dtype=torch.int64)


class Recorder:
    """Record FE, CE (predicted and target class) and logits of a model into a store.

    Args:
        model: the model; a timm model, or any model with ``classifier=`` given.
        path: the store file to create (a directory, e.g. ``run.fragility``).
        classifier: the classifier module(s), for models without timm's ``get_classifier()``.
        class_names: names of the classes (default ``"0" … "C-1"``).
        dtype: storage dtype of the float columns, ``"float16"`` (default) or ``"float32"``.
        compression: ``None`` (default), ``"lzf"`` or ``"gzip"``.
        every: in training passes, record every N-th call of :meth:`record`.
        max_rows_per_class: in training passes, keep at most this many rows per true class per pass
            (the first ones seen; a shuffled loader makes it a random sample). Minority classes below
            the cap keep every row.
        rank: the distributed rank written in every row. Default: ``torch.distributed``'s rank when a
            process group is initialized, else 0. With more than one process, each rank writes its own
            store ``<path>/rank<N>``; ``fragility.Store(path)`` reads them as one, sample ids
            (``index=``) letting it drop the duplicates ``DistributedSampler`` pads with.
        overwrite: replace an existing store.
        resume: continue an existing store of the same model and classes (its passes are kept, new ones
            follow) — e.g. when training resumes from a checkpoint.
        flush_interval: seconds between commits; committed rows survive a crash.
        chunk_rows: HDF5 chunk height.
        queue_size: batches that may wait for the writer thread before :meth:`record` blocks.
        plugin_manager: a plugin manager (default: :func:`fragility.make_plugin_manager`).
        check_head: on the first recorded batch of every pass, check that the head's affine map reproduces
            the logits the model returned (within :func:`fragility.taps.check_tolerance`) and raise
            :class:`HeadError` if not. Turn off only for a head you know to be approximate.

    Example:
        >>> import timm, torch                                         # doctest: +SKIP
        >>> model = timm.create_model("resnet18", num_classes=10)      # doctest: +SKIP
        >>> with Recorder(model, "run.fragility") as rec:                     # doctest: +SKIP
        ...     with rec.capture("train", epoch=0):
        ...         for x, y in loader:
        ...             loss = criterion(model(x), y)
        ...             rec.record(y)
        ...             loss.backward(); opt.step(); opt.zero_grad()
        ...     rec.evaluate(test_loader, split="test", epoch=0)
    """

    def __init__(
        self,
        model: nn.Module,
        path: str | os.PathLike,
        *,
        classifier: Any = None,
        class_names: Sequence[str] | None = None,
        dtype: str = "float16",
        compression: str | None = None,
        every: int = 1,
        max_rows_per_class: int | None = None,
        rank: int | None = None,
        overwrite: bool = False,
        resume: bool = False,
        flush_interval: float = 1.0,
        chunk_rows: int = 1024,
        queue_size: int = 16,
        plugin_manager: PluginManager | None = None,
        check_head: bool = True,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise RecorderError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if int(every) < 1:
            raise RecorderError(f"every={every} must be >= 1 (record every N-th training step)")
        if max_rows_per_class is not None and int(max_rows_per_class) < 1:
            raise RecorderError(f"max_rows_per_class={max_rows_per_class} must be >= 1 or None")
        self.model = model
        self.path = os.fspath(path)
        world = 1
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            world = torch.distributed.get_world_size()
            rank = torch.distributed.get_rank() if rank is None else rank
        rank = 0 if rank is None else int(rank)
        if world > 1:  # one writer per store: each rank gets its own, read back as one by Store(path)
            self.path = os.path.join(self.path, f"rank{rank}")
        self.hooks = Hooks(plugin_manager)
        head = self.hooks.resolve_head(model=model, classifier=classifier)
        if head is None:
            linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
            hint = f", e.g. Recorder(model, path, classifier={_python_path('model', linears[-1])})" if linears else ""
            raise HeadError(
                f"model {model_name(model)} has no get_classifier() and no plugin knows its head; "
                f"pass classifier=<the final nn.Linear or 1x1 nn.Conv2d>{hint}"
            )
        self.head: Head = head
        self.num_classes = head.num_classes
        if class_names is None:
            class_names = [str(i) for i in range(self.num_classes)]
        class_names = [str(c) for c in class_names]
        if len(class_names) != self.num_classes:
            raise RecorderError(
                f"class_names has {len(class_names)} names but classifier {head.name} has {self.num_classes} outputs; "
                f"pass one name per class"
            )
        self.class_names = class_names
        self.every = int(every)
        self.max_rows_per_class = None if max_rows_per_class is None else int(max_rows_per_class)
        self.rank = rank
        self.dtype = getattr(torch, dtype) if dtype in ("float16", "float32") else None
        from . import __version__
        from ._fingerprint import fingerprints

        self.metadata = {
            "fragility_version": __version__,
            "model_name": model_name(model),
            "head": head.name,
            "class_names": class_names,
            "num_classes": self.num_classes,
            "rank": self.rank,
            "plugins": self.hooks.plugin_names(),
            # the network and its weights now (before training: the initialisation), so that `compare` matches
            # feature indices only between runs where they mean the same thing
            **fingerprints(model),
        }
        self._writer = StoreWriter(
            self.path,
            self.metadata,
            dtype=dtype,
            compression=compression,
            chunk_rows=chunk_rows,
            flush_interval=flush_interval,
            queue_size=queue_size,
            overwrite=overwrite,
            resume=resume,
        )
        self.check_head = bool(check_head)
        head.active = False  # forwards are captured only while a pass is open
        head.attach(model)
        self._pass: dict[str, Any] | None = None
        self._n_passes = self._writer.first_pass
        self._step = 0
        self._rows_total = 0
        self._feature_dim: int | None = self._writer.root_attrs.get("feature_dim")
        self._closed = False
        self.hooks.recording_start(store_path=self.path, model=model, metadata=dict(self.metadata))

    # ------------------------------------------------------------------ passes

    def start_pass(self, split: str, epoch: int = 0, *, mode: str | None = None, rows: int | None = None) -> str:
        """Start a pass (a training epoch or an eval sweep). Returns its name in the store.

        The pass's mode (``train``/``eval``) is the mode the model's forwards run in; ``mode=`` only states
        what it must be (a forward in the other mode is refused). A pass holds forwards of one mode.
        ``rows``, the pass's length when known, sizes its storage (a short pass is compacted when it ends
        in any case).
        """
        self._check_open()
        if self._pass is not None:
            raise RecorderError(
                f"pass {self._pass.split}@{self._pass.epoch} is still open; call end_pass() before starting {split}@{epoch}"
            )
        if not isinstance(split, str) or not split:
            raise RecorderError(f"split={split!r} must be a non-empty string such as 'train' or 'test'")
        if mode not in (None, "train", "eval"):
            raise RecorderError(f"mode={mode!r} must be 'train' or 'eval'")
        expected = mode
        mode = mode or ("train" if self.model.training else "eval")  # until the first forward says
        name = f"{self._n_passes:04d}"
        self._n_passes += 1
        self._writer.begin_pass(name, {"split": split, "epoch": int(epoch), "mode": mode, "rank": self.rank}, rows=rows)
        self._pass = OpenPass(name, split, int(epoch), mode, self.rank, expected, np.zeros(self.num_classes, dtype=np.int64))
        self.head.clear()
        self.head.active = True
        self.hooks.pass_start(pass_info=self._pass.info())
        return name

    def end_pass(self) -> None:
        """End the current pass: snapshot the classifier and mark the pass complete."""
        self._check_open()
        p = self._pass
        if p is None:
            raise RecorderError("end_pass() called with no open pass; call start_pass() or use capture()")
        weight = bias = None
        if p.rows:
            weight, bias = self.head.weight_bias()  # the writer copies them before this returns
        self.head.active = False
        self.head.clear()
        self._writer.end_pass(p.name, weight, bias)
        if p.mode == "train" and p.labelled and self.every == 1 and self.max_rows_per_class is None:
            self._writer.set_root_attrs({"class_counts": [int(c) for c in p.per_class]})
        info = {**p.info(), "store": self.path}
        self._pass = None
        self._writer.flush()  # pass_end promises a committed, readable pass
        self.hooks.pass_end(pass_info=info)

    @contextlib.contextmanager
    def capture(self, split: str, epoch: int = 0, *, mode: str | None = None, rows: int | None = None) -> Iterator[str]:
        """Context manager around :meth:`start_pass` / :meth:`end_pass`."""
        name = self.start_pass(split, epoch, mode=mode, rows=rows)
        try:
            yield name
        except BaseException:
            self.abort_pass()
            raise
        if self._pass is not None and not self._closed:
            self.end_pass()

    @property
    def current_pass(self) -> dict[str, Any] | None:
        """The open pass — ``{name, split, epoch, mode, rank, rows}`` — or ``None`` between passes."""
        return None if self._pass is None else self._pass.info()

    def abort_pass(self) -> None:
        """End the open pass without completing it (as when the loop raises): its rows recorded so far are kept
        and the store marks it incomplete (a later pass of the same split and epoch supersedes it)."""
        p = self._pass
        if p is None or self._closed:
            return
        self._pass = None
        self.head.active = False
        self.head.clear()
        try:
            self._writer.abort_pass(p.name)
        except Exception:  # noqa: BLE001 - the loop's own exception is the one to show
            pass

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Forwards inside this block are not captured (e.g. a validation loop inside a training pass).

        Example:
            >>> with recorder.capture("train", epoch):            # doctest: +SKIP
            ...     for x, y in loader:
            ...         loss = criterion(model(x), y); recorder.record(y); ...
            ...         if step % 100 == 0:
            ...             with recorder.paused():
            ...                 validate(model)
        """
        was = self.head.active
        self.head.active = False
        try:
            yield
        finally:
            self.head.active = was and self._pass is not None


    # ------------------------------------------------------------------ rows

    def record(self, labels: Any = None, *, index: Any = None, logits: torch.Tensor | None = None) -> int:
        """Record the batch of the last forward pass (its columns: :func:`build_columns`). Returns the rows queued.

        Every stored value comes from that forward: FE, the classifier's weights and the logits are what the
        head saw and returned then, so ``record()`` may be called before or after ``backward()`` and
        ``optimizer.step()``. One ``record()`` per forward: a second forward since the last one is refused
        (record each view, or run forwards you do not want recorded under :meth:`paused`).

        Args:
            labels: true class per row (ints, as the DataLoader gives them: checked on the host, no device sync),
                or ``None`` when unknown. index: sample id per row (drops DDP padding duplicates); ``-1`` if omitted.
            logits: the model's logits, when its forward returns something else than an ``(N, C)`` tensor.

        Raises:
            RecorderError: no open pass, several forwards, train and eval forwards in one pass, labels out of
                ``[0, C)``, lengths that do not match the batch. HeadError: the head's affine map does not
                reproduce the logits (checked on the first batch of a pass).
        """
        p, forward = self._take_forward()
        if not self._sampled(p, forward):
            return 0
        with torch.no_grad():
            fe, weight, bias, logits = self._head_outputs(p, forward, logits)
            y, y_host = self._labels(p, labels, fe)
            idx = None if index is None else _as_tensor(index, "index", fe.shape[0]).to(fe.device, non_blocking=True)
            cols = build_columns(fe, weight, bias, logits, y, idx, step=self._step, rank=self.rank)
            if (keep := self._count_classes(p, y_host, forward.training, fe.device)) is not None:
                cols = {k: v[keep] for k, v in cols.items()}
            if not (rows := int(cols["pred"].shape[0])):
                return 0
            self._check_feature_dim(fe)
            if p.rows == 0:
                self._writer.write_classifier(p.name, weight, bias)
            self.hooks.batch_recorded(pass_info=p.info(), batch={k: v for k, v in cols.items() if k != "nonfinite"})
            host, event = self._to_host(cols)
        self._writer.append(p.name, host, event)
        p.rows += rows
        self._rows_total += rows
        return rows

    def _take_forward(self) -> tuple[OpenPass, Any]:
        """The open pass and the one forward since the last record() (none, or several, is refused)."""
        self._check_open()
        p = self._pass
        if p is None:
            raise RecorderError("record() called outside a pass; wrap the loop in `with recorder.capture('train', epoch):`")
        forward, count = self.head.take()
        if count > 1:
            raise RecorderError(
                f"{count} forwards reached classifier {self.head.name} since the last record(); call record() after "
                f"each forward (e.g. once per augmented view), or run the forwards you do not want recorded under "
                f"`with recorder.paused():`"
            )
        if forward is None:
            raise HeadError(
                f"head {self.head.name}: no forward pass of the model reached the classifier since the last record(); "
                f"call model(x) before record(), and attach the recorder before torch.compile"
            )
        return p, forward

    def _sampled(self, p: OpenPass, forward: Any) -> bool:
        """The pass's mode from the forward; in training, whether this step is one of every N-th kept."""
        self._set_mode(p, "train" if forward.training else "eval")
        if not forward.training:
            return True
        self._step += 1
        self.head.armed = self._step % self.every == 0  # will the next training forward be kept?
        return (self._step - 1) % self.every == 0  # counts training steps only: eval sweeps don't shift it

    def _head_outputs(self, p: OpenPass, forward: Any, logits: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """FE, weight, bias and logits of the forward (its logits checked against the head on a pass's first batch)."""
        fe = self.head.features(forward)
        n = fe.shape[0]
        if n == 0:
            raise RecorderError("the batch of the last forward has 0 rows; call record() only after a non-empty batch")
        weight, bias = self.head.weight_bias(forward)
        if logits is None:
            logits = forward.logits if forward.logits is not None else self.head.head_logits(forward)
        logits = logits.detach()
        if logits.shape != (n, self.num_classes):
            raise RecorderError(f"logits have shape {tuple(logits.shape)}, expected ({n}, {self.num_classes})")
        if not p.checked:
            self._check_head(fe, weight, bias, logits)
            p.checked = True
        return fe, weight, bias, logits

    def _labels(self, p: OpenPass, labels: Any, fe: torch.Tensor) -> tuple[torch.Tensor | None, np.ndarray | None]:
        """The labels on the batch's device and on the host, checked (all batches of a pass labelled or none)."""
        labelled = labels is not None
        if p.labelled is None:
            p.labelled = labelled
        elif p.labelled != labelled:
            raise RecorderError(f"pass {p.split}@{p.epoch} mixes batches with and without labels; pass labels for every batch or none")
        if not labelled:
            return None, None
        y = _as_tensor(labels, "labels", fe.shape[0])
        y_host = y.cpu().numpy()  # checked on the host copy: labels from a DataLoader are there already (no GPU sync)
        lo, hi = int(y_host.min()), int(y_host.max())
        if lo < 0 or hi >= self.num_classes:
            raise RecorderError(
                f"label {lo if lo < 0 else hi} is outside [0, {self.num_classes}) for classifier {self.head.name}; "
                f"check the dataset's targets or the model's num_classes"
            )
        return y.to(fe.device, non_blocking=True), y_host

    def _count_classes(self, p: OpenPass, y_host: np.ndarray | None, training: bool, device: Any) -> torch.Tensor | None:
        """Rows per class of the pass; in training under ``max_rows_per_class``, the rows to keep (a mask on ``device``)."""
        if y_host is None:
            return None
        if training and self.max_rows_per_class is not None:
            return torch.from_numpy(class_cap(y_host, p.per_class, self.max_rows_per_class)).to(device)
        p.per_class += np.bincount(y_host, minlength=self.num_classes)
        return None

    def _check_feature_dim(self, fe: torch.Tensor) -> None:
        if self._feature_dim is None:
            self._feature_dim = int(fe.shape[1])
            self._writer.set_root_attrs({"feature_dim": self._feature_dim, "head_shared_input": bool(self.head.shared_input)})
        elif fe.shape[1] != self._feature_dim:
            raise RecorderError(f"feature dim changed from {self._feature_dim} to {fe.shape[1]}; one store holds one head")

    def _set_mode(self, p: OpenPass, mode: str) -> None:
        """The pass's mode is the mode its forwards ran in; one pass, one mode."""
        if p.mode_seen is None:
            if p.expected_mode not in (None, mode):
                raise RecorderError(
                    f"pass {p.split}@{p.epoch} was started with mode={p.expected_mode!r} but the model ran in "
                    f"{mode} mode; call model.{'train' if p.expected_mode == 'train' else 'eval'}() first, or drop mode="
                )
            p.mode_seen = mode
            if mode != p.mode:
                p.mode = mode
                self._writer.set_pass_attrs(p.name, {"mode": mode})
        elif p.mode_seen != mode:
            raise RecorderError(
                f"pass {p.split}@{p.epoch} mixes {p.mode_seen}-mode and {mode}-mode forwards (was model.train()/eval() "
                f"switched inside the pass?); set the mode before capture(), and record eval sweeps in their own pass "
                f"(recorder.evaluate)"
            )

    def _check_head(self, fe: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, logits: torch.Tensor) -> None:
        """Self-check: the head's affine map must reproduce the logits the model returned."""
        if not self.check_head:
            return
        err = affine_error(fe, weight, bias, logits)
        tol = check_tolerance(fe.dtype, logits.dtype, weight.dtype)
        if not err <= tol:
            raise HeadError(
                f"model {model_name(self.model)}: head {self.head.name} does not reproduce the model's logits (error "
                f"{err:.3g} of the logit scale, tolerance {tol:.3g}), so its CE would not sum to the logits; pass "
                f"classifier= the layer whose output is the logits, teach fragility the head with a "
                f"fragility_resolve_head plugin, or pass check_head=False to record it anyway"
            )

    def _to_host(self, cols: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], Any]:
        """Copy columns to host memory; asynchronously (pinned memory + CUDA event) on a GPU."""
        out = {}
        on_cuda = cols["fe"].is_cuda
        for k, given in cols.items():
            v = given.to(self.dtype) if k in FLOAT_COLUMNS else given
            if on_cuda:
                host = torch.empty(v.shape, dtype=v.dtype, pin_memory=True)
                host.copy_(v, non_blocking=True)
                out[k] = host
            else:
                # tensors made here need no copy; the model's and the caller's own (fe, logits, labels, ids —
                # also after a no-op dtype conversion) might be changed in place after record() returns
                shared = k in ("fe", "logits", "label", "index") and v.data_ptr() == given.data_ptr()
                out[k] = v.clone() if shared else v
        event = None
        if on_cuda:
            event = torch.cuda.Event()
            event.record()
        return out, event

    def evaluate(
        self,
        loader: Iterable,
        *,
        split: str = "test",
        epoch: int = 0,
        device: torch.device | str | None = None,
    ) -> str:
        """Sweep ``loader`` in eval mode under ``no_grad`` and record every row as one pass.

        Batches are ``(x, y)``, ``(x, y, index)`` or ``x``. The model's train/eval mode is restored.
        Rows without an explicit index get their position in the sweep as ``index``.
        """
        if device is None:
            param = next(self.model.parameters(), None)
            device = param.device if param is not None else torch.device("cpu")
        was_training = self.model.training
        self.model.eval()
        offset = 0
        try:
            with torch.no_grad(), self.capture(split, epoch, mode="eval", rows=_sweep_rows(loader)) as name:
                for batch in loader:
                    x, y, idx = _unpack(batch)
                    n = x.shape[0]
                    self.model(x.to(device, non_blocking=True))
                    if idx is None:
                        idx = torch.arange(offset, offset + n)
                    self.record(y, index=idx)
                    offset += n
        finally:
            self.model.train(was_training)
        return name

    # ------------------------------------------------------------------ lifecycle

    def flush(self) -> dict[str, int]:
        """Block until every recorded row is committed; return committed rows per pass name."""
        self._check_open()
        return self._writer.flush()

    @property
    def flushed_rows(self) -> dict[str, int]:
        """Rows per pass acknowledged as committed (they survive a crash)."""
        return dict(self._writer.flushed_rows)

    def close(self) -> dict[str, int]:
        """End any open pass, flush, remove every hook, close the store. Returns a summary."""
        return self._close(abandon=False)

    def _close(self, abandon: bool) -> dict[str, int]:
        if self._closed:
            return self._summary
        self._summary = {"passes": self._n_passes - self._writer.first_pass, "rows": self._rows_total, "nonfinite_rows": 0}
        try:
            if self._pass is not None:
                self.abort_pass() if abandon else self.end_pass()
        finally:
            self.head.remove()
            self._closed = True
            self._writer.close()
        nonfinite = self._writer.nonfinite_rows
        self._summary = {"passes": self._n_passes - self._writer.first_pass, "rows": self._rows_total, "nonfinite_rows": nonfinite}
        if nonfinite:
            warnings.warn(
                f"{nonfinite} recorded rows of {self.path} have non-finite FE or logits; they are stored, counted "
                f"per pass (nonfinite_rows) and skipped by analyzers",
                RuntimeWarning,
                stacklevel=2,
            )
        self.hooks.recording_end(store_path=self.path, summary=dict(self._summary))
        return self._summary

    def _check_open(self) -> None:
        if self._closed:
            raise RecorderError(f"recorder for {self.path} is closed; create a new Recorder to record more")
        self._writer.raise_if_failed()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        # an exception inside the block leaves an open pass incomplete (its rows are kept)
        self._close(abandon=exc_type is not None)


def _sweep_rows(loader: Iterable) -> int | None:
    """Rows an eval sweep will record, when the loader says (its sampler or dataset, or a list of batches);
    an upper bound is fine: a pass shorter than its chunks is compacted when it ends."""
    sized = getattr(loader, "sampler", None) or getattr(loader, "dataset", None)
    try:
        if sized is not None:
            return len(sized)
        if isinstance(loader, (list, tuple)):
            return sum(int(_unpack(b)[0].shape[0]) for b in loader)
    except Exception:  # noqa: BLE001 - an unsized or odd loader: the pass is compacted at its end instead
        return None
    return None


def _python_path(root: str, dotted: str) -> str:
    """A module's ``named_modules`` name as Python: ``"head.fc"`` -> ``model.head.fc``, ``"3"`` -> ``model[3]``."""
    out = root
    for part in dotted.split("."):
        out += f"[{part}]" if part.isdigit() else f".{part}"
    return out


def _unpack(batch: Any) -> tuple[torch.Tensor, Any, Any]:
    if isinstance(batch, torch.Tensor):
        return batch, None, None
    if isinstance(batch, dict):
        return batch["x"] if "x" in batch else batch["image"], batch.get("y", batch.get("label")), batch.get("index")
    if isinstance(batch, (tuple, list)):
        if len(batch) == 2:
            return batch[0], batch[1], None
        if len(batch) >= 3:
            return batch[0], batch[1], batch[2]
        return batch[0], None, None
    raise RecorderError(f"cannot unpack a batch of type {type(batch).__name__}; yield (x, y) or (x, y, index)")
