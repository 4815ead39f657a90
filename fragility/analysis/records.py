"""Typed records of the built-in results: what ``topk``, ``magnitude``, ``diversity`` and :func:`compare`
computed, per run, group and class, as frozen dataclasses.

A result's ``data`` is the JSON layout (``docs/analyzers.md``); these records are the one place outside the
analyzers that knows it. Everything else — the CLI, ``watch``, live metrics, the report, the demo, ``reproduce``,
remedies — reads attributes of records, so a renamed or removed quantity fails in one place (building the
record: ``KeyError`` naming the key) and every reader of it shows up to a type checker or an ``AttributeError``.

Example:
    >>> from fragility.analysis.records import topk_records           # doctest: +SKIP
    >>> rec = topk_records(fragility.analyze("run.fragility", ["topk"])["topk"])
    >>> [c.unique for c in rec.last("test").classes]                  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from ._results import Result

__all__ = [
    "Archetypes",
    "CompareClass",
    "CompareRecords",
    "DiversityClass",
    "DiversityGroup",
    "DiversityRecords",
    "MagnitudeClass",
    "MagnitudeGroup",
    "MagnitudeRecords",
    "MatchedRatio",
    "MinimalSets",
    "SplitOverlap",
    "TopkClass",
    "TopkGroup",
    "TopkIdentity",
    "TopkRecords",
    "TopkSet",
    "TrajectoryPoint",
    "as_data",
    "build",
    "compare_records",
    "diversity_records",
    "magnitude_records",
    "topk_records",
]

R = TypeVar("R")
G = TypeVar("G")


def _key(name: str) -> dict[str, str]:
    """Field metadata: the record field reads the data key ``name`` (``class`` is a Python keyword)."""
    return {"key": name}


def build(cls: type[R], data: dict[str, Any]) -> R:
    """A record of type ``cls`` from one dict of a result's ``data``: each field reads its key (a missing key of
    a field without a default raises ``KeyError``); nested records, lists and dicts of them are built too."""
    kwargs = {}
    for name, key, optional, convert in _plan(cls):
        if optional and key not in data:
            continue
        value = data[key]
        kwargs[name] = value if convert is None or value is None else convert(value)
    return cls(**kwargs)


def as_data(record: Any) -> dict[str, Any]:
    """The inverse of :func:`build`: a record's fields under their keys, nested records as dicts, in field order —
    the layout of ``data`` that the built-in analyzers write. A field with a default that holds it is left out."""
    out = {}
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if f.default is not dataclasses.MISSING and value is f.default:
            continue
        if f.default_factory is not dataclasses.MISSING and not value:
            continue
        out[f.metadata.get("key", f.name)] = _plain(value)
    return out


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return as_data(value)
    if isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
        return [as_data(v) for v in value]
    if isinstance(value, dict) and value and dataclasses.is_dataclass(next(iter(value.values()))):
        return {k: as_data(v) for k, v in value.items()}
    return value


@functools.cache
def _plan(cls: type) -> tuple[tuple[str, str, bool, Callable[[Any], Any] | None], ...]:
    """Per field of a record class, once: its name, its data key, whether it may be missing, and how a (non-null)
    value becomes the field's value (``None``: as it is)."""
    hints = typing.get_type_hints(cls)
    return tuple((f.name, f.metadata.get("key", f.name),
                  f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING, _converter(hints[f.name]))
                 for f in dataclasses.fields(cls))


def _converter(hint: Any) -> Callable[[Any], Any] | None:
    """How a value of a field typed ``hint`` is built: a record, a list or dict of records, an optional record
    (built only from a dict), or nothing to do."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = next((a for a in args if dataclasses.is_dataclass(a)), None)
        return None if inner is None else (lambda v: build(inner, v) if isinstance(v, dict) else v)
    if dataclasses.is_dataclass(hint):
        return functools.partial(build, hint)
    if origin is list and args and dataclasses.is_dataclass(args[0]):
        return lambda v: [build(args[0], x) for x in v]
    if origin is dict and len(args) == 2 and dataclasses.is_dataclass(args[1]):
        return lambda v: {k: build(args[1], x) for k, x in v.items()}
    return None


class Grouped(Generic[G]):
    groups: dict[str, G]

    def group(self, split: str, epoch: int | None = None) -> G | None:
        """The group of ``split`` at ``epoch`` (default: its last epoch), or ``None``."""
        found = [g for g in self.groups.values() if g.split == split and (epoch is None or g.epoch == epoch)]  # type: ignore[attr-defined]
        return max(found, key=lambda g: g.epoch) if found else None  # type: ignore[attr-defined]

    def last(self, split: str) -> G | None:
        """The last epoch's group of ``split``, or ``None``."""
        return self.group(split)


# ------------------------------------------------------------------------------------------------ topk


@dataclass(frozen=True)
class TopkSet:
    """A class's top-K features (indices, their mean CE and share of the class's CE); ``None`` without rows."""

    indices: Any
    values: Any
    share: Any


@dataclass(frozen=True)
class TopkIdentity:
    """The class top-K over all rows, the correctly classified and the misclassified ones."""

    all: TopkSet
    correct: TopkSet
    incorrect: TopkSet


@dataclass(frozen=True)
class MinimalSets:
    """Minimal sufficient CE sets of a class: per-feature frequency, unique features (raw and at m rows), mean size."""

    freq: Any
    unique: int
    unique_rarefied: float | None
    mean_size: float | None


@dataclass(frozen=True)
class TopkClass:
    name: str = field(metadata=_key("class"))
    n: int
    accuracy: float | None
    accuracy_ci: Any
    topk: TopkIdentity | None
    freq: Any
    unique: int
    unique_rarefied: float | None
    unique_tau: int | None
    overlap_correct_incorrect: float | None
    mscs: MinimalSets | None = None  # absent where the pass had no classifier bias


