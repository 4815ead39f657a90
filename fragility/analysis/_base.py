"""The Analyzer base (shaped like a torchmetrics Metric), the analysis spec, and row chunks."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..errors import AnalyzerError
from ._maths import as_float32
from ._results import Result

EMBEDDINGS = {"ce": "ce_pred", "ce_pred": "ce_pred", "ce_target": "ce_target", "fe": "fe"}


def physical_memory() -> int | None:
    """Bytes of physical memory of this machine, or ``None`` where the system does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def check_memory(what: str, need: int, fix: str) -> None:
    """Refuse, in one line naming ``fix``, state that would take more than half of this machine's memory
    (a store is untrusted input: its declared sizes must not make a reader allocate without bound)."""
    have = physical_memory()
    if have and need > have // 2:
        raise AnalyzerError(f"{what} needs {need / 2**30:.1f} GiB, more than half of this machine's {have / 2**30:.1f} GiB; {fix}")


@dataclass
class Group:
    """Rows of one split at one epoch (one or more passes)."""

    name: str
    split: str
    epoch: int
    rows: int
    bias: np.ndarray | None = None
    weight: np.ndarray | None = None
    #: a training pass of the group lacks per-row ``bias_pred`` (schema-1 store): its ``b[pred]`` comes
    #: from the end-of-pass snapshot, which is not the bias every row was computed with
    approximate_bias: bool = False
    #: a pass of the group ran in train mode: its weights may have moved between rows, so the end-of-pass
    #: classifier snapshot is not the one every row was computed with
    train_mode: bool = False

    def bias_pred(self, chunk: Chunk) -> np.ndarray | None:
        """Each row's ``b[pred]`` in its own forward (the snapshot's for schema-1 stores; ``None`` if unknown)."""
        if "bias_pred" in chunk.rows:
            return chunk["bias_pred"].astype(np.float64)
        return None if self.bias is None else np.asarray(self.bias, dtype=np.float64)[chunk["pred"]]


@dataclass
class AnalysisSpec:
    """Everything an analyzer needs to know besides the rows.

    Attributes:
        num_classes, class_names, feature_dim: from the store.
        embedding: the column analysed as ``v`` (``ce_pred`` by default, ``ce_target`` or ``fe``).
        k: top-K size; tau: frequency floor for ``unique_c(tau)``.
        groups: the selected groups in recording order; reference: the reference group (or ``None``).
        knn_k, knn_max_rows: k-NN neighbours and the per-group row cap above which rows are sampled.
    """

    num_classes: int
    class_names: list[str]
    feature_dim: int
    embedding: str = "ce_pred"
    k: int = 10
    tau: float = 0.0
    groups: list[Group] = field(default_factory=list)
    reference: Group | None = None
    knn_k: int = 5
    knn_max_rows: int = 10000
    options: dict[str, Any] = field(default_factory=dict)

    def group(self, name: str) -> Group:
        for g in self.groups:
            if g.name == name:
                return g
        if self.reference is not None and self.reference.name == name:
            return self.reference
        raise KeyError(name)


class Chunk:
    """A block of rows of one group, with lazily computed quantities shared by all analyzers (``cached``;
    :func:`fragility.functional.chunk_topk_mask` and :func:`~fragility.functional.chunk_topk_sums` share
    the top-K work of a chunk through it).

    Attributes:
        group: the group's name (``"test@2"``).
        rows: column name → array (non-finite rows already removed).
        keys: a unique, order-defining id per row (pass ordinal and row number), for deterministic sampling.
    """

    def __init__(self, group: str, rows: dict[str, np.ndarray], keys: np.ndarray, spec: AnalysisSpec) -> None:
        self.group = group
        self.rows = rows
        self.keys = keys
        self.spec = spec
        self._cache: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, column: str) -> np.ndarray:
        return self.rows[column]

    def is_cached(self, key: str) -> bool:
        """Whether :meth:`cached` already holds a value under ``key``."""
        return key in self._cache

    def cached(self, key: str, fn: Callable[[], Any]) -> Any:
        """The value under ``key``, computed by ``fn()`` on the first call for this chunk."""
        if key not in self._cache:
            self._cache[key] = fn()
        return self._cache[key]

    @property
    def labels(self) -> np.ndarray:
        return self.rows["label"]

    @property
    def correct(self) -> np.ndarray:
        return self.cached("correct", lambda: self.rows["label"] == self.rows["pred"])

    @property
    def v(self) -> np.ndarray:
        """The analysed embedding as float32."""
        return self.cached("v", lambda: as_float32(self.rows[self.spec.embedding]))

    def subset(self, mask: np.ndarray) -> Chunk:
        return Chunk(self.group, {k: v[mask] for k, v in self.rows.items()}, self.keys[mask], self.spec)


