"""Analysis: mergeable streaming analyzers (plugins) run by a one-read engine over a store.

``__all__`` holds what users and plugin authors need (pinned by a test); the engine's own pieces
(``Plan``, ``make_plan``, ``make_spec``, ``iter_chunks``, ``registry``) stay importable for the Dask runner,
the conformance harness and benchmarks, but are not part of the public API."""

from ._base import AnalysisSpec, Analyzer, Chunk, Group, check_memory
from ._compare import compare, compare_results
from ._dask import analyze_dask
from ._engine import AnalyzerRegistrar, Plan, analyze, iter_chunks, make_plan, make_spec, registry
from ._results import Result, Table, jsonable, last_group, tidy_records, to_frame

__all__ = [
    "AnalysisSpec",
    "Analyzer",
    "AnalyzerRegistrar",
    "Chunk",
    "Group",
    "Result",
    "Table",
    "analyze",
    "analyze_dask",
    "check_memory",
    "compare",
    "compare_results",
    "jsonable",
    "last_group",
    "tidy_records",
    "to_frame",
]
