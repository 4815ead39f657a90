"""Taps: the final affine layer(s) of a classifier head, and what they saw and returned in each forward.

A :class:`Head` taps the *last affine operation that really runs* in a model's head — an ``nn.Linear``
or a dense 1×1 ``nn.Conv2d`` — once per head branch (one for most models; two for distilled models such
as DeiT, LeViT or RepViT; one per branch for CrossViT, whose outputs are averaged into the logits).
Its effective map is ``logits = fe @ weight.T + bias`` with

* ``fe`` the tapped layers' inputs concatenated (or the one input, when every branch sees the same tensor),
* ``weight (C, D)`` and ``bias (C,)`` built from those layers' parameters.

Whatever runs before the tapped layer (BatchNorm, dropout, an MLP's hidden layer) is part of the backbone,
so the CE identity ``sum(fe * W[c]) + b[c] == logit_c`` holds in train and eval mode alike.

Forward hooks keep, for the last forward of the model, detached references to each tapped layer's input
and output and — while :attr:`Head.armed` — a *copy* of its weight and bias as they were in that forward,
so an optimizer step between the forward and ``Recorder.record()`` cannot change a stored value. They never
change outputs or gradients and hold no autograd graph. :meth:`Head.remove` takes them off again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .errors import HeadError

__all__ = ["AffineMap", "Forward", "Head", "affine_of", "final_affine", "model_name"]


def model_name(model: nn.Module) -> str:
    """The timm architecture name of a model, or its class name."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    return str(cfg.get("architecture") or type(model).__name__)


