"""The plugin manager (never built at import time): it owns the analyzer and report-section registries of
its plugins, and a typed hook-call wrapper."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Any

import pluggy

from . import hookspecs
from ._version import __version__
from .errors import PluginError
from .registrars import AnalyzerRegistrar, ReportSectionRegistrar

ENV_DISABLE_AUTOLOAD = "FRAGILITY_DISABLE_PLUGIN_AUTOLOAD"
ENV_ONLY = "FRAGILITY_PLUGINS"
ENV_STRICT = "FRAGILITY_STRICT_PLUGINS"


class PluginManager(pluggy.PluginManager):
    """A pluggy plugin manager with fragility's hook specs that owns its plugins' registries.

    ``analyzers()`` and ``report_sections()`` call the registration hooks once and keep the result until a
    plugin is registered or unregistered; ``sources`` maps an entry point to ``"dist version"`` and ``broken``
    holds the third-party plugins that were skipped (shown by ``fragility plugins``).
    """

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT)
        self.add_hookspecs(hookspecs)
        self.sources: dict[str, str] = {}
        self.broken: dict[str, dict[str, str]] = {}
        self._analyzers: AnalyzerRegistrar | None = None
        self._sections: ReportSectionRegistrar | None = None

    def register(self, plugin: object, name: str | None = None) -> str | None:
        self._analyzers = self._sections = None
        return super().register(plugin, name)

    def unregister(self, plugin: object | None = None, name: str | None = None) -> Any:
        self._analyzers = self._sections = None
        return super().unregister(plugin, name)

    def analyzers(self) -> AnalyzerRegistrar:
        """Every analyzer the plugins register (``fragility_register_analyzers``, called once)."""
        if self._analyzers is None:
            reg = AnalyzerRegistrar()
            Hooks(self).register_analyzers(reg)  # kept only once every plugin registered (a built-in's error propagates)
            self._analyzers = reg
        return self._analyzers

    def report_sections(self) -> ReportSectionRegistrar:
        """Every report section the plugins register (``fragility_register_report_sections``, called once)."""
        if self._sections is None:
            reg = ReportSectionRegistrar()
            Hooks(self).register_report_sections(reg)
            self._sections = reg
        return self._sections


def manager(pm: pluggy.PluginManager | None) -> PluginManager:
    """``pm``, or a fresh manager where it is ``None``.

    Raises:
        PluginError: ``pm`` was not built by :func:`make_plugin_manager`.
    """
    if pm is None:
        return make_plugin_manager()
    if not isinstance(pm, PluginManager):
        raise PluginError(f"plugin_manager={type(pm).__name__} was not built by fragility.make_plugin_manager(); build it with that")
    return pm


def make_plugin_manager(*, autoload: bool | None = None, only: list[str] | None = None) -> PluginManager:
    """Build a fresh plugin manager: built-ins from ``fragility_plugins.BUILTINS``, then third parties.

    Args:
        autoload: load third-party plugins from the ``fragility`` entry-point group. ``None`` reads
            the environment: ``FRAGILITY_DISABLE_PLUGIN_AUTOLOAD=1`` turns it off.
        only: restrict third-party plugins to these entry-point names. ``None`` reads
            ``FRAGILITY_PLUGINS`` (comma-separated); empty means all.

    Raises:
        PluginError: a plugin implements a hook that does not exist (named with the plugin).

    Example:
        >>> pm = make_plugin_manager(autoload=False)
        >>> "fragility_plugins.timm_taps" in [name for name, _ in pm.list_name_plugin()]
        True
    """
    pm = PluginManager()
    builtins = importlib.import_module("fragility_plugins")
    for modname in builtins.BUILTINS:
        pm.register(importlib.import_module(modname), name=modname)
    if autoload is None:
        autoload = os.environ.get(ENV_DISABLE_AUTOLOAD, "").strip().lower() not in {"1", "true", "yes"}
    if only is None:
        only = [n.strip() for n in os.environ.get(ENV_ONLY, "").split(",") if n.strip()]
    if autoload:
        _load_entry_points(pm, only)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(
            f"plugin {pm.get_name(exc.plugin)!r}: {str(exc).splitlines()[0].split(' in plugin ')[0]} "
            f"(hook names must match fragility.hookspecs; see `fragility plugins`)"
        ) from None
    return pm


def _strict() -> bool:
    return os.environ.get(ENV_STRICT, "").strip().lower() in {"1", "true", "yes"}


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record arrives (a test's capture, a redirected CLI)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


class _OncePerMessage(logging.Filter):
    """Lets each distinct message through once, so a broken plugin is reported once per process however many
    plugin managers are built."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


#: broken-plugin warnings: one line on stderr each, once per process (a logger users can reconfigure)
log = logging.getLogger("fragility.plugins")
if not log.handlers:
    _handler = _Stderr()
    _handler.setFormatter(logging.Formatter("warning: %(message)s"))
    log.addHandler(_handler)
    log.addFilter(_OncePerMessage())
    log.propagate = False


