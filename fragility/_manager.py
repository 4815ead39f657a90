"""The plugin manager factory (never built at import time) and the typed hook-call wrapper."""

from __future__ import annotations

import importlib
import os
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError

ENV_DISABLE_AUTOLOAD = "FRAGILITY_DISABLE_PLUGIN_AUTOLOAD"
ENV_ONLY = "FRAGILITY_PLUGINS"


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


def _load_entry_points(pm: pluggy.PluginManager, only: list[str]) -> None:
    names = only or [None]
    for name in names:
        try:
            pm.load_setuptools_entrypoints(hookspecs.PROJECT, name=name)
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin {pm.get_name(exc.plugin) or exc.plugin!r}: {str(exc).splitlines()[0]}") from None
        except Exception as exc:  # a broken third party must not take the tool down with a traceback
            raise PluginError(
                f"a plugin in entry-point group {hookspecs.PROJECT!r} failed to load: {exc}; "
                f"fix or uninstall it, or set {ENV_DISABLE_AUTOLOAD}=1"
            ) from None


def plugin_table(pm: pluggy.PluginManager) -> list[dict[str, Any]]:
    """Describe loaded plugins: name, distribution/version, hooks implemented."""
    from . import __version__

    dists = {id(plugin): f"{dist.project_name} {dist.version}" for plugin, dist in pm.list_plugin_distinfo()}
    rows = []
    for name, plugin in pm.list_name_plugin():
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        builtin = name.startswith("fragility_plugins.")
        rows.append(
            {
                "name": name,
                "source": "built-in" if builtin else "entry point",
                "version": __version__ if builtin else dists.get(id(plugin), "?"),
                "hooks": hooks,
            }
        )
    return rows


class Hooks:
    """Small typed wrapper around ``pm.hook`` so every call site passes keyword arguments."""

    def __init__(self, pm: pluggy.PluginManager | None = None) -> None:
        self.pm = pm if pm is not None else make_plugin_manager()

    def resolve_head(self, model: Any, classifier: Any) -> Any:
        return self.pm.hook.fragility_resolve_head(model=model, classifier=classifier)

    def register_analyzers(self, registrar: Any) -> None:
        self.pm.hook.fragility_register_analyzers(registrar=registrar)

    def register_report_sections(self, registrar: Any) -> None:
        self.pm.hook.fragility_register_report_sections(registrar=registrar)

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