class Analyzer:
    """Base class of analyzers: declared state, ``update`` / ``merge`` / ``compute`` / ``reset``.

    Subclasses declare ``states`` (per group) and ``reference_states`` as ``{name: reduction}`` with
    reduction ``"sum"`` (elementwise sum) or ``"cat"`` (arrays concatenated, then ordered by row key), and
    implement :meth:`update` and :meth:`compute`. Merging two analyzers is then generic: the same
    reduction over their states — which is what lets the engine split rows across chunks, processes,
    DDP ranks or Dask workers.

    Example:
        >>> class RowCount(Analyzer):
        ...     name = "rows"
        ...     states = {"n": "sum"}
        ...     def columns(self): return {"label"}
        ...     def update(self, chunk):
        ...         self.accumulate(chunk.group, "n", np.bincount(chunk.labels, minlength=self.spec.num_classes))
        ...     def compute(self):
        ...         return Result(self.name, data={g: s["n"] for g, s in self.state.items()})
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    states: ClassVar[dict[str, str]] = {}
    reference_states: ClassVar[dict[str, str]] = {}
    uses_reference: ClassVar[bool] = False
    #: whether the analyzer uses ``spec.k`` (K is validated against D only when one selected analyzer does)
    uses_k: ClassVar[bool] = False
    #: whether :meth:`finish_group` may run on a part (a task's analyzer holding whole groups — on a Dask worker,
    #: in parallel) whose :meth:`merge` then carries what it produced into the result; otherwise it runs on the
    #: merged analyzer only
    finish_in_parts: ClassVar[bool] = False

    def __init__(self, spec: AnalysisSpec) -> None:
        self.spec = spec
        self.reset()

    # -------------------------------------------------------------- to implement
    def columns(self) -> set[str]:
        """Columns the main pass needs."""
        raise NotImplementedError

    def reference_columns(self) -> set[str]:
        """Columns the reference pass needs (only if ``uses_reference``)."""
        return set()

    def update(self, chunk: Chunk) -> None:
        raise NotImplementedError

    def update_reference(self, chunk: Chunk) -> None:
        """Fold a chunk of the reference group (e.g. the final training epoch)."""

    def end_reference(self) -> None:
        """Called once after every reference chunk was folded, before the main pass."""

    def update_reference_rows(self, chunk: Chunk) -> None:
        """Fold a chunk of the reference rows once more, after :meth:`end_reference` (main phase).

        Every reference row comes here (a ``correct`` selection never filters the reference), so an
        analyzer can measure the reference rows against what it derived from them — e.g. each training
        row's magnitude at the training top-K. Accumulate into ``self.state`` (merged like any group).
        """

    def finish_group(self, group: str) -> None:
        """Called once no more rows of ``group`` will come to :meth:`update` (the engine folds the groups
        one after another): an analyzer whose per-group state is large can reduce it here to what
        :meth:`compute` needs, so that memory stays flat in the number of groups. Default: keep it all."""

    def compute(self) -> Result:
        raise NotImplementedError

    # -------------------------------------------------------------- state handling
    def reset(self) -> None:
        """Drop all state (main and reference)."""
        self.state: dict[str, dict[str, Any]] = {}
        self.ref: dict[str, Any] = {}

    def accumulate(self, group: str, name: str, value: Any) -> None:
        """Fold ``value`` into per-group state ``name`` with its declared reduction."""
        _fold(self.state.setdefault(group, {}), name, value, self.states)

    def accumulate_reference(self, name: str, value: Any) -> None:
        _fold(self.ref, name, value, self.reference_states)

    def merge(self, other: Analyzer) -> Analyzer:
        """Fold another analyzer's main state (same class, same spec) into this one; returns ``self``."""
        self._check_same(other)
        for group, st in other.state.items():
            mine = self.state.setdefault(group, {})
            for name, value in st.items():
                _fold(mine, name, value, self.states)
        return self

    def merge_reference(self, other: Analyzer) -> Analyzer:
        """Fold another analyzer's reference state into this one (before :meth:`end_reference`)."""
        self._check_same(other)
        for name, value in other.ref.items():
            _fold(self.ref, name, value, self.reference_states)
        return self

    def _check_same(self, other: Analyzer) -> None:
        if type(other) is not type(self):
            raise AnalyzerError(f"cannot merge {type(other).__name__} into {type(self).__name__}")

    def gathered(self, group: str, name: str) -> Any:
        """A ``cat`` state as one array (ordered by the row keys in state ``"keys"``), or ``sum`` state."""
        st = self.state.get(group, {})
        value = st.get(name)
        if self.states.get(name) != "cat":
            return value
        if value is None:
            return None
        return _ordered(st, name)


def _fold(store: dict[str, Any], name: str, value: Any, declared: dict[str, str]) -> None:
    how = declared.get(name)
    if how is None:
        raise AnalyzerError(f"state {name!r} is not declared; add it to the analyzer's states")
    if how == "sum":
        mine = store.get(name)
        if mine is None:  # a copy: the value may be shared (e.g. a chunk's cached kernel results)
            store[name] = np.array(value, copy=True) if isinstance(value, np.ndarray) else value
        elif isinstance(mine, np.ndarray) and np.shape(value) == mine.shape and np.result_type(mine, value) == mine.dtype:
            np.add(mine, value, out=mine)  # in place: per-class D x D moments are 21 MB per chunk at C=10, D=512
        else:
            store[name] = mine + value
    elif how == "cat":
        parts = value if isinstance(value, list) else [value]
        store.setdefault(name, []).extend(parts)
    else:
        raise AnalyzerError(f"state {name!r} has unknown reduction {how!r}; use 'sum' or 'cat'")


def _ordered(st: dict[str, Any], name: str) -> np.ndarray:
    values = st[name]
    arr = np.concatenate(values) if values else np.zeros(0)
    if "keys" in st and name != "keys":
        keys = np.concatenate(st["keys"])
        return arr if _increasing(keys) else arr[np.argsort(keys, kind="stable")]
    if name == "keys":
        return arr if _increasing(arr) else np.sort(arr)
    return arr


def _increasing(keys: np.ndarray) -> bool:
    """Whether the row keys are already in order (chunks folded in recording order: no sort needed)."""
    return bool(len(keys) < 2 or (keys[1:] > keys[:-1]).all())
