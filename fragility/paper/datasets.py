"""Datasets: scikit-learn's bundled digits (no download), and local copies of CIFAR-10, CIFAR-100, SVHN and
CelebA in torchvision's on-disk formats (read directly; nothing is ever downloaded), with the imbalance
profiles of the long-tailed literature and the exact images LDAM-DRW's ``IMBALANCECIFAR10/100`` keeps
(kaidic/LDAM-DRW ``imbalance_cifar.py``, which the paper's authors train on)."""

from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .._light import DATASET_NAMES
from ..errors import DataError

__all__ = [
    "DATASETS", "HALF", "PEERS_CIFAR", "PROFILES", "ImageData", "exponential_counts", "imbalance", "imbalance_counts",
    "imbalanced_indices", "load", "normalize", "step_counts",
]

#: per-channel (mean, std) of the CIFAR transforms of the paper's code base (kaidic/LDAM-DRW and
#: dd1github/EOS ``cifar_train.py``: ``transforms.Normalize((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))``)
PEERS_CIFAR = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
#: (x - 0.5) / 0.5: the digits demo, SVHN and CelebA (the peers' code has no reader for the latter two)
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def normalize(x: np.ndarray | torch.Tensor, stats: tuple[Sequence[float], Sequence[float]]) -> torch.Tensor:
    """uint8 images ``(N, C, H, W)`` as the model's input: torchvision's ``ToTensor()`` then
    ``Normalize(mean, std)``, operation for operation (``/255`` in float32, then ``- mean``, ``/ std`` per
    channel), so the tensors are bit-identical to the peers' pipeline (tested)."""
    t = torch.as_tensor(x).to(torch.float32).div_(255)
    mean, std = (torch.as_tensor(v, dtype=torch.float32).view(-1, 1, 1) for v in stats)
    return t.sub_(mean).div_(std)


@dataclass
class ImageData:
    """Normalised images ``(N, 3, H, W)`` float32, labels ``(N,)`` int64, class names, and the normalisation
    ``stats`` = ``(mean, std)`` per channel that produced them."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: list[str]
    name: str
    stats: tuple[tuple[float, ...], tuple[float, ...]] = HALF

    @property
    def black(self) -> torch.Tensor:
        """``(3, 1, 1)``: a black (0) pixel after normalisation — what the augmentation's padding adds,
        as torchvision's ``RandomCrop(32, padding=4)`` pads the image with 0 before ``Normalize``."""
        return normalize(torch.zeros((1, 3, 1, 1), dtype=torch.uint8), self.stats)[0]


def _check_ratio(ratio: float) -> None:
    if not ratio >= 1:
        raise DataError(f"imbalance ratio {ratio} must be >= 1 (1 = balanced)")


def exponential_counts(n_max: int, num_classes: int, ratio: float) -> list[int]:
    """Exponential profile (Cui et al., LDAM-DRW): ``n_c = int(n_max * imb_factor ** (c / (C - 1.0)))`` with
    ``imb_factor = 1 / ratio``, at least 1 — LDAM-DRW's ``get_img_num_per_cls`` expression for expression.

    ``int()`` truncates as LDAM-DRW's code does, so CIFAR-10 at 100:1 gives its published
    5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50.
    """
    _check_ratio(ratio)
    imb_factor = 1 / ratio  # correctly rounded: 1/100, 1/50, 1/10 are the literals 0.01, 0.02, 0.1
    return [max(1, int(n_max * (imb_factor ** (c / max(1.0, num_classes - 1.0))))) for c in range(num_classes)]


def step_counts(n_max: int, num_classes: int, ratio: float, minority_share: float = 0.5) -> list[int]:
    """Step profile (Buda et al.; LDAM-DRW's ``step``): the last ``minority_share`` of the classes keep
    ``int(n_max * (1 / ratio))``."""
    _check_ratio(ratio)
    n_minor = int(num_classes * minority_share)
    return [n_max if c < num_classes - n_minor else max(1, int(n_max * (1 / ratio))) for c in range(num_classes)]


PROFILES = {"exp": exponential_counts, "step": step_counts}


def imbalance_counts(have: Sequence[int], ratio: float, profile: str = "exp") -> list[int]:
    """Per-class counts of an imbalanced view of a set with ``have`` rows per class (``n_max`` = the smallest)."""
    if profile not in PROFILES:
        raise DataError(f"imbalance profile {profile!r} is unknown; use {' or '.join(PROFILES)}")
    return PROFILES[profile](int(min(have)), len(have), ratio)


