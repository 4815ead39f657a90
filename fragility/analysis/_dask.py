"""Run analyzers on a Dask cluster: workers fold row ranges, the driver merges their states.

The analyzers' ``merge`` is the reduction: each task opens the store (read-only; HDF5
files are read by many processes at once), folds one unit ``(pass, start, stop)`` into fresh analyzer
instances and returns them; the driver merges them in unit order and computes. Analyzers with a reference
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


def _main_task(plan: Plan, kinds: list, refs: dict[str, Any], batch: list) -> list[tuple[list[Analyzer], dict[str, dict[str, int]]]]:
    st = _store(plan.path)
    return [plan.main_part(st, refs, unit, kinds) for unit in batch]


def analyze_dask(
    store: str | os.PathLike,
    analyzers: list[str] | None = None,
    *,
    client: Any,
    unit_rows: int = 262144,
    **options: Any,
) -> dict[str, Result]:
    """Like :func:`fragility.analyze`, with the units of work spread over the workers of a Dask ``client``:
    bit-identical to :func:`fragility.analyze` with the same ``unit_rows`` (both merge the units' analyzer
    states in unit order, :meth:`Plan.run`).

    Workers build their own plugin manager, so third-party analyzers must be installed on them too.

    Args:
        store: path of the store (visible to every worker).
        client: a ``dask.distributed.Client``.
        unit_rows: rows per task (the same default as :func:`fragility.analyze`).
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

    def main_parts(units, refs):
        batches = _batches(units, plan.unit_rows)
        futures = client.map(_main_task, [plan] * len(batches), [kinds] * len(batches), [refs] * len(batches), batches, pure=False)
        for future in futures:
            yield from future.result()  # in unit order, one task at a time: the driver holds the open groups only
            future.release()

    return plan.finish(heads, plan.run(heads, reference_parts, main_parts))
