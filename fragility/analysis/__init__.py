"""Analysis: mergeable streaming analyzers (plugins) run by a one-read engine over a store.

``__all__`` holds what users and plugin authors need (pinned by a test); the engine's own pieces
(``Plan``, ``make_plan``, ``make_spec``, ``iter_chunks``, ``registry``) stay importable for the Dask runner,
the conformance harness and benchmarks, but are not part of the public API.

Names are imported from their modules on first use: importing one module of this package (``_base``, whose
``Analyzer`` the plugin registrars check against) does not import the engine, which imports the plugin
manager, which imports those registrars.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: public and engine names -> the module of this package that defines them
_WHERE = {
    "AnalysisSpec": "._base", "Analyzer": "._base", "Chunk": "._base", "Group": "._base", "check_memory": "._base",
    "compare": "._compare", "compare_results": "._compare",
    "analyze_dask": "._dask",
    "Plan": "._engine", "analyze": "._engine", "iter_chunks": "._engine", "make_plan": "._engine", "make_spec": "._engine",
    "registry": "._engine",
    "Result": "._results", "Table": "._results", "jsonable": "._results", "last_group": "._results",
    "tidy_records": "._results", "to_frame": "._results",
    "AnalyzerRegistrar": "..registrars",
}

if TYPE_CHECKING:  # pragma: no cover - what the names are, for type checkers and IDEs
    from ..registrars import AnalyzerRegistrar
    from ._base import AnalysisSpec, Analyzer, Chunk, Group, check_memory
    from ._compare import compare, compare_results
    from ._dask import analyze_dask
    from ._engine import Plan, analyze, iter_chunks, make_plan, make_spec, registry
    from ._results import Result, Table, jsonable, last_group, tidy_records, to_frame


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fragility.analysis' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))


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