def imbalanced_indices(y: np.ndarray | torch.Tensor, ratio: float, seed: int = 0, profile: str = "exp") -> np.ndarray:
    """The rows LDAM-DRW's ``IMBALANCECIFAR10/100(imb_type=profile, imb_factor=1/ratio, rand_number=seed)``
    keeps, in its order: ``np.random.seed(seed)``, then per class in class order ``np.random.shuffle`` of the
    class's row indices and the first ``n_c``. Indices into ``y`` (the full training set)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise DataError(f"seed {seed!r} must be an integer in 0..2**32-1 (numpy's RandomState seed, LDAM-DRW's rand_number)")
    y = np.asarray(y, dtype=np.int64)
    C = int(y.max()) + 1
    counts = imbalance_counts(np.bincount(y, minlength=C).tolist(), ratio, profile)
    rng = np.random.RandomState(int(seed))  # the global generator np.random.seed(seed) seeds, without touching it
    keep = []
    for c in np.unique(y):
        idx = np.where(y == c)[0]
        rng.shuffle(idx)
        keep.append(idx[: counts[c]])
    return np.concatenate(keep)


def imbalance(
    x: torch.Tensor, y: torch.Tensor, ratio: float, seed: int = 0, profile: str = "exp", return_index: bool = False
) -> tuple[torch.Tensor, ...]:
    """Keep an imbalanced subset of ``(x, y)``: class 0 keeps most, the last classes least — exactly the
    images (and order) of LDAM-DRW's ``IMBALANCECIFAR10/100`` with ``rand_number=seed`` (:func:`imbalanced_indices`).

    ``return_index=True`` also returns the kept rows' indices into ``(x, y)`` (sample ids for provenance:
    record them with ``rec.record(y, index=ids)``).
    """
    keep = torch.from_numpy(imbalanced_indices(y, ratio, seed, profile))
    return (x[keep], y[keep], keep) if return_index else (x[keep], y[keep])


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


def _folder(root: str, sub: str, what: str) -> str:
    base = os.path.join(root, sub)
    if not os.path.isdir(base):
        raise DataError(
            f"{what} not found: {base} does not exist; pass --root the folder holding {sub}/ "
            f"(torchvision's layout; fragility never downloads)"
        )
    return base


def _cifar_part(base: str, name: str, keys: Sequence[bytes], what: str, holds: str) -> dict:
    """One pickled file of a CIFAR folder, with the ``keys`` its format promises (else one line naming it)."""
    path = os.path.join(base, name)
    if not os.path.exists(path):
        raise DataError(f"{what} file {path} is missing; the folder must hold {holds}")
    try:
        with open(path, "rb") as fh:
            d = pickle.load(fh, encoding="bytes")
        for key in keys:
            d[key]  # noqa: B018
    except Exception as exc:  # noqa: BLE001 - any malformed pickle is one bad file
        raise DataError(f"{what} file {path} is not a {what} batch ({type(exc).__name__}: {exc})") from None
    return d


def _cifar_xy(d: dict, label_key: bytes, path: str) -> tuple[np.ndarray, torch.Tensor]:
    """The uint8 images and the labels of one loaded CIFAR batch file (``path`` names it in errors)."""
    try:
        x = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        y = np.asarray(d[label_key], dtype=np.int64).reshape(-1)
        if len(x) != len(y):
            raise ValueError(f"{len(x)} images but {len(y)} labels")
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"file {path} does not hold 32x32 RGB images with one label each ({exc})") from None
    return x, torch.from_numpy(y)


def _cifar10(root: str) -> ImageData:
    base = _folder(root, "cifar-10-batches-py", "CIFAR-10")
    holds = "data_batch_1..5 and test_batch"
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    parts = [_cifar_xy(_cifar_part(base, n, (b"data", b"labels"), "CIFAR-10", holds), b"labels", os.path.join(base, n))
             for n in names]
    classes = CIFAR10_CLASSES
    if os.path.exists(os.path.join(base, "batches.meta")):
        meta = _cifar_part(base, "batches.meta", (b"label_names",), "CIFAR-10", holds)
        classes = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[b"label_names"]]
    (xte, yte), train = parts[-1], parts[:-1]
    return ImageData(normalize(np.concatenate([p[0] for p in train]), PEERS_CIFAR), torch.cat([p[1] for p in train]),
                     normalize(xte, PEERS_CIFAR), yte, classes, "cifar10", PEERS_CIFAR)


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
        return normalize(x, HALF), torch.from_numpy(y)

    xtr, ytr = split("train")
    xte, yte = split("test")
    return ImageData(xtr, ytr, xte, yte, [str(i) for i in range(10)], "svhn")


def _cifar100(root: str) -> ImageData:
    base = _folder(root, "cifar-100-python", "CIFAR-100")
    holds = "train, test and meta"
    tr, te = (_cifar_part(base, n, (b"data", b"fine_labels"), "CIFAR-100", holds) for n in ("train", "test"))
    meta = _cifar_part(base, "meta", (b"fine_label_names",), "CIFAR-100", holds)
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[b"fine_label_names"]]
    (xtr, ytr), (xte, yte) = _cifar_xy(tr, b"fine_labels", os.path.join(base, "train")), _cifar_xy(te, b"fine_labels", os.path.join(base, "test"))
    return ImageData(normalize(xtr, PEERS_CIFAR), ytr, normalize(xte, PEERS_CIFAR), yte, names, "cifar100", PEERS_CIFAR)


#: CelebA's hair-colour task: rows with exactly one of these attributes, the attribute is the class
CELEBA_CLASSES = ["Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair", "Bald"]


def _celeba(root: str) -> ImageData:
    """torchvision's CelebA layout: ``root/celeba/{list_attr_celeba.txt, list_eval_partition.txt,
    img_align_celeba/*.jpg}``; images centre-cropped to 178×178 and resized to 32×32; partition 0 trains,
    partition 2 tests."""
    from PIL import Image

    base = os.path.join(root, "celeba")
    attr_path, part_path = os.path.join(base, "list_attr_celeba.txt"), os.path.join(base, "list_eval_partition.txt")
    for path in (attr_path, part_path):
        if not os.path.exists(path):
            raise DataError(f"CelebA file {path} is missing; pass --root the folder holding celeba/ (torchvision's layout)")
    try:
        with open(attr_path) as fh:
            lines = fh.read().split("\n")
        header = lines[1].split()
        cols = [header.index(c) for c in CELEBA_CLASSES]
        attrs = {}
        for line in lines[2:]:
            f = line.split()
            if f:
                attrs[f[0]] = [int(f[1 + i]) for i in cols]
        with open(part_path) as fh:
            split = {f[0]: int(f[1]) for f in (ln.split() for ln in fh) if f}
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"CelebA annotation files in {base} are malformed ({type(exc).__name__}: {exc})") from None
    data: dict[int, tuple[list, list]] = {0: ([], []), 2: ([], [])}
    for name, a in attrs.items():
        if sum(v == 1 for v in a) != 1 or split.get(name) not in data:
            continue
        path = os.path.join(base, "img_align_celeba", name)
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                w, h = im.size
                s = min(w, h, 178)
                im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize((32, 32), Image.BILINEAR)
                arr = np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)
        except OSError as exc:
            raise DataError(f"CelebA image {path} cannot be read ({exc}); restore it from the original archive") from None
        xs, ys = data[split[name]]
        xs.append(arr)
        ys.append(a.index(1))
    if not data[0][0] or not data[2][0]:
        raise DataError(f"CelebA in {base} has no training or no test image with exactly one of {', '.join(CELEBA_CLASSES)}")

    def xy(part: tuple[list, list]) -> tuple[torch.Tensor, torch.Tensor]:
        return normalize(np.stack(part[0]), HALF), torch.tensor(part[1], dtype=torch.int64)

    return ImageData(*xy(data[0]), *xy(data[2]), list(CELEBA_CLASSES), "celeba")


DATASETS = {"digits": None, "cifar10": _cifar10, "cifar100": _cifar100, "svhn": _svhn, "celeba": _celeba}
assert tuple(DATASETS) == DATASET_NAMES  # the command line lists them without importing torch


def load(name: str, root: str | None = None, seed: int = 0) -> ImageData:
    """Load ``digits`` (bundled), or ``cifar10`` / ``cifar100`` / ``svhn`` / ``celeba`` from a local ``root``."""
    if name == "digits":
        return _digits(seed)
    if name in DATASETS:
        if not root:
            raise DataError(f"--data {name} needs --root PATH, a local copy in torchvision's layout (nothing is downloaded)")
        return DATASETS[name](root)
    raise DataError(f"unknown data set {name!r}; use {', '.join(DATASETS)}")
