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
from ._engine import Plan, _call, make_plan, merge_skipped
from ._results import Result


def _reference_task(plan: Plan, unit: tuple) -> list[Analyzer]:
    instances = plan.instances()
    with Store(plan.path) as store:
        plan.fold_reference(store, instances, [unit])
    return instances


def _main_task(plan: Plan, refs: dict[str, dict], unit: tuple) -> tuple[list[Analyzer], dict[str, dict[str, int]]]:
    instances = plan.instances()
    for a in instances:
        if a.uses_reference:
            a.ref = refs[a.name]
            a.end_reference()
    skipped: dict[str, dict[str, int]] = {}
    with Store(plan.path) as store:
        plan.fold_main(store, instances, [unit], skipped)
    return instances, skipped


def analyze_dask(
    store: str | os.PathLike,
    analyzers: list[str] | None = None,
    *,
    client: Any,
    unit_rows: int = 262144,
    **options: Any,
) -> dict[str, Result]:
    """Like :func:`fragility.analyze`, with the rows spread over the workers of a Dask ``client``.

    Workers build their own plugin manager, so third-party analyzers must be installed on them too.

    Args:
        store: path of the store (visible to every worker).
        client: a ``dask.distributed.Client``.
        unit_rows: rows per task.
        **options: as for :func:`fragility.analyze` (split, epoch, k, classes, …).

    Example:
        >>> from dask.distributed import Client                              # doctest: +SKIP
        >>> results = analyze_dask("run.fragility", client=Client(n_workers=4), k=10)  # doctest: +SKIP
    """
    with Store(store) as st:
        plan = make_plan(st, analyzers, **options)
    heads = plan.instances()
    if any(a.uses_reference for a in heads):
        ref_units = plan.units(plan.reference, rows=unit_rows)
        for parts in client.gather(client.map(_reference_task, [plan] * len(ref_units), ref_units, pure=False)):
            for head, part in zip(heads, parts):
                if head.uses_reference:
                    head.merge_reference(part)
    refs = {a.name: a.ref for a in heads if a.uses_reference}
    for a in heads:
        if a.uses_reference:
            a.end_reference()
    units = plan.units(plan.passes + plan.extra, rows=unit_rows)
    skipped: dict[str, dict[str, int]] = {}
    futures = client.map(_main_task, [plan] * len(units), [refs] * len(units), units, pure=False)
    ends = plan.group_ends(units)
    for i, future in enumerate(futures):  # in unit order, one at a time: the driver holds the open groups only
        parts, part_skipped = future.result()
        future.release()
        for head, part in zip(heads, parts):
            head.merge(part)
            for g in ends.get(i, []):
                _call(head, "finish_group", g)
        merge_skipped(skipped, part_skipped)
    return plan.finish(heads, skipped)
