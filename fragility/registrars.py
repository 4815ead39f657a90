"""What plugins are handed: the registrars of ``fragility_register_analyzers`` and
``fragility_register_report_sections``, and the :class:`ReportContext` a report section receives.

They live apart from the engine and the report so that :mod:`fragility.hookspecs` can import them at run
time — the hook specs carry real types (``typing.get_type_hints`` resolves them) and no module imports back
into the one that imports it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .analysis._base import Analyzer
from .errors import PluginError

if TYPE_CHECKING:  # pragma: no cover
    from .analysis._results import Result
    from .store import Store

__all__ = ["AnalyzerRegistrar", "ReportContext", "ReportSectionRegistrar"]


class AnalyzerRegistrar:
    """Collects analyzer registrations from ``fragility_register_analyzers`` and validates them."""

    def __init__(self) -> None:
        self.analyzers: dict[str, type[Analyzer]] = {}
        self.descriptions: dict[str, str] = {}
        #: analyzer name -> the plugin that registered it (its name in the plugin manager)
        self.owners: dict[str, str] = {}
        #: the plugin whose registration hook is running (set by the hook caller)
        self.plugin: str | None = None

    def add(self, name: str, cls: type[Analyzer], *, description: str | None = None) -> None:
        """Register ``cls`` under ``name``.

        Raises:
            PluginError: the name is taken (names both owners) or ``cls`` is not an Analyzer.
        """
        owner = self.plugin or getattr(cls, "__module__", "?")
        if not (isinstance(cls, type) and issubclass(cls, Analyzer)):
            raise PluginError(f"{owner}: analyzer {name!r} must be a subclass of fragility.analysis.Analyzer, got {cls!r}")
        if not name or not name.replace("_", "").replace("-", "").isalnum():
            raise PluginError(f"{owner}: analyzer name {name!r} must be a non-empty identifier")
        if name in self.analyzers:
            raise PluginError(
                f"analyzer {name!r} is registered twice: by {self.owners[name]} and by {owner}; rename one of them"
            )
        self.analyzers[name] = cls
        self.owners[name] = owner
        self.descriptions[name] = description or ((cls.__doc__ or "").strip().splitlines() or [""])[0]


@dataclass
class ReportContext:
    """What report sections see: the runs' labels, stores and analyzer results, and the comparison."""

    labels: list[str]
    stores: dict[str, Store]
    results: dict[str, dict[str, Result]]
    comparison: Result | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class ReportSectionRegistrar:
    """Collects report sections; a name registered twice names both owners."""

    def __init__(self) -> None:
        self.sections: dict[str, tuple[int, str, Callable[[ReportContext], list]]] = {}
        self.owners: dict[str, str] = {}
        self.plugin: str | None = None

    def add(self, name: str, func: Callable[[ReportContext], list], *, title: str | None = None, order: int = 100) -> None:
        """Register a report section: ``func(ctx)`` returns ``(caption, Figure)`` pairs and ``Table`` objects."""
        owner = self.plugin or getattr(func, "__module__", "?")
        if name in self.sections:
            raise PluginError(f"report section {name!r} is registered twice: by {self.owners[name]} and by {owner}; rename one")
        self.sections[name] = (order, title or name, func)
        self.owners[name] = owner