@dataclass(frozen=True)
class TopkGroup:
    split: str
    epoch: int
    classes: list[TopkClass]
    overlap_between_classes: Any
    rarefy_m: int | None
    rarefy_m_mscs: int | None


@dataclass(frozen=True)
class SplitOverlap:
    """Per class, the overlap and Jaccard index of the class top-K of groups ``a`` and ``b`` (same epoch)."""

    a: str
    b: str
    overlap: list
    jaccard: list


@dataclass(frozen=True)
class TopkRecords(Grouped[TopkGroup]):
    embedding: str
    k: int
    tau: float
    feature_dim: int
    groups: dict[str, TopkGroup]
    overlap_between_splits: list[SplitOverlap] = field(default_factory=list)


# ------------------------------------------------------------------------------------------- magnitude


@dataclass(frozen=True)
class MagnitudeClass:
    name: str = field(metadata=_key("class"))
    n: int
    n_train: int
    mean: float | None
    mean_correct: float | None
    mean_incorrect: float | None
    ratio_correct: float | None
    ratio_correct_ci: Any
    ratio_incorrect_ci: Any
    ratio_incorrect: float | None
    share_below_p5: float | None
    share_below_p5_ci: Any
    accuracy_below_p5: float | None
    accuracy_below_p5_ci: Any
    accuracy_above_p5: float | None
    accuracy_above_p5_ci: Any
    reason: str | None


@dataclass(frozen=True)
class MagnitudeGroup:
    split: str
    epoch: int
    classes: list[MagnitudeClass]


@dataclass(frozen=True)
class TrajectoryPoint:
    """One epoch of the reference split: per class, overlap with the final top-K and the magnitude there."""

    epoch: int
    identity_overlap: list
    magnitude: list


@dataclass(frozen=True)
class MagnitudeRecords(Grouped[MagnitudeGroup]):
    embedding: str
    k: int
    reference: str
    identity: list
    train_n: Any
    train_mean: Any
    train_p5: Any
    groups: dict[str, MagnitudeGroup]
    trajectory: dict[str, TrajectoryPoint] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------- diversity


@dataclass(frozen=True)
class MatchedRatio:
    """The participation ratio at a matched number of rows ``m``: mean and interval over ``draws`` subsamples."""

    m: int
    draws: int
    mean: float | None
    interval: Any


@dataclass(frozen=True)
class Archetypes:
    """Shares (or their intervals) of the k-NN archetypes; ``None`` where not computed."""

    safe: Any
    border: Any
    rare: Any
    outlier: Any


@dataclass(frozen=True)
class DiversityClass:
    name: str = field(metadata=_key("class"))
    n: int
    unique_share: float | None
    entropy: float | None
    participation_ratio: float | None
    participation_ratio_matched: MatchedRatio | None
    mean_cosine: float | None
    mean_cosine_ci: Any
    knn_rows: int
    archetypes: Archetypes | None
    archetypes_ci: Archetypes | None


@dataclass(frozen=True)
class DiversityGroup:
    split: str
    epoch: int
    knn_sampled: Any
    classes: list[DiversityClass]
    matched_m: int | None


@dataclass(frozen=True)
class DiversityRecords(Grouped[DiversityGroup]):
    embedding: str
    k: int
    knn_k: int
    groups: dict[str, DiversityGroup]


# --------------------------------------------------------------------------------------------- compare


@dataclass(frozen=True)
class CompareClass:
    """One class in the two compared runs: each per-run quantity is a pair ``(first run, second run)`` in the order
    of :attr:`CompareRecords.labels`."""

    name: str
    overlap_train: float | None
    overlap_test: float | None
    n_train: tuple
    unique: tuple
    unique_rarefied: tuple
    accuracy: tuple
    train_magnitude: tuple
    test_ratio: tuple


@dataclass(frozen=True)
class CompareRecords:
    labels: list
    k: int
    rarefy_m: int | None
    classes: list[CompareClass]
    feature_overlap: bool
    incomparable: str | None
    forced: bool


def _records(result: Result, cls: type[R], name: str) -> R:
    if not isinstance(result, Result):
        raise TypeError(f"{name}_records() takes a fragility.analysis.Result, got {type(result).__name__}")
    return build(cls, result.data)


def topk_records(result: Result) -> TopkRecords:
    """The ``topk`` result as records."""
    return _records(result, TopkRecords, "topk")


def magnitude_records(result: Result) -> MagnitudeRecords:
    """The ``magnitude`` result as records."""
    return _records(result, MagnitudeRecords, "magnitude")


def diversity_records(result: Result) -> DiversityRecords:
    """The ``diversity`` result as records."""
    return _records(result, DiversityRecords, "diversity")


def compare_records(result: Result) -> CompareRecords:
    """The result of :func:`fragility.analysis.compare` as records (its per-run keys carry the runs' labels)."""
    if not isinstance(result, Result):
        raise TypeError(f"compare_records() takes a fragility.analysis.Result, got {type(result).__name__}")
    d = result.data
    la, lb = d["labels"]

    def pair(e: dict[str, Any], key: str) -> tuple:
        return e[f"{key}_{la}"], e[f"{key}_{lb}"]

    classes = [CompareClass(e["class"], e["overlap_train"], e["overlap_test"], *(pair(e, q) for q in PER_RUN)) for e in d["classes"]]
    return CompareRecords(list(d["labels"]), d["k"], d["rarefy_m"], classes, d["feature_overlap"], d["incomparable"], d["forced"])


#: the per-run quantities of a comparison, in CompareClass's order
PER_RUN = ("n_train", "unique", "unique_rarefied", "accuracy", "train_magnitude", "test_ratio")