def _skip(pm: PluginManager, name: str, where: str, error: str) -> None:
    """A broken third-party plugin: one warning line, recorded for `fragility plugins` (an error if strict)."""
    if _strict():
        raise PluginError(f"plugin {name!r} ({where}) is broken: {error}; fix or uninstall it ({ENV_STRICT}=1 is set)")
    pm.broken[name] = {"where": where, "error": error}
    log.warning("plugin %r (%s) was skipped: %s; fix or uninstall it, or set %s=1 to make this an error", name, where, error, ENV_STRICT)


def _one_line(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {text}"[:300]


def _load_entry_points(pm: PluginManager, only: list[str]) -> None:
    """Load third-party plugins one by one: a broken one is skipped with a warning, never fatal by default."""
    from importlib.metadata import entry_points

    for ep in entry_points(group=hookspecs.PROJECT):
        if only and ep.name not in only:
            continue
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            continue
        dist = f"{ep.dist.name} {ep.dist.version}" if getattr(ep, "dist", None) is not None else "?"
        where = f"entry point '{ep.name} = {ep.value}' of {dist}"
        try:
            plugin = ep.load()
        except Exception as exc:  # noqa: BLE001 - a broken third party must not take the tool down
            _skip(pm, ep.name, where, f"failed to load: {_one_line(exc)}")
            continue
        try:
            pm.register(plugin, name=ep.name)
            pm.check_pending()
        except Exception as exc:  # noqa: BLE001 - e.g. a misspelled hook name
            if pm.get_plugin(ep.name) is not None:
                pm.unregister(name=ep.name)
            detail = str(exc).splitlines()[0].split(" in plugin ")[0] if isinstance(exc, pluggy.PluginValidationError) else _one_line(exc)
            _skip(pm, ep.name, where, f"{detail} (hook names must match fragility.hookspecs)")
            continue
        pm.sources[ep.name] = dist


def plugin_table(pm: PluginManager) -> list[dict[str, Any]]:
    """Describe plugins: name, source, distribution/version, hooks implemented, analyzers registered; broken
    ones with their error."""
    sources = pm.sources
    owners = pm.analyzers().owners
    rows = []
    for name, plugin in pm.list_name_plugin():
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        builtin = name.startswith("fragility_plugins.")
        rows.append(
            {
                "name": name,
                "source": "built-in" if builtin else "entry point",
                "version": __version__ if builtin else sources.get(name, "?"),
                "hooks": hooks,
                "analyzers": sorted(n for n, owner in owners.items() if owner == name),
                "error": None,
            }
        )
    for name, info in pm.broken.items():
        rows.append({"name": name, "source": "entry point (broken)", "version": info["where"], "hooks": [], "analyzers": [],
                     "error": info["error"]})
    return rows


class Hooks:
    """Small typed wrapper around ``pm.hook`` so every call site passes keyword arguments."""

    def __init__(self, pm: pluggy.PluginManager | None = None) -> None:
        self.pm = manager(pm)

    def resolve_head(self, model: Any, classifier: Any) -> Any:
        return self.pm.hook.fragility_resolve_head(model=model, classifier=classifier)

    def register_analyzers(self, registrar: Any) -> None:
        self._register("fragility_register_analyzers", registrar)

    def register_report_sections(self, registrar: Any) -> None:
        self._register("fragility_register_report_sections", registrar)

    def _register(self, hook: str, registrar: Any) -> None:
        """Call a registration hook plugin by plugin, so the registrar knows who registers what, and a
        third-party plugin that raises is skipped with a warning (built-ins' errors propagate)."""
        for impl in reversed(getattr(self.pm.hook, hook).get_hookimpls()):  # registration order
            registrar.plugin = impl.plugin_name
            try:
                impl.function(**{arg: registrar for arg in impl.argnames})
            except PluginError:
                raise
            except Exception as exc:  # noqa: BLE001
                if impl.plugin_name.startswith("fragility_plugins."):
                    raise
                _skip(self.pm, impl.plugin_name, f"its {hook} hook", _one_line(exc))
            finally:
                registrar.plugin = None

    def recording_start(self, store_path: str, model: Any, metadata: dict) -> None:
        self.pm.hook.fragility_recording_start(store_path=store_path, model=model, metadata=metadata)

    def recording_end(self, store_path: str, summary: dict) -> None:
        self.pm.hook.fragility_recording_end(store_path=store_path, summary=summary)

    def pass_start(self, pass_info: dict) -> None:
        self.pm.hook.fragility_pass_start(pass_info=pass_info)

    def pass_end(self, pass_info: dict) -> None:
        self.pm.hook.fragility_pass_end(pass_info=pass_info)

    def batch_recorded(self, pass_info: dict, batch: dict) -> None:
        self.pm.hook.fragility_batch_recorded(pass_info=pass_info, batch=batch)

    def plugin_names(self) -> list[str]:
        return [name for name, _ in self.pm.list_name_plugin()]
