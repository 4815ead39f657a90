"""The CIFAR ResNets of the paper and its follow-ups (He et al. 2016, §4.2), registered as timm models.

``import fragility.paper.models`` (``fragility reproduce`` does it) registers ``cifar_resnet20``, ``32``, ``44``,
``56`` and ``110``: three stages of basic blocks with 16/32/64 channels, parameter-free "option A"
shortcuts (stride-2 subsampling, zero-padded channels), global average pooling and a 64-d FE into the final
layer ``linear``. The module layout — ``conv1``, ``bn1``, ``layer1..3``, ``linear`` — is the one of the
published checkpoints (akamaster/pytorch_resnet_cifar10, kaidic/LDAM-DRW), so their ``state_dict`` loads
with ``strict=True`` (:func:`load_checkpoint` also unwraps ``{"state_dict": ...}`` and ``module.``).

``timm.create_model("cifar_resnet32", num_classes=10, norm_head=True)`` builds LDAM-DRW's normalised
classifier :class:`NormedLinear` (``x/‖x‖ · W/‖W‖``, weight stored ``(in, out)`` as in its checkpoints,
times ``scale``); the built-in tap plugin ``fragility_plugins.normed_taps`` teaches the Recorder its
effective affine map (:class:`NormedLinearMap`).
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DataError
from ..taps import AffineMap, model_name

__all__ = ["CifarResNet", "NormedLinear", "NormedLinearMap", "load_checkpoint", "read_checkpoint", "DEPTHS"]

#: depth -> blocks per stage (depth = 6n + 2)
DEPTHS = {20: 3, 32: 5, 44: 7, 56: 9, 110: 18}


class NormedLinear(nn.Module):
    """LDAM-DRW's cosine classifier: ``logits = scale · (x/‖x‖) @ (W/‖W‖_col)``, with ``W`` of shape ``(in, out)``.

    Its effective affine map (what the taps record): FE = ``x/‖x‖``, weight ``scale · (W/‖W‖_col)ᵀ``, bias 0.
    """

    def __init__(self, in_features: int, out_features: int, scale: float = 1.0) -> None:
        super().__init__()
        self.in_features, self.out_features, self.scale = in_features, out_features, float(scale)
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        with torch.no_grad():  # the peers' `self.weight.data.uniform_(...)`: the same draws and values
            self.weight.uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(x, dim=1).mm(F.normalize(self.weight, dim=0))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, scale={self.scale}"


class NormedLinearMap(AffineMap):
    """How the taps read a :class:`NormedLinear`: its input normalised, its weight normalised and scaled."""

    def features(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1)

    def weight_bias(self, module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        w = module.scale * F.normalize(module.weight.detach(), dim=0).t()
        return w, w.new_zeros(w.shape[0])

    def out_features(self, module: nn.Module) -> int:
        return int(module.out_features)


class _BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pad = (planes - in_planes) // 2 if stride != 1 or in_planes != planes else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        short = x if self.pad is None else F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
        return F.relu(out + short)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32×32 inputs, with timm's classifier contract (``get_classifier``, ``num_classes``)."""

    def __init__(self, depth: int = 32, num_classes: int = 10, in_chans: int = 3, norm_head: bool = False,
                 scale: float = 1.0, **_: Any) -> None:
        super().__init__()
        if depth not in DEPTHS:
            raise DataError(f"CIFAR ResNet depth {depth} is not one of {sorted(DEPTHS)}")
        n = DEPTHS[depth]
        self.num_classes, self.num_features, self.norm_head, self.scale = num_classes, 64, norm_head, scale
        self.conv1 = nn.Conv2d(in_chans, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        planes_in = 16
        for i, planes in enumerate((16, 32, 64)):
            blocks = []
            for j in range(n):
                blocks.append(_BasicBlock(planes_in, planes, stride=2 if (i > 0 and j == 0) else 1))
                planes_in = planes
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.linear = self._head(num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def _head(self, num_classes: int) -> nn.Module:
        if num_classes <= 0:
            return nn.Identity()
        return NormedLinear(64, num_classes, self.scale) if self.norm_head else nn.Linear(64, num_classes)

    def get_classifier(self) -> nn.Module:
        return self.linear

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.linear = self._head(num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean((2, 3))
        return x if pre_logits else self.linear(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of a published CIFAR ResNet checkpoint: a plain one, or one under ``"state_dict"``,
    with DataParallel's ``module.`` prefix removed. Tensors and numbers only (``weights_only``): a file
    from elsewhere runs no code."""
    try:
        state = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - missing, truncated, not a torch file: one line
        raise DataError(f"cannot read checkpoint {os.fspath(path)}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise DataError(f"checkpoint {os.fspath(path)} holds no state_dict (a dict of named tensors)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_checkpoint(model: nn.Module, path: str | os.PathLike) -> None:
    """Load a published CIFAR ResNet checkpoint (``strict=True``): a plain ``state_dict``, or one under
    ``"state_dict"``, with or without DataParallel's ``module.`` prefix."""
    state = read_checkpoint(path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise DataError(f"checkpoint {os.fspath(path)} does not fit {model_name(model)}: {first}") from None


def _register() -> None:
    from timm.models import register_model

    def entry(depth: int):
        def fn(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
            if pretrained:
                raise DataError(
                    f"cifar_resnet{depth} has no downloadable weights; create it with pretrained=False and load a "
                    f"checkpoint with fragility.paper.models.load_checkpoint(model, path)"
                )
            for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
                kwargs.pop(key, None)
            model = CifarResNet(depth, **kwargs)
            model.pretrained_cfg = model.default_cfg = {"architecture": f"cifar_resnet{depth}", "input_size": (3, 32, 32),
                                                        "num_classes": model.num_classes}
            return model

        fn.__name__ = f"cifar_resnet{depth}"
        fn.__module__ = __name__
        return fn

    import timm

    for depth in DEPTHS:
        if not timm.is_model(f"cifar_resnet{depth}"):
            register_model(entry(depth))


_register()
