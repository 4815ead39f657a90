"""Analysis: mergeable streaming analyzers (plugins) run by a one-read engine over a store."""

from ._base import AnalysisSpec, Analyzer, Chunk, Group
from ._compare import compare
from ._engine import AnalyzerRegistrar, analyze, iter_chunks, make_spec, registry
from ._results import Result, Table, jsonable

__all__ = [
    "AnalysisSpec",
    "Analyzer",
    "AnalyzerRegistrar",
    "Chunk",
    "Group",
    "Result",
    "Table",
    "analyze",
    "compare",
    "iter_chunks",
    "jsonable",
    "make_spec",
    "registry",
]
