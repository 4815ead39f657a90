"""The analysis engine: one read of each needed dataset feeds every selected analyzer, chunk by chunk."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._manager import PluginManager, manager
from ..errors import AnalyzerError, FragilityError, PluginError, SelectionError, StoreError, close_matches
from .._light import TRAIN_EVAL, _progress, sound_reference_split  # noqa: F401 - re-exported
from ..store import ALL_COLUMNS, PassInfo, Store
from . import _kernels
from ._base import EMBEDDINGS, AnalysisSpec, Analyzer, Chunk, Group, check_memory
from ._results import Result
from ..registrars import AnalyzerRegistrar

DEFAULT_ANALYZERS = ("topk", "magnitude", "diversity")


def registry(plugin_manager: PluginManager | None = None) -> AnalyzerRegistrar:
    """All analyzers the loaded plugins register."""
    return manager(plugin_manager).analyzers()


def resolve_names(names: Sequence[str] | None, reg: AnalyzerRegistrar) -> list[str]:
    if not names:
        return [n for n in DEFAULT_ANALYZERS if n in reg.analyzers]
    out = []
    for n in names:
        if n not in reg.analyzers:
            raise AnalyzerError(
                f"unknown analyzer {n!r}{close_matches(n, reg.analyzers)}; available: {', '.join(sorted(reg.analyzers))}"
            )
        out.append(n)
    return list(dict.fromkeys(out))


def _group_name(p: PassInfo) -> str:
    return f"{p.split}@{p.epoch}"


def make_spec(
    store: Store,
    passes: Sequence[PassInfo],
    *,
    embedding: str = "ce",
    k: int = 10,
    tau: float = 0.0,
    reference: Sequence[PassInfo] = (),
    knn_k: int = 5,
    knn_max_rows: int = 10000,
    options: dict[str, Any] | None = None,
    check_k: bool = True,
) -> AnalysisSpec:
    """Validate the analysis parameters against the store and describe the selected groups.

    ``check_k=False`` skips the K range check (no selected analyzer uses K).
    """
    if embedding not in EMBEDDINGS:
        raise AnalyzerError(f"embedding {embedding!r} is unknown{close_matches(embedding, EMBEDDINGS)}; use ce, ce_target or fe")
    column = EMBEDDINGS[embedding]
    d = store.feature_dim
    if d == 0:
        raise AnalyzerError(f"store {store.path} holds no recorded rows yet (feature_dim unknown)")
    C = store.num_classes
    check_memory(f"store {store.path} declares {C} classes x {d} features: the analyzers' per-class state", 64 * C * d,
                 "analyze it on a machine with more memory, or check where the store came from")  # <= 8 C x D arrays
    if check_k and (not isinstance(k, (int, np.integer)) or k <= 0 or k > d):
        raise AnalyzerError(f"K={k} is out of range; K must be between 1 and the feature dimension D={d}")
    if not 0 <= tau <= 1:
        raise AnalyzerError(f"tau={tau} is a frequency floor and must lie in [0, 1]")
    if isinstance(knn_max_rows, bool) or not isinstance(knn_max_rows, (int, np.integer)) or knn_max_rows < 1:
        raise AnalyzerError(f"knn_max_rows={knn_max_rows!r} must be a positive number of rows (the k-NN sample per group)")
    for p in list(passes) + list(reference):
        if p.rows and column not in p.columns:
            how = "record with labels (rec.record(labels))" if column == "ce_target" else "re-record it"
            raise AnalyzerError(
                f"pass {p.name} ({p.label}) of {store.path} has no {column} column, which embedding={embedding!r} needs; "
                f"{how}, or choose --embedding ce or fe"
            )
    groups: dict[str, Group] = {}
    for p in passes:
        g = groups.setdefault(_group_name(p), Group(_group_name(p), p.split, p.epoch, 0))
        g.rows += p.rows
        g.approximate_bias |= bool(p.rows) and p.mode == "train" and "bias_pred" not in p.columns
        g.train_mode |= bool(p.rows) and p.mode == "train"
        if p.rows:
            try:
                g.weight, g.bias = store.classifier(p)
            except Exception:  # noqa: BLE001 - a pass killed before its snapshot: MSCS reports it
                pass
    ref_group = None
    if reference:
        p0 = reference[-1]
        ref_group = Group(_group_name(p0), p0.split, p0.epoch, sum(p.rows for p in reference))
        ref_group.weight, ref_group.bias = store.classifier(p0)
    return AnalysisSpec(
        num_classes=store.num_classes,
        class_names=store.class_names,
        feature_dim=d,
        embedding=column,
        k=int(k),
        tau=float(tau),
        groups=list(groups.values()),
        reference=ref_group,
        knn_k=knn_k,
        knn_max_rows=knn_max_rows,
        options=dict(options or {}),
    )


def _finite_rows(a: np.ndarray, n: int) -> np.ndarray:
    """Rows of ``a`` whose values are all finite (float16: an exponent of all ones is inf or NaN — a bit test,
    5x faster than ``np.isfinite`` on float16); non-float columns are all finite."""
    if a.dtype == np.float16:
        if a.ndim == 2 and (fast := _kernels.finite_rows(a)) is not None:
            return fast
        return ~((a.view(np.uint16) & 0x7C00) == 0x7C00).reshape(n, -1).any(axis=1)
    if a.dtype.kind == "f":
        return np.isfinite(a).reshape(n, -1).all(axis=1)
    return np.ones(n, dtype=bool)


def iter_chunks(
    store: Store,
    passes: Sequence[PassInfo],
    columns: set[str],
    spec: AnalysisSpec,
    *,
    chunk_rows: int = 16384,
    skipped: dict[str, dict[str, int]] | None = None,
    classes: Sequence[int] | None = None,
    correct: bool | None = None,
    span: tuple[int, int] | None = None,
) -> Iterator[Chunk]:
    """Read each needed column once, chunk by chunk; drop (and count) unlabelled rows and rows with
    non-finite values (``skipped[group] = {"nonfinite": n, "unlabelled": m}``).

    ``classes`` / ``correct`` select rows by true class and correctness; rows they drop cost only their
    ``label`` and ``pred`` reads.
    """
    ordinal = {p.name: i for i, p in enumerate(store.passes)}
    cols = sorted(set(columns) | {"label", "pred"})
    for p in passes:
        have = [c for c in cols if c in p.columns]
        rows_iter = store.iter_rows([p], have, chunk_rows=chunk_rows, classes=classes, correct=correct, positions=True, span=span)
        for _, rows in rows_iter:
            keys = (np.int64(ordinal[p.name]) << np.int64(32)) + rows.pop("row")
            labelled = rows["label"] >= 0
            finite = np.ones(len(keys), dtype=bool)
            for c in have:
                finite &= _finite_rows(rows[c], len(keys))
            chunk = Chunk(_group_name(p), rows, keys, spec)
            keep = finite & labelled
            if not keep.all():
                if skipped is not None:
                    counts = skipped.setdefault(chunk.group, {"nonfinite": 0, "unlabelled": 0})
                    counts["nonfinite"] += int((~finite).sum())
                    counts["unlabelled"] += int((finite & ~labelled).sum())
                chunk = chunk.subset(keep)
            if len(chunk):
                yield chunk


def _call(a: Analyzer, method: str, *args: Any) -> Any:
    """Call an analyzer's method; a failure inside it is one line naming the analyzer and its plugin."""
    try:
        return getattr(a, method)(*args)
    except FragilityError:
        raise
    except Exception as exc:  # noqa: BLE001 - third-party code: reported, with the cause kept for --debug
        detail = (str(exc).strip().splitlines() or [""])[0][:200]
        raise AnalyzerError(
            f"analyzer {a.name!r} (plugin module {type(a).__module__}) failed in {method}(): {type(exc).__name__}: {detail}; "
            f"fix or uninstall the plugin, or leave it out with -a"
        ) from exc


