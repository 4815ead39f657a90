"""fragility: record FE/CE of any timm backbone and analyze why models fail on minority classes.

Capture path: :class:`Recorder` (taps in :mod:`fragility.taps`, store in :mod:`fragility.store`).
Analysis: :func:`analyze` with analyzer plugins (:mod:`fragility.analysis`). Plugins:
:mod:`fragility.hookspecs`, :func:`make_plugin_manager`.
"""

from __future__ import annotations

from ._version import __version__

from .errors import (
    AnalyzerError,
    DataError,
    FragilityError,
    HeadError,
    OutputError,
    PluginError,
    RecorderError,
    SelectionError,
    StoreError,
    StoreVersionError,
)
from .hookspecs import hookimpl
from ._manager import make_plugin_manager
from .store import PassInfo, Store

#: names imported on first use, so that store commands (``inspect``, ``verify``, ``watch``) and
#: ``import fragility`` do not load torch: name -> module
_LAZY = {
    "Head": ".taps", "affine_of": ".taps", "model_name": ".taps", "Recorder": ".recorder",
    "Analyzer": ".analysis", "Result": ".analysis", "analyze": ".analysis", "compare": ".analysis",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fragility' has no attribute {name!r}")


__all__ = [
    "Analyzer",
    "AnalyzerError",
    "DataError",
    "FragilityError",
    "Head",
    "HeadError",
    "OutputError",
    "PassInfo",
    "PluginError",
    "Recorder",
    "RecorderError",
    "Result",
    "SelectionError",
    "Store",
    "StoreError",
    "StoreVersionError",
    "__version__",
    "affine_of",
    "analyze",
    "compare",
    "hookimpl",
    "make_plugin_manager",
    "model_name",
]