def _is_affine(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (
        isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1
    )


def affine_of(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The map ``(W (C, D), b (C,))`` of an ``nn.Linear`` or dense 1×1 ``nn.Conv2d`` (detached, not copied).

    Raises:
        HeadError: the module is not such a layer.

    Example:
        >>> lin = torch.nn.Linear(4, 3)
        >>> w, b = affine_of(lin)
        >>> torch.equal(w, lin.weight.detach())
        True
    """
    if not _is_affine(module):
        raise HeadError(f"{type(module).__name__} is not an nn.Linear or a dense 1x1 nn.Conv2d; pass classifier= the final nn.Linear")
    w = module.weight.detach()
    if w.dim() == 4:
        w = w.flatten(1)
    b = module.bias.detach() if module.bias is not None else w.new_zeros(w.shape[0])
    return w, b


def _out_features(module: nn.Module) -> int:
    return int(module.out_features if isinstance(module, nn.Linear) else module.out_channels)


def final_affine(module: nn.Module, num_classes: int | None = None) -> list[tuple[str, nn.Module]]:
    """The affine layers inside a classifier module whose outputs are the logits, as ``(name, layer)``.

    ``module`` itself when it is an ``nn.Linear`` / dense 1×1 ``nn.Conv2d``; otherwise every such layer
    inside it with ``num_classes`` outputs (default: the outputs of the last one registered) — the final
    Linear of an MLP head, the Linear after a head's BatchNorm, or the two Linears of a distilled head.
    The recorder's self-check then verifies on real data that these layers reproduce the logits.

    Raises:
        HeadError: no such layer (names the module and the fix).
    """
    if _is_affine(module):
        return [("", module)]
    found = [(n, m) for n, m in module.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    if not found:
        raise HeadError(
            f"{type(module).__name__} holds no nn.Linear or 1x1 nn.Conv2d; pass classifier= the final nn.Linear, or "
            f"teach fragility the head with a fragility_resolve_head plugin"
        )
    c = _out_features(found[-1][1]) if num_classes is None else int(num_classes)
    finals = [(n, m) for n, m in found if _out_features(m) == c]
    for n, m in finals:
        if not _is_affine(m):
            raise HeadError(
                f"{type(module).__name__}{'.' + n if n else ''} is a {m.kernel_size} conv with groups={m.groups}; only dense 1x1 convs are "
                f"affine per pooled vector; pass classifier= the final nn.Linear"
            )
    if not finals:
        raise HeadError(
            f"{type(module).__name__} has no nn.Linear with {c} outputs (one per class); pass classifier= the final nn.Linear"
        )
    return finals


class AffineMap:
    """How a tapped layer is an affine map of what it receives: ``logits = features(x) @ W.T + b``.

    The default reads an ``nn.Linear`` / dense 1×1 ``nn.Conv2d`` as it is (FE = its input). A tap plugin
    passes its own subclass to :class:`Head` for a layer whose map must be derived — e.g. a cosine
    classifier, whose FE is the normalised input and whose ``W`` is the normalised weight times the scale
    (``fragility_plugins.normed_taps``). The recorder's self-check verifies the map against the logits.
    """

    def features(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The FE of input ``x`` (detached)."""
        return x

    def weight_bias(self, module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer's current ``(W (C, D), b (C,))``, detached (not necessarily copied)."""
        return affine_of(module)

    def out_features(self, module: nn.Module) -> int:
        return _out_features(module)


LINEAR = AffineMap()


@dataclass
class Forward:
    """What the tapped layers saw and returned in one forward of the model.

    Attributes:
        inputs, outputs: per tapped layer, its input and output (detached; not copies).
        weights: per tapped layer, a copy of ``(W, b)`` as they were in this forward (``None`` unless armed).
        training: the mode the head ran in.
        logits: the model's own output, when it is an ``(N, C)`` tensor (else ``None``).
    """

    inputs: list[torch.Tensor | None]
    outputs: list[torch.Tensor | None]
    weights: list[tuple[torch.Tensor, torch.Tensor] | None]
    training: bool
    logits: torch.Tensor | None = None


@dataclass
class Head:
    """The final affine layer(s) of a classifier head, whose outputs are averaged into the logits.

    Args:
        leaves: the tapped layers (``nn.Linear`` or dense 1×1 ``nn.Conv2d``); their outputs are averaged
            (timm's convention for distilled and multi-branch models).
        name: how the head is named in messages and in the store (e.g. ``"resnet18.fc(Linear)"``).
        maps: per layer, its :class:`AffineMap` (default: each layer read as the ``nn.Linear`` it is).

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, 3))
        >>> head = Head([model[1]], name="toy")
        >>> head.attach()
        >>> _ = model(torch.randn(2, 8))
        >>> head.features().shape
        torch.Size([2, 8])
        >>> head.remove()
    """

    leaves: Sequence[nn.Module]
    name: str
    shared_input: bool | None = None
    maps: Sequence[AffineMap] | None = None
    #: whether forwards are captured at all (the recorder sets it while a pass is open)
    active: bool = True
    #: whether a captured forward also copies the weights (the recorder sets it when the step will be kept)
    armed: bool = True
    #: forwards captured since the last :meth:`take` (only the last one is kept)
    count: int = 0
    last: Forward | None = field(default=None, repr=False)
    _open: Forward | None = field(default=None, repr=False)
    _handles: list = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self.leaves = list(self.leaves)
        if not self.leaves:
            raise HeadError(f"head {self.name}: no classifier module given")
        self.maps = list(self.maps) if self.maps is not None else [LINEAR] * len(self.leaves)
        if len(self.maps) != len(self.leaves):
            raise HeadError(f"head {self.name}: {len(self.maps)} maps for {len(self.leaves)} layers; give one per layer")
        for leaf, amap in zip(self.leaves, self.maps):
            if amap is LINEAR and not _is_affine(leaf):
                raise HeadError(
                    f"head {self.name}: {type(leaf).__name__} is not an nn.Linear or a dense 1x1 nn.Conv2d; "
                    f"pass classifier= the final nn.Linear"
                )
        sizes = {amap.out_features(leaf) for leaf, amap in zip(self.leaves, self.maps)}
        if len(sizes) > 1:
            raise HeadError(f"head {self.name}: its layers have different numbers of outputs {sorted(sizes)}; pass classifier= one head")

    @property
    def num_classes(self) -> int:
        return self.maps[0].out_features(self.leaves[0])

    def attach(self, model: nn.Module | None = None) -> None:
        """Register one forward hook per tapped layer, and on ``model`` the hooks that delimit its forwards."""
        if self._handles:
            return
        for i, leaf in enumerate(self.leaves):
            self._handles.append(leaf.register_forward_hook(self._make_hook(i)))
        if model is not None:
            self._handles.append(model.register_forward_pre_hook(self._model_start))
            self._handles.append(model.register_forward_hook(self._model_end))

    def remove(self) -> None:
        """Remove every hook and drop captured tensors."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.clear()

    def clear(self) -> None:
        """Forget captured forwards."""
        self.count, self.last, self._open = 0, None, None

    # ------------------------------------------------------------------ hooks
    def _make_hook(self, i: int):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            x = args[0] if args else None
            if not self.active or not isinstance(x, torch.Tensor) or not isinstance(output, torch.Tensor):
                return
            f = self._open
            if f is None or f.inputs[i] is not None:  # a new forward (a layer that runs twice starts one too)
                n = len(self.leaves)
                f = self._open = self.last = Forward([None] * n, [None] * n, [None] * n, module.training)
                self.count += 1
            # detach: a reference to the value, never to the autograd graph
            amap = self.maps[i]
            with torch.no_grad():
                f.inputs[i], f.outputs[i] = amap.features(module, x.detach()), output.detach()
                if self.armed or not module.training:
                    w, b = amap.weight_bias(module)
                    f.weights[i] = (w.clone(), b.clone())  # the weights of this forward, whatever happens next

        return hook

    def _model_start(self, module: nn.Module, args: tuple) -> None:
        self._open = None

    def _model_end(self, module: nn.Module, args: tuple, output: Any) -> None:
        f, self._open = self._open, None
        if f is not None and isinstance(output, torch.Tensor) and output.dim() == 2 and output.shape[1] == self.num_classes:
            f.logits = output.detach()

    # ------------------------------------------------------------------ values
    def take(self) -> tuple[Forward | None, int]:
        """The last captured forward and how many forwards were captured since the previous call."""
        out = (self.last, self.count)
        self.clear()
        return out

    def features(self, forward: Forward | None = None) -> torch.Tensor:
        """The FE of a forward (default: the last one): ``(N, D)``."""
        f = self.last if forward is None else forward
        parts = []
        for i in range(len(self.leaves)):
            x = None if f is None else f.inputs[i]
            if x is None:
                raise HeadError(
                    f"head {self.name}: no forward pass of the model reached classifier {i} since the last record(); "
                    f"call model(x) before record(), and attach the recorder before torch.compile"
                )
            if x.dim() == 4 and x.shape[-2:] == (1, 1):
                x = x.flatten(1)
            if x.dim() != 2:
                raise HeadError(
                    f"head {self.name}: classifier {i} received a tensor of shape {tuple(x.shape)}, not (N, D) pooled "
                    f"features; pass classifier= the module that maps pooled features to logits"
                )
            parts.append(x)
        if self.shared_input is None:
            # detach() makes new tensor objects: compare the memory they view instead
            key = (parts[0].data_ptr(), parts[0].shape, parts[0].stride())
            self.shared_input = len(parts) > 1 and all((p.data_ptr(), p.shape, p.stride()) == key for p in parts[1:])
        if len(parts) == 1 or self.shared_input:
            return parts[0]
        return torch.cat(parts, dim=1)

    def head_logits(self, forward: Forward) -> torch.Tensor:
        """The tapped layers' outputs averaged: the head's own logits in that forward."""
        outs = [o.flatten(1) if o.dim() == 4 else o for o in forward.outputs]
        return outs[0] if len(outs) == 1 else sum(outs) / len(outs)

    def weight_bias(self, forward: Forward | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The effective ``(W (C, D), b (C,))``: as in ``forward`` (its copies), or now (live, not copied)."""
        with torch.no_grad():
            if forward is not None and all(w is not None for w in forward.weights):
                maps = list(forward.weights)
            else:
                maps = [amap.weight_bias(leaf) for leaf, amap in zip(self.leaves, self.maps)]
            if len(maps) == 1:
                return maps[0]
            n = len(maps)
            bias = sum(b for _, b in maps) / n
            if self.shared_input:
                weight = sum(w for w, _ in maps) / n
            else:
                weight = torch.cat([w / n for w, _ in maps], dim=1)
            return weight, bias


def check_tolerance(*dtypes: torch.dtype) -> float:
    """The self-check tolerance for tensors of these dtypes (relative to ``|fe| @ |W|.T + |b|``)."""
    eps = max(torch.finfo(d).eps for d in dtypes if d.is_floating_point)
    return max(1e-3, 8 * eps)


def affine_error(fe: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, logits: torch.Tensor) -> float:
    """Largest ``|fe @ W.T + b - logits|`` relative to the scale of the terms, ``|fe| @ |W|.T + |b|`` (fp32)."""
    fe, weight, bias, logits = fe.float(), weight.float(), bias.float(), logits.float()
    diff = (torch.addmm(bias, fe, weight.t()) - logits).abs()
    scale = torch.addmm(bias.abs(), fe.abs(), weight.abs().t())
    rel = diff / scale.clamp(min=torch.finfo(torch.float32).tiny)
    rel = torch.where(torch.isfinite(logits) & torch.isfinite(scale), rel, torch.zeros_like(rel))
    return float(rel.max()) if rel.numel() else 0.0