def merge_skipped(into: dict[str, dict[str, int]], other: dict[str, dict[str, int]]) -> None:
    """Add the skipped-row counts of another part of the work."""
    for g, counts in other.items():
        mine = into.setdefault(g, {"nonfinite": 0, "unlabelled": 0})
        for k, n in counts.items():
            mine[k] = mine.get(k, 0) + n


def resolve_classes(store: Store, classes: Sequence[int | str] | None) -> list[int] | None:
    """Class names or indices → indices (errors list the classes, with close matches)."""
    if classes is None:
        return None
    names = store.class_names
    out = []
    for c in classes:
        if isinstance(c, str) and c in names:
            out.append(names.index(c))
            continue
        try:
            i = int(c)
        except (TypeError, ValueError):
            i = -1
        if not 0 <= i < len(names):
            raise SelectionError(
                f"class {c!r} is not in store {store.path}{close_matches(str(c), names)}; classes: {', '.join(names)}"
            )
        out.append(i)
    return sorted(set(out))


@dataclass
class Plan:
    """A validated analysis: which analyzers, which passes, the spec. Picklable, so workers can run parts.

    Work is cut into *units* ``(pass, start, stop)``; folding any split of the units into analyzer
    instances and merging them gives the same result (the analyzers' merge contract).
    """

    path: str
    names: list[str]
    passes: list[PassInfo]
    reference: list[PassInfo]
    spec: AnalysisSpec
    classes: list[int] | None
    correct: bool | None
    chunk_rows: int
    notes: list[str] = field(default_factory=list)
    #: quarantined passes that may belong to the selection or the reference: left out, named in the notes
    damaged: list[Any] = field(default_factory=list)
    #: rows per unit of work: each unit is folded into fresh analyzers, which are merged in unit order —
    #: in one process and on a Dask cluster alike, so both give bit-identical results
    unit_rows: int = 262144
    #: rows per task of whole groups (:meth:`tasks`): small enough that a few workers get many tasks each (a task's
    #: groups are finished where it runs), large enough to amortise a task's overhead; the same in every runner
    task_rows: int = 65536

    @property
    def extra(self) -> list[PassInfo]:
        """Reference passes outside the selection (read in the main phase for the reference users only)."""
        selected = {p.name for p in self.passes}
        return [p for p in self.reference if p.name not in selected]

    def instances(self, plugin_manager: PluginManager | None = None) -> list[Analyzer]:
        reg = registry(plugin_manager)
        return [reg.analyzers[n](self.spec) for n in self.names]

    def units(self, passes: Sequence[PassInfo], rows: int | None = None) -> list[tuple[PassInfo, int, int]]:
        """``(pass, start, stop)`` of at most ``rows`` rows, group by group (each group's passes in recording
        order), so that a group is complete — and its analyzers can finish it — before the next begins,
        also where a multi-rank store lists each rank's passes in turn."""
        rows = rows or max(1, max((p.rows for p in passes), default=1))
        first: dict[str, int] = {}
        for p in passes:
            first.setdefault(_group_name(p), len(first))
        ordered = sorted(passes, key=lambda p: first[_group_name(p)])  # stable: recording order within a group
        return [(p, s, min(p.rows, s + rows)) for p in ordered for s in range(0, p.rows, rows)]

    def fold_reference(self, store: Store, instances: list[Analyzer], units, advance=lambda n: None) -> None:
        users = [a for a in instances if a.uses_reference]
        if not users:
            return
        cols = set().union(*(a.reference_columns() for a in users))
        for p, start, stop in units:
            for chunk in iter_chunks(store, [p], cols, self.spec, chunk_rows=self.chunk_rows, classes=self.classes, span=(start, stop)):
                for a in users:
                    _call(a, "update_reference", chunk)
                advance(len(chunk))

    def reference_part(self, store: Store, unit: tuple, kinds: Sequence[type] | None = None,
                       advance: Callable[[int], None] = lambda n: None) -> list[Analyzer]:
        """Fresh analyzers holding the reference rows of one unit (a task of :meth:`run`)."""
        parts = [k(self.spec) for k in kinds] if kinds is not None else self.instances()
        self.fold_reference(store, parts, [unit], advance)
        return parts

    def main_part(self, store: Store, refs: dict[str, Any], unit: tuple, kinds: Sequence[type] | None = None,
                  advance: Callable[[int], None] = lambda n: None) -> tuple[list[Analyzer], dict[str, dict[str, int]]]:
        """Fresh analyzers (with the merged reference state ``refs``) holding the rows of one unit."""
        parts = self._fresh(refs, kinds)
        skipped: dict[str, dict[str, int]] = {}
        self.fold_main(store, parts, [unit], skipped, advance)
        return parts, skipped

    def _fresh(self, refs: dict[str, Any], kinds: Sequence[type] | None = None) -> list[Analyzer]:
        """New analyzers holding the merged reference state ``refs``."""
        parts = [k(self.spec) for k in kinds] if kinds is not None else self.instances()
        for a in parts:
            if a.uses_reference:
                a.ref = refs[a.name]
                _call(a, "end_reference")
        return parts

    def tasks(self, units: list) -> list[list]:
        """The main units in tasks of whole groups, consecutive, of about ``task_rows`` rows (at least one group
        each): a task finishes its groups itself (:attr:`Analyzer.finish_in_parts`). It depends on the units only,
        so :func:`analyze` and :func:`analyze_dask` reduce in the same tree."""
        out: list[list] = []
        size = self.task_rows
        for i, u in enumerate(units):
            new_group = i == 0 or _group_name(u[0]) != _group_name(units[i - 1][0])
            if new_group and size >= self.task_rows:
                out.append([])
                size = 0
            out[-1].append(u)
            size += u[2] - u[1]
        return out

    def main_task(self, store: Store, refs: dict[str, Any], units: list, kinds: Sequence[type] | None = None,
                  advance: Callable[[int], None] = lambda n: None) -> tuple[list[Analyzer], dict[str, dict[str, int]]]:
        """One task of :meth:`run`: its units' parts merged in unit order, each of its groups finished (by the
        analyzers that finish in parts) after its last unit."""
        acc = self._fresh(refs, kinds)  # merged into like the final analyzers: each unit's state is copied in
        skipped: dict[str, dict[str, int]] = {}
        ends = self.group_ends(units)
        for i, unit in enumerate(units):
            parts, part_skipped = self.main_part(store, refs, unit, kinds, advance)
            for a, part in zip(acc, parts):
                a.merge(part)
            merge_skipped(skipped, part_skipped)
            for g in ends.get(i, []):
                for a in acc:
                    if a.finish_in_parts:
                        _call(a, "finish_group", g)
        return acc, skipped

    def run(self, heads: list[Analyzer], reference_parts: Callable[[list], Iterator[list[Analyzer]]],
            main_parts: Callable[[list, dict], Iterator[tuple[list[Analyzer], dict]]]) -> dict[str, dict[str, int]]:
        """The reduction: the reference units' parts merged into ``heads`` in unit order, then the main
        tasks' parts (:meth:`tasks`, :meth:`main_task`) in task order, each group finished after its last unit.
        ``reference_parts(units)`` and ``main_parts(tasks, refs)`` yield the parts in order — computed here
        (:func:`analyze`) or on workers (:func:`analyze_dask`): the same float operations in the same order, so
        the same bits."""
        if any(a.uses_reference for a in heads):
            for parts in reference_parts(self.units(self.reference, rows=self.unit_rows)):
                for head, part in zip(heads, parts):
                    if head.uses_reference:
                        head.merge_reference(part)
            for a in heads:
                if a.uses_reference:
                    _call(a, "end_reference")
        refs = {a.name: a.ref for a in heads if a.uses_reference}
        tasks = self.tasks(self.units(self.passes + self.extra, rows=self.unit_rows))
        skipped: dict[str, dict[str, int]] = {}
        for task, (parts, part_skipped) in zip(tasks, main_parts(tasks, refs)):
            ends = [g for gs in self.group_ends(task).values() for g in gs]
            for head, part in zip(heads, parts):
                head.merge(part)
                if not head.finish_in_parts:
                    for g in ends:
                        _call(head, "finish_group", g)
            merge_skipped(skipped, part_skipped)
        return skipped

    @staticmethod
    def group_ends(units) -> dict[int, list[str]]:
        """Unit index -> the groups whose last unit it is (their analyzers' :meth:`Analyzer.finish_group`)."""
        last = {_group_name(p): i for i, (p, _, _) in enumerate(units)}
        ends: dict[int, list[str]] = {}
        for g, i in last.items():
            ends.setdefault(i, []).append(g)
        return ends

    def fold_main(self, store: Store, instances: list[Analyzer], units, skipped: dict[str, dict[str, int]], advance=lambda n: None) -> None:
        """Fold the selected rows into every analyzer, and the reference rows into those that use one.

        Reference rows are all rows of the reference passes (never filtered by ``correct``): analyzers
        measure them again against what :meth:`Analyzer.end_reference` derived (e.g. the training
        distribution at the training top-K). A pass that is both is read once, unless ``correct`` filters
        the selection.
        """
        cols = set().union(*(a.columns() for a in instances))
        main = {p.name for p in self.passes}
        users = [a for a in instances if a.uses_reference]
        ref_names = {p.name for p in self.reference} if users else set()
        ref_cols = set().union(*(a.reference_columns() for a in users)) if users else set()
        for p, start, stop in units:
            selected, as_ref = p.name in main, p.name in ref_names
            if selected and as_ref and self.correct is not None:
                self._fold(store, p, (start, stop), ref_cols, [], users, None, None, advance)
                as_ref = False
            self._fold(
                store, p, (start, stop), (cols if selected else set()) | (ref_cols if as_ref else set()),
                instances if selected else [], users if as_ref else [], skipped if selected else None,
                self.correct if selected else None, advance,
            )

    def _fold(self, store, p, span, cols, update, reference, skipped, correct, advance) -> None:
        for chunk in iter_chunks(store, [p], cols, self.spec, chunk_rows=self.chunk_rows, skipped=skipped,
                                 classes=self.classes, correct=correct, span=span):
            for a in reference:
                _call(a, "update_reference_rows", chunk)
            for a in update:
                _call(a, "update", chunk)
            advance(len(chunk))

    def finish(self, instances: list[Analyzer], skipped: dict[str, dict[str, int]]) -> dict[str, Result]:
        results = {}
        for a in instances:
            r = _call(a, "compute")
            if not isinstance(r, Result):
                raise AnalyzerError(f"analyzer {a.name!r} ({type(a).__module__}) returned {type(r).__name__} from compute(), not a Result; fix the plugin")
            if self.classes is not None or self.correct is not None:
                what = [] if self.classes is None else [f"classes {', '.join(self.spec.class_names[c] for c in self.classes)}"]
                what += [] if self.correct is None else ["correctly classified rows" if self.correct else "misclassified rows"]
                r.notes.append("selection: only " + " and ".join(what))
            for g, counts in sorted(skipped.items()):
                if counts["nonfinite"]:
                    r.notes.append(f"{counts['nonfinite']} rows of {g} with non-finite values were skipped")
                if counts["unlabelled"]:
                    r.notes.append(f"{counts['unlabelled']} rows of {g} without a label were skipped (per-class quantities need labels)")
            r.skipped = {g: dict(counts) for g, counts in sorted(skipped.items())}  # beside the analyzer's data, never in it
            r.notes.extend(self.notes)
            results[a.name] = r
        return results


