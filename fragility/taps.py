"""Taps: the affine classifier head of a model, its input (FE) and its effective weight.

A :class:`Head` wraps one or more *leaf* modules whose outputs are averaged into the logits (one
``nn.Linear`` for most models; two for distilled models; one per branch for multi-branch models).
Each leaf must be affine in eval mode — ``nn.Linear``, a 1×1 ``nn.Conv2d``, or a chain of
``BatchNorm1d`` / ``Dropout`` / ``Identity`` / ``Flatten`` ending in one of those. The head's
effective map is ``logits = fe @ weight.T + bias`` with

* ``fe`` the leaves' inputs concatenated (or the one input, when every leaf sees the same tensor),
* ``weight (C, D)`` and ``bias (C,)`` derived from the leaves' parameters at call time.

Forward pre-hooks only keep detached references to the leaves' inputs: they never change outputs or
gradients and hold no autograd graph. :meth:`Head.remove` takes them off again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import HeadError

__all__ = ["Head", "affine_of", "model_name"]

_PASS_THROUGH = (nn.Dropout, nn.Identity, nn.Flatten)


def model_name(model: nn.Module) -> str:
    """The timm architecture name of a model, or its class name."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    return str(cfg.get("architecture") or type(model).__name__)


def _describe(module: nn.Module) -> str:
    return type(module).__name__


def affine_of(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the eval-mode affine map ``(W (C, D), b (C,))`` of a classifier leaf module.

    Raises:
        HeadError: the module is not affine (names the offending submodule).

    Example:
        >>> lin = torch.nn.Linear(4, 3)
        >>> w, b = affine_of(lin)
        >>> torch.equal(w, lin.weight.detach())
        True
    """
    with torch.no_grad():
        return _affine(module, path=_describe(module))


def _affine(module: nn.Module, path: str) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(module, nn.Linear):
        w = module.weight.detach()
        b = module.bias.detach() if module.bias is not None else w.new_zeros(w.shape[0])
        return w, b
    if isinstance(module, nn.Conv2d):
        if module.kernel_size != (1, 1) or module.groups != 1:
            raise HeadError(
                f"classifier {path} is a {module.kernel_size} conv with groups={module.groups}; only 1x1 "
                f"dense convs are affine per pooled vector; pass classifier= the final linear layer"
            )
        w = module.weight.detach().flatten(1)
        b = module.bias.detach() if module.bias is not None else w.new_zeros(w.shape[0])
        return w, b
    children = list(module.named_children())
    if children and (isinstance(module, nn.Sequential) or type(module).__name__ in _KNOWN_CHAINS):
        # a chain evaluated in registration order: compose the affine maps right to left
        weight: torch.Tensor | None = None
        bias: torch.Tensor | None = None
        scale_shift: list[tuple[torch.Tensor, torch.Tensor]] = []
        for name, child in children:
            sub = f"{path}.{name}({_describe(child)})"
            if isinstance(child, _PASS_THROUGH):
                continue
            if isinstance(child, nn.BatchNorm1d) and weight is None:
                if child.running_var is None:
                    raise HeadError(f"classifier {sub} tracks no running statistics, so it is not affine in eval mode")
                s = torch.rsqrt(child.running_var.detach() + child.eps)
                if child.weight is not None:
                    s = s * child.weight.detach()
                t = -child.running_mean.detach() * s
                if child.bias is not None:
                    t = t + child.bias.detach()
                scale_shift.append((s, t))
                continue
            if isinstance(child, (nn.Linear, nn.Conv2d)) and weight is None:
                weight, bias = _affine(child, sub)
                continue
            raise HeadError(
                f"classifier {sub} is not affine (only BatchNorm1d/Dropout/Identity/Flatten then one "
                f"Linear or 1x1 Conv2d are); pass classifier= the final nn.Linear, or teach fragility "
                f"the head with a fragility_resolve_head plugin"
            )
        if weight is None or bias is None:
            raise HeadError(f"classifier {path} has no Linear or 1x1 Conv2d layer; pass classifier= the final nn.Linear")
        for s, t in reversed(scale_shift):
            bias = bias + weight @ t
            weight = weight * s
        return weight, bias
    raise HeadError(
        f"classifier {path} is not affine or not understood; pass classifier= the final nn.Linear, or teach "
        f"fragility the head with a fragility_resolve_head plugin"
    )


# composite heads from timm that are a plain chain in registration order
_KNOWN_CHAINS = {"NormLinear"}


@dataclass
class Head:
    """An affine classifier head made of leaf modules whose outputs are averaged into logits.

    Args:
        leaves: the classifier module(s); their outputs are averaged (timm's convention for
            distilled and multi-branch models).
        name: how the head is named in messages and in the store (e.g. ``"resnet18.fc"``).

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
    _inputs: list[torch.Tensor | None] = field(default_factory=list, repr=False)
    _handles: list = field(default_factory=list, repr=False)
    shared_input: bool | None = None

    def __post_init__(self) -> None:
        self.leaves = list(self.leaves)
        if not self.leaves:
            raise HeadError(f"head {self.name}: no classifier module given")
        for i, leaf in enumerate(self.leaves):
            _affine(leaf, f"{self.name}[{i}]({_describe(leaf)})")  # validate now, fail early
        self._inputs = [None] * len(self.leaves)

    @property
    def num_classes(self) -> int:
        return int(self.weight_bias()[0].shape[0])

    def attach(self) -> None:
        """Register one forward pre-hook per leaf (idempotent)."""
        if self._handles:
            return
        for i, leaf in enumerate(self.leaves):
            self._handles.append(leaf.register_forward_pre_hook(self._make_hook(i)))

    def remove(self) -> None:
        """Remove every hook and drop captured tensors."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._inputs = [None] * len(self.leaves)

    def _make_hook(self, i: int):
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0]
            if isinstance(x, torch.Tensor):
                # detach: a reference to the value, never to the autograd graph
                self._inputs[i] = x.detach()

        return hook

    def clear(self) -> None:
        self._inputs = [None] * len(self.leaves)

    def features(self) -> torch.Tensor:
        """The FE of the last forward pass: ``(N, D)``."""
        parts = []
        for i, x in enumerate(self._inputs):
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

    def weight_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The effective ``(W (C, D), b (C,))`` of the head now, on the model's device."""
        with torch.no_grad():
            maps = [_affine(leaf, f"{self.name}[{i}]") for i, leaf in enumerate(self.leaves)]
            if len(maps) == 1:
                return maps[0]
            n = len(maps)
            bias = sum(b for _, b in maps) / n
            if self.shared_input:
                weight = sum(w for w, _ in maps) / n
            else:
                weight = torch.cat([w / n for w, _ in maps], dim=1)
            return weight, bias
