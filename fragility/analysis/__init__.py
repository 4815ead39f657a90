"""Analysis: mergeable streaming analyzers (plugins) run by a one-read engine over a store."""

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
    "Plan",
    "Result",
    "Table",
    "analyze",
    "analyze_dask",
    "check_memory",
    "compare",
    "compare_results",
    "iter_chunks",
    "jsonable",
    "last_group",
    "make_plan",
    "make_spec",
    "registry",
    "tidy_records",
    "to_frame",
]