def make_plan(
    store: Store,
    analyzers: Sequence[str] | None = None,
    *,
    split: str | Sequence[str] | None = None,
    epoch: int | str | Sequence[int] | None = None,
    passes: Sequence[str] | None = None,
    embedding: str = "ce",
    k: int = 10,
    tau: float = 0.0,
    classes: Sequence[int | str] | None = None,
    correct: bool | None = None,
    reference_split: str | None = None,
    reference_epoch: int | str = "last",
    chunk_rows: int = 16384,
    knn_k: int = 5,
    knn_max_rows: int = 10000,
    plugin_manager: PluginManager | None = None,
    options: dict[str, Any] | None = None,
    unit_rows: int = 262144,
    task_rows: int = 65536,
) -> Plan:
    """Validate an analysis request against a store (see :func:`analyze` for the arguments)."""
    reg = registry(plugin_manager)
    names = resolve_names(analyzers, reg)
    chosen = [p for p in store.select(split=split, epoch=epoch) if p.rows]
    if passes is not None:
        named = {store.pass_info(n).name for n in passes}  # unknown names: SelectionError with close matches
        chosen = [p for p in chosen if p.name in named]
    passes_sel = chosen
    notes: list[str] = [
        f"pass {old} (incomplete) was recorded again as {new} (training resumed): left out, so no row counts twice"
        for old, new in store.superseded.items() if new in {p.name for p in chosen}
    ]
    damaged = [] if passes is not None else store.damaged_in(split, epoch)
    class_ids = resolve_classes(store, classes)
    if not passes_sel:
        left = f"; damaged and left out: {', '.join(d.name for d in damaged)} (see `fragility inspect`, `fragility repair`)" if damaged else ""
        raise AnalyzerError(f"the selection (split={split!r}, epoch={epoch!r}, passes={passes!r}) of {store.path} holds no rows{left}")
    users = [n for n in names if reg.analyzers[n].uses_reference]
    reference: list[PassInfo] = []
    if reference_split is None:  # the sound reference when the store has it: an eval sweep of the training split
        reference_split = sound_reference_split(store.passes)
    if users:
        problem = None
        try:
            reference = [p for p in store.select(split=reference_split, epoch=reference_epoch) if p.rows]
            damaged += [d for d in store.damaged_in(reference_split, reference_epoch) if d not in damaged]
            if not reference:
                problem = f"the reference selection (split={reference_split!r}) of {store.path} holds no rows"
        except Exception as exc:  # noqa: BLE001 - reworded for the analyzer's point of view
            problem = (
                f"{', '.join(users)} needs reference rows (split={reference_split!r}, epoch={reference_epoch!r}) "
                f"but: {exc}; pass reference_split/--reference-split"
            )
        if reference and all(p.mode == "train" for p in reference):
            r = reference[-1]
            notes.append(
                f"{', '.join(users)}: the reference {r.split}@{r.epoch} was recorded in train mode (dropout, batch statistics, "
                f"weights moving within the pass), so test/train magnitudes compare two different models; record an eval "
                f"sweep of the training split (rec.evaluate(train_loader, split={TRAIN_EVAL!r})) and it becomes the reference"
            )
        if problem and analyzers:  # asked for by name: an error
            raise AnalyzerError(problem)
        if problem:  # the default set: run the others and say why one is missing
            names = [n for n in names if n not in users]
            notes.append(f"{', '.join(users)} skipped: no reference rows (split {reference_split!r})")
            reference = []
    if chunk_rows < 1:
        raise AnalyzerError(f"chunk_rows={chunk_rows} must be a positive number of rows")
    spec = make_spec(
        store, passes_sel, embedding=embedding, k=k, tau=tau, reference=reference, knn_k=knn_k,
        knn_max_rows=knn_max_rows, options=options, check_k=any(reg.analyzers[n].uses_k for n in names),
    )
    for n in names:  # a misspelled column would otherwise just be missing from every chunk
        a = reg.analyzers[n](spec)
        wanted = set(a.columns()) | (set(a.reference_columns()) if a.uses_reference else set())
        for c in sorted(wanted - set(ALL_COLUMNS)):
            raise AnalyzerError(
                f"analyzer {n!r} ({reg.owners[n]}) asks for column {c!r}, which stores do not have{close_matches(c, ALL_COLUMNS)}; "
                f"columns: {', '.join(ALL_COLUMNS)}"
            )
    notes += [f"pass {d.name} ({d.label}) is damaged and was left out: {d.reason}" for d in damaged]
    for what, rows in (("unit_rows", unit_rows), ("task_rows", task_rows)):
        if isinstance(rows, bool) or not isinstance(rows, (int, np.integer)) or rows < 1:
            raise AnalyzerError(f"{what}={rows!r} must be a positive number of rows (rows per {what[:4]} of work)")
    return Plan(store.path, names, passes_sel, reference, spec, class_ids, correct, chunk_rows, notes, damaged, int(unit_rows),
                int(task_rows))


