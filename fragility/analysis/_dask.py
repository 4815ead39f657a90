"""Run analyzers on a Dask cluster: workers fold and finish runs of whole groups, the driver merges their states.

The analyzers' ``merge`` is the reduction: each task opens the store (read-only; HDF5
files are read by many processes at once), folds its units ``(pass, start, stop)`` in order into fresh analyzer
instances, finishes its groups and returns them; the driver merges them in task order and computes. Analyzers with a reference
(``magnitude``) get two rounds: reference units first, their merged reference state is sent back out
with the main units.
"""

from __future__ import annotations

import os
from typing import Any

from ..store import Store
from ._base import Analyzer
from ._engine import Plan, make_plan
from ._results import Result


#: this worker's open stores, refreshed per task (opening validates nothing already validated, but a task
#: should not pay even that for every unit)
_STORES: dict[str, Store] = {}


def _store(path: str) -> Store:
    st = _STORES.get(path)
    if st is None:
        st = _STORES[path] = Store(path)
    else:
        st.refresh()
    return st


def _batches(units: list, rows: int) -> list[list]:
    """Consecutive units in tasks of about ``rows`` rows (at least one unit each): a store of many small
    passes is not one task per pass."""
    out: list[list] = []
    size = rows
    for u in units:
        if size + (u[2] - u[1]) > rows and out and out[-1]:
            out.append([])
            size = 0
        if not out:
            out.append([])
        out[-1].append(u)
        size += u[2] - u[1]
    return out


def _reference_task(plan: Plan, kinds: list, batch: list) -> list[list[Analyzer]]:
    st = _store(plan.path)
    return [plan.reference_part(st, unit, kinds) for unit in batch]


def _main_task(plan: Plan, kinds: list, refs: dict[str, Any], task: list) -> tuple[list[Analyzer], dict[str, dict[str, int]]]:
    return plan.main_task(_store(plan.path), refs, task, kinds)


def analyze_dask(
    store: str | os.PathLike,
    analyzers: list[str] | None = None,
    *,
    client: Any,
    unit_rows: int = 262144,
    **options: Any,
) -> dict[str, Result]:
    """Like :func:`fragility.analyze`, with the units of work spread over the workers of a Dask ``client``:
    bit-identical to :func:`fragility.analyze` with the same ``unit_rows`` and ``task_rows`` (both reduce the
    analyzer states in the same tree, :meth:`Plan.run`).

    Workers build their own plugin manager, so third-party analyzers must be installed on them too. A task is
    a run of whole groups (:meth:`Plan.tasks`), folded and — for analyzers that allow it — finished on its worker,
    so the per-group work (bootstrap intervals, moments, k-NN) runs in parallel too.

    Dask starts workers with ``MALLOC_TRIM_THRESHOLD_=65536`` by default, which turns off glibc's adaptive
    mmap threshold and made the per-group work 1.5x slower in each worker here; start the cluster without it
    (``dask.config.set({"distributed.nanny.pre-spawn-environ": {"OMP_NUM_THREADS": 1}})``) for speed.

    Args:
        store: path of the store (visible to every worker).
        client: a ``dask.distributed.Client``.
        unit_rows: rows per unit of work (the same default as :func:`fragility.analyze`).
        **options: as for :func:`fragility.analyze` (split, epoch, k, classes, …).

    Example:
        >>> from dask.distributed import Client                              # doctest: +SKIP
        >>> results = analyze_dask("run.fragility", client=Client(n_workers=4), k=10)  # doctest: +SKIP
    """
    with Store(store) as st:
        plan = make_plan(st, analyzers, unit_rows=unit_rows, **options)
    heads = plan.instances()
    kinds = [type(a) for a in heads]  # the analyzer classes travel with the tasks: no plugin scan per task

    def reference_parts(units):
        batches = _batches(units, plan.unit_rows)
        for future in client.map(_reference_task, [plan] * len(batches), [kinds] * len(batches), batches, pure=False):
            yield from future.result()
            future.release()

    def main_parts(tasks, refs):
        futures = client.map(_main_task, [plan] * len(tasks), [kinds] * len(tasks), [refs] * len(tasks), tasks, pure=False)
        for future in futures:
            yield future.result()  # in task order: whole groups, finished on the worker where the analyzer allows it
            future.release()

    return plan.finish(heads, plan.run(heads, reference_parts, main_parts))
