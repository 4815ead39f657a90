"""The losses and schedule the paper compares, as in LDAM-DRW's reference code (Cao et al. 2019):
cross-entropy, focal loss, LDAM with deferred re-weighting (DRW), class-balanced re-weighting (Cui et al.
2019), and the CIFAR SGD schedule with warm-up and two steps."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .._light import LOSSES  # the names live where the command line reads them without torch
from ..errors import DataError

__all__ = ["LOSSES", "FocalLoss", "LDAMLoss", "Recipe", "class_balanced_weights", "lr_at", "make_loss"]


def class_balanced_weights(counts: Sequence[int], beta: float = 0.9999) -> torch.Tensor:
    """Cui et al.'s weights: ``(1 - beta) / (1 - beta ** n_c)``, normalised to sum to the number of classes."""
    n = torch.tensor([max(1, int(c)) for c in counts], dtype=torch.float64)
    w = (1 - beta) / (1 - beta**n)
    return (w / w.sum() * len(counts)).float()


class FocalLoss(nn.Module):
    """``mean((1 - p_y) ** gamma · CE)`` with ``p_y = exp(-CE)`` (LDAM-DRW's form; ``weight`` inside CE)."""

    def __init__(self, gamma: float = 1.0, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.gamma, self.weight = gamma, weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits, target, weight=self.weight, reduction="none")
        return ((1 - torch.exp(-ce)) ** self.gamma * ce).mean()


class LDAMLoss(nn.Module):
    """Label-distribution-aware margin: subtract ``m_y ∝ n_y^(-1/4)`` (largest ``max_m``) from the true
    class's logit, scale by ``s``, then cross-entropy (with ``weight`` for DRW)."""

    def __init__(self, counts: Sequence[int], max_m: float = 0.5, s: float = 30.0, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        m = torch.tensor([max(1, int(c)) for c in counts], dtype=torch.float64) ** -0.25
        self.register_buffer("margins", (m * (max_m / m.max())).float())
        self.s, self.weight = s, weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        onehot = F.one_hot(target, logits.shape[1]).to(logits.dtype)
        out = logits - onehot * self.margins.to(logits)[None, :]
        return F.cross_entropy(self.s * out, target, weight=None if self.weight is None else self.weight.to(logits))




def make_loss(name: str, counts: Sequence[int], epoch: int, drw_epoch: int, focal_gamma: float = 1.0) -> nn.Module:
    """The loss ``name`` for ``epoch`` (DRW switches the class-balanced weights on at ``drw_epoch``; the focal
    loss uses ``focal_gamma``)."""
    if name not in LOSSES:
        from ..errors import close_matches

        raise DataError(f"loss {name!r} is unknown{close_matches(name, list(LOSSES))}; use {', '.join(LOSSES)}")
    drw = class_balanced_weights(counts) if epoch >= drw_epoch else None
    if name == "ce":
        return nn.CrossEntropyLoss()
    if name == "ce-drw":
        return nn.CrossEntropyLoss(weight=drw)
    if name == "cb":
        return nn.CrossEntropyLoss(weight=class_balanced_weights(counts))
    if name == "focal":
        return FocalLoss(focal_gamma)
    return LDAMLoss(counts, weight=drw if name == "ldam-drw" else None)


class Recipe:
    """The CIFAR schedule of LDAM-DRW, scaled to ``epochs``: SGD (momentum 0.9, weight decay 2e-4), linear
    warm-up over the first ``warmup`` epochs, lr × 0.01 after 80 % and × 0.0001 after 90 % of the epochs;
    DRW from ``drw_epoch`` (default 80 %). With 200 epochs: steps after epochs 160 and 180, DRW from epoch 160
    (0-based), as the peers' ``cifar_train.py`` hard-codes (``idx = epoch // 160``). ``focal_gamma``: the
    focal loss's gamma (LDAM-DRW: 1; the paper's authors' code, dd1github/EOS ``cifar_train.py``: 2)."""

    def __init__(self, epochs: int, lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 2e-4, warmup: int = 5,
                 batch_size: int = 128, drw_epoch: int | None = None, focal_gamma: float = 1.0) -> None:
        if epochs < 1:
            raise DataError(f"--epochs {epochs} must be >= 1")
        if drw_epoch is not None and drw_epoch < 0:
            raise DataError(f"--drw-epoch {drw_epoch} must be >= 0 (0-based; --epochs or more: never)")
        if not focal_gamma >= 0:
            raise DataError(f"--focal-gamma {focal_gamma} must be >= 0 (0: cross-entropy)")
        self.epochs, self.lr, self.momentum, self.weight_decay = epochs, lr, momentum, weight_decay
        self.warmup, self.batch_size = min(warmup, max(0, epochs - 1)), batch_size
        self.drw_epoch = int(0.8 * epochs) if drw_epoch is None else int(drw_epoch)
        self.focal_gamma = float(focal_gamma)

    def loss(self, name: str, counts: Sequence[int], epoch: int) -> nn.Module:
        """The loss ``name`` at ``epoch`` under this recipe (its DRW epoch and focal gamma)."""
        return make_loss(name, counts, epoch, self.drw_epoch, self.focal_gamma)

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(model.parameters(), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)

    def lr_at(self, epoch: int) -> float:
        return lr_at(epoch, self.epochs, self.lr, self.warmup)


def lr_at(epoch: int, epochs: int, base: float, warmup: int = 5) -> float:
    """Learning rate of 0-based ``epoch``: LDAM-DRW's ``adjust_learning_rate`` with its 160/180-of-200 steps
    placed at 80 % / 90 % of ``epochs``."""
    e = epoch + 1
    if e <= warmup:
        return base * e / warmup
    if e > int(0.9 * epochs):
        return base * 1e-4
    if e > int(0.8 * epochs):
        return base * 1e-2
    return base