def analyze(
    store: Store | str | os.PathLike,
    analyzers: Sequence[str] | None = None,
    *,
    progress: bool = False,
    verify: bool = False,
    plugin_manager: PluginManager | None = None,
    **options: Any,
) -> dict[str, Result]:
    """Run analyzers over a store in one read of each dataset they need.

    Args:
        store: a :class:`fragility.Store` or its path.
        analyzers: names (default: ``topk``, ``magnitude``, ``diversity``); third-party names work too.
        split, epoch: which passes to analyze (``epoch="last"`` for each split's last epoch).
        passes: only these passes, by name (``"0003"``; ``"r1/0003"`` in a multi-rank store).
        classes: only rows of these true classes (names or indices); also applied to the reference rows.
        correct: only correctly classified (``True``) or misclassified (``False``) rows (main pass only:
            the reference — e.g. the training top-K — is taken from all its rows).
        embedding: ``"ce"`` (CE of the predicted class), ``"ce_target"`` or ``"fe"``.
        k: top-K size. tau: frequency floor for ``unique_c(tau)``.
        reference_split, reference_epoch: the reference pass of analyzers that need one (magnitude); by
            default ``"train_eval"`` (an eval sweep of the training split) when the store holds one, else
            ``"train"`` — with a note when that pass was recorded in train mode.
        chunk_rows: rows per read; results do not depend on it.
        unit_rows, task_rows: rows per unit of work (folded into fresh analyzers) and per task (a run of whole
            groups whose units are merged in order; :func:`analyze_dask` sends one to a worker). The reduction
            follows them; the built-in analyzers give the same bits for any task_rows.
        knn_k, knn_max_rows: k-NN archetypes (diversity); groups above the cap are sampled.
        progress: show a progress bar on stderr.
        verify: strict: first check the rows to analyze against the writer's checksums (one more read);
            corrupt blocks, and damaged pass files that may belong to the selection, raise
            :class:`StoreError` naming them. Without it damaged passes are left out with a note.

    Returns:
        ``{name: Result}``.

    Example:
        >>> results = analyze("run.fragility", ["topk"], split="test", k=5)  # doctest: +SKIP
        >>> results["topk"].table("test@2")                                  # doctest: +SKIP
    """
    own = not isinstance(store, Store)
    st = Store(store) if own else store
    plugin_manager = manager(plugin_manager)  # one per call: the plan and the analyzers come from the same registry
    try:
        plan = make_plan(st, analyzers, plugin_manager=plugin_manager, **options)
        if verify and plan.damaged:
            d = plan.damaged[0]
            more = f" and {len(plan.damaged) - 1} more" if len(plan.damaged) > 1 else ""
            raise StoreError(
                f"store {st.path}: pass {d.name} ({d.label}){more} of the selection is damaged, and verify asks for every "
                f"selected row; run `fragility repair {st.path}`, or analyze without verify to use the intact passes"
            )
        if verify:
            corrupt = [f for f in st.verify(plan.passes + plan.extra) if f["problem"] == "corrupt"]
            if corrupt:
                where = ", ".join(f"pass {f['pass']} ({f['group']}) rows {f['start']}:{f['stop']}" for f in corrupt[:3])
                more = f" and {len(corrupt) - 3} more" if len(corrupt) > 3 else ""
                raise StoreError(f"store {st.path} is corrupt: {where}{more} fail their checksums; re-record those passes or restore a copy")
        instances = plan.instances(plugin_manager)
        kinds = [type(a) for a in instances]
        uses_ref = any(a.uses_reference for a in instances)
        total = sum(p.rows for p in plan.passes) + (sum(p.rows for p in plan.reference) + sum(p.rows for p in plan.extra)) * uses_ref
        with _progress(progress, total) as advance:

            def reference_parts(units):
                for unit in units:
                    yield plan.reference_part(st, unit, kinds, advance)

            def main_parts(tasks, refs):
                for task in tasks:
                    yield plan.main_task(st, refs, task, kinds, advance)

            skipped = plan.run(instances, reference_parts, main_parts)
        return plan.finish(instances, skipped)
    finally:
        if own:
            st.close()
