"""The plugin manager factory (never built at import time) and the typed hook-call wrapper."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError

ENV_DISABLE_AUTOLOAD = "FRAGILITY_DISABLE_PLUGIN_AUTOLOAD"
ENV_ONLY = "FRAGILITY_PLUGINS"
ENV_STRICT = "FRAGILITY_STRICT_PLUGINS"


def make_plugin_manager(*, autoload: bool | None = None, only: list[str] | None = None) -> pluggy.PluginManager:
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
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.fragility_sources = {}  # type: ignore[attr-defined]  # entry-point name -> "dist version"
    pm.fragility_broken = {}  # type: ignore[attr-defined]  # entry-point name -> where, error
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


_WARNED: set[str] = set()


def _skip(pm: pluggy.PluginManager, name: str, where: str, error: str) -> None:
    """A broken third-party plugin: one warning line, recorded for `fragility plugins` (an error if strict)."""
    if _strict():
        raise PluginError(f"plugin {name!r} ({where}) is broken: {error}; fix or uninstall it ({ENV_STRICT}=1 is set)")
    pm.fragility_broken[name] = {"where": where, "error": error}  # type: ignore[attr-defined]
    if name not in _WARNED:
        _WARNED.add(name)
        sys.stderr.write(
            f"warning: plugin {name!r} ({where}) was skipped: {error}; fix or uninstall it, or set "
            f"{ENV_STRICT}=1 to make this an error\n"
        )


def _one_line(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {text}"[:300]


def _load_entry_points(pm: pluggy.PluginManager, only: list[str]) -> None:
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
        pm.fragility_sources[ep.name] = dist  # type: ignore[attr-defined]


def plugin_table(pm: pluggy.PluginManager) -> list[dict[str, Any]]:
    """Describe plugins: name, source, distribution/version, hooks implemented; broken ones with their error."""
    from . import __version__

    sources = getattr(pm, "fragility_sources", {})
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
                "error": None,
            }
        )
    for name, info in getattr(pm, "fragility_broken", {}).items():
        rows.append({"name": name, "source": "entry point (broken)", "version": info["where"], "hooks": [], "error": info["error"]})
    return rows


class Hooks:
    """Small typed wrapper around ``pm.hook`` so every call site passes keyword arguments."""

    def __init__(self, pm: pluggy.PluginManager | None = None) -> None:
        self.pm = pm if pm is not None else make_plugin_manager()

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
