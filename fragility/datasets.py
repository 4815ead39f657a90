"""Datasets for the demo: scikit-learn's bundled digits (no download), and local copies of CIFAR-10 and SVHN
in torchvision's on-disk format (read directly; nothing is ever downloaded)."""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass

import numpy as np
import torch

from .errors import DataError

__all__ = ["ImageData", "exponential_counts", "imbalance", "load"]


@dataclass
class ImageData:
    """Images ``(N, 3, H, W)`` float32 in [0, 1]-ish, labels ``(N,)`` int64, class names."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: list[str]
    name: str


def exponential_counts(n_max: int, num_classes: int, ratio: float) -> list[int]:
    """Exponential imbalance profile (Buda et al.): ``n_c = n_max * ratio ** (-c / (C - 1))``, at least 1."""
    if ratio < 1:
        raise DataError(f"imbalance ratio {ratio} must be >= 1 (1 = balanced)")
    return [max(1, int(round(n_max * ratio ** (-c / max(1, num_classes - 1))))) for c in range(num_classes)]


def imbalance(x: torch.Tensor, y: torch.Tensor, ratio: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep an exponentially imbalanced subset of ``(x, y)``: class 0 keeps most, the last class least."""
    C = int(y.max()) + 1
    have = torch.bincount(y, minlength=C)
    counts = exponential_counts(int(have.min()), C, ratio)
    g = torch.Generator().manual_seed(seed)
    keep = []
    for c in range(C):
        idx = torch.nonzero(y == c).flatten()
        keep.append(idx[torch.randperm(len(idx), generator=g)[: counts[c]]])
    keep_t = torch.cat(keep).sort().values
    return x[keep_t], y[keep_t]


def _digits(seed: int) -> ImageData:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)  # (N, 1, 8, 8)
    x = torch.nn.functional.interpolate(x, size=32, mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    x = (x - 0.5) / 0.5
    y = torch.from_numpy(d.target.astype(np.int64))
    g = torch.Generator().manual_seed(seed)
    # stratified 80/20 split
    train, test = [], []
    for c in range(10):
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        cut = int(round(0.8 * len(idx)))
        train.append(idx[:cut])
        test.append(idx[cut:])
    tr, te = torch.cat(train).sort().values, torch.cat(test).sort().values
    return ImageData(x[tr], y[tr], x[te], y[te], [str(i) for i in range(10)], "digits")


CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _normalize(x: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(x.astype(np.float32) / 255.0)
    return (t - 0.5) / 0.5


def _cifar10(root: str) -> ImageData:
    base = os.path.join(root, "cifar-10-batches-py")
    if not os.path.isdir(base):
        raise DataError(
            f"CIFAR-10 not found: {base} does not exist; pass --root the folder holding cifar-10-batches-py/ "
            f"(torchvision's layout; fragility never downloads)"
        )

    def batch(name: str) -> tuple[np.ndarray, np.ndarray]:
        path = os.path.join(base, name)
        if not os.path.exists(path):
            raise DataError(f"CIFAR-10 file {path} is missing; the folder must hold data_batch_1..5 and test_batch")
        try:
            with open(path, "rb") as fh:
                d = pickle.load(fh, encoding="bytes")
            data = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            labels = np.asarray(d[b"labels"], dtype=np.int64)
        except Exception as exc:  # noqa: BLE001 - any malformed pickle is one bad file
            raise DataError(f"CIFAR-10 file {path} is not a CIFAR-10 batch ({type(exc).__name__}: {exc})") from None
        return data, labels

    parts = [batch(f"data_batch_{i}") for i in range(1, 6)]
    xtr = np.concatenate([p[0] for p in parts])
    ytr = np.concatenate([p[1] for p in parts])
    xte, yte = batch("test_batch")
    names = CIFAR10_CLASSES
    meta = os.path.join(base, "batches.meta")
    if os.path.exists(meta):
        with open(meta, "rb") as fh:
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in pickle.load(fh, encoding="bytes")[b"label_names"]]
    return ImageData(_normalize(xtr), torch.from_numpy(ytr), _normalize(xte), torch.from_numpy(yte), names, "cifar10")


def _svhn(root: str) -> ImageData:
    from scipy.io import loadmat

    def split(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        path = os.path.join(root, f"{name}_32x32.mat")
        if not os.path.exists(path):
            raise DataError(f"SVHN file {path} is missing; pass --root the folder holding train_32x32.mat and test_32x32.mat")
        try:
            m = loadmat(path)
            x = np.transpose(m["X"], (3, 2, 0, 1))  # (32, 32, 3, N) -> (N, 3, 32, 32)
            y = m["y"].astype(np.int64).reshape(-1) % 10  # SVHN stores digit 0 as label 10
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"SVHN file {path} is not an SVHN .mat file ({type(exc).__name__}: {exc})") from None
        return _normalize(x), torch.from_numpy(y)

    xtr, ytr = split("train")
    xte, yte = split("test")
    return ImageData(xtr, ytr, xte, yte, [str(i) for i in range(10)], "svhn")


def load(name: str, root: str | None = None, seed: int = 0) -> ImageData:
    """Load ``digits`` (bundled), or ``cifar10`` / ``svhn`` from a local ``root`` folder."""
    if name == "digits":
        return _digits(seed)
    if name in ("cifar10", "svhn"):
        if not root:
            raise DataError(f"--data {name} needs --root PATH, a local copy in torchvision's layout (nothing is downloaded)")
        return _cifar10(root) if name == "cifar10" else _svhn(root)
    raise DataError(f"unknown data set {name!r}; use digits, cifar10 or svhn")
