"""Hook specifications of fragility, read like pytest's ``hookspec.py``.

Every hook is prefixed ``fragility_``. Callers always pass keyword arguments. Hooks sit at the seams
(which head a model gets, which analyzers and report sections exist, lifecycle events), never on the
per-tensor hot path: at most one call per recorded batch.

A plugin is any object or module with functions named like these hooks, decorated with
:data:`fragility.hookimpl`; third parties are discovered from the ``fragility`` entry-point group.
"""

from __future__ import annotations

import importlib
from typing import Any

import pluggy

from .registrars import AnalyzerRegistrar, ReportSectionRegistrar


class _Deferred:
    """A module imported when one of its attributes is first read. The specs' annotations name ``nn.Module``
    and ``taps.Head`` through it, so ``typing.get_type_hints`` resolves them to the real classes while importing
    this module — which every store command does — loads no torch."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)


nn = _Deferred("torch.nn")
taps = _Deferred("fragility.taps")

PROJECT = "fragility"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# -------------------------------------------------------------------------------------------------
# Taps: which classifier head of a model is recorded
# -------------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def fragility_resolve_head(model: nn.Module, classifier: Any) -> taps.Head | None:
    """Find the final affine layer(s) of ``model``'s head so their input (FE) and weights can be tapped.

    Called once when a :class:`fragility.Recorder` attaches to a model. The returned :class:`fragility.Head`
    taps ``nn.Linear`` / dense 1×1 ``nn.Conv2d`` layers whose outputs, averaged, are the logits; the
    recorder checks that on the first batch of every pass against the model's own logits and refuses the
    head (``HeadError``) if the map is not exact.

    Args:
        model: the model being recorded.
        classifier: what the user passed as ``classifier=`` (a module, a tuple of modules, or
            ``None`` to let the plugins find it).

    Returns:
        A :class:`fragility.Head`, or ``None`` if this plugin does not know the model.

    Combination: ``firstresult`` — stops at the first non-``None`` result. The built-in timm
    implementation is registered ``trylast``, so any third-party plugin can teach fragility a new
    model family or override it.
    """


# -------------------------------------------------------------------------------------------------
# Registration: analyzers and report sections
# -------------------------------------------------------------------------------------------------


@hookspec
def fragility_register_analyzers(registrar: AnalyzerRegistrar) -> None:
    """Register analyzer classes by calling ``registrar.add(name, cls, description=...)``.

    Called once when an analysis engine is built from a plugin manager.

    Args:
        registrar: validates each registration; registering a name twice raises
            :class:`fragility.PluginError` naming both owners.

    Returns:
        Nothing. Combination: every implementation is called.
    """


@hookspec
def fragility_register_report_sections(registrar: ReportSectionRegistrar) -> None:
    """Register HTML report sections by calling ``registrar.add(name, func, order=...)``.

    Called once per report. ``func(context)`` returns a list of figures/tables for the section.

    Args:
        registrar: validates each registration (duplicate names name both owners).

    Returns:
        Nothing. Combination: every implementation is called.
    """


# -------------------------------------------------------------------------------------------------
# Lifecycle events (start/end pairs)
# -------------------------------------------------------------------------------------------------


@hookspec
def fragility_recording_start(store_path: str, model: nn.Module, metadata: dict) -> None:
    """Called when a recorder opens its store, before any pass starts.

    Args:
        store_path: path of the store being written.
        model: the recorded model.
        metadata: the root metadata written to the store (model name, classes, …).

    Returns:
        Nothing. Combination: every implementation is called.
    """


@hookspec
def fragility_recording_end(store_path: str, summary: dict) -> None:
    """Called when a recorder closes, after every row was flushed.

    Args:
        store_path: path of the store.
        summary: ``{"passes": int, "rows": int, "nonfinite_rows": int}``.

    Returns:
        Nothing. Combination: every implementation is called.
    """


@hookspec
def fragility_pass_start(pass_info: dict) -> None:
    """Called when a pass (a training epoch or an eval sweep) starts.

    Args:
        pass_info: ``{"name", "split", "epoch", "mode", "rank"}``.

    Returns:
        Nothing. Combination: every implementation is called.
    """


@hookspec
def fragility_pass_end(pass_info: dict) -> None:
    """Called when a pass ends, once its rows are committed to the store (so the pass can be read).

    Args:
        pass_info: as for :func:`fragility_pass_start`, plus ``"rows"`` and ``"store"`` (the store's path).

    Returns:
        Nothing. Combination: every implementation is called.
    """


@hookspec
def fragility_batch_recorded(pass_info: dict, batch: dict) -> None:
    """Called once per recorded batch, after its rows were queued for writing.

    Args:
        pass_info: the current pass, as for :func:`fragility_pass_start`.
        batch: the batch's columns as tensors still on the model's device
            (``fe``, ``ce_pred``, ``logits``, ``pred``, ``label`` …). Do not keep references.

    Returns:
        Nothing. Combination: every implementation is called.
    """
