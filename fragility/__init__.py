"""fragility: record FE/CE of any timm backbone and analyze why models fail on minority classes.

Capture path: :class:`Recorder` (taps in :mod:`fragility.taps`, store in :mod:`fragility.store`).
Analysis: :func:`analyze` with analyzer plugins (:mod:`fragility.analysis`). Plugins:
:mod:`fragility.hookspecs`, :func:`make_plugin_manager`.
"""

from __future__ import annotations

__version__ = "0.2.0"

from .errors import (
    AnalyzerError,
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
from .taps import Head, affine_of, model_name
from .store import PassInfo, Store
from .recorder import Recorder
from .analysis import Analyzer, Result, analyze, compare

__all__ = [
    "Analyzer",
    "AnalyzerError",
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
