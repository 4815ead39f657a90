"""The package's import graph: no circle among its modules, at run time or for type checkers only.

The walk reads every ``import`` statement of ``fragility`` and ``fragility_plugins`` — at module level, in
``if TYPE_CHECKING:`` blocks and inside functions alike — and resolves it to the module it names
(``from .analysis import Result`` names the package ``fragility.analysis``; ``from . import hookspecs`` the
module). A second check imports every module first, in a fresh interpreter's module table, so a circle that
only bites in one import order still fails.
"""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = {"fragility": ROOT / "fragility", "fragility_plugins": ROOT / "plugins"}


def modules() -> dict[str, tuple[pathlib.Path, bool]]:
    """Module name -> (source file, is a package); compiled extensions are leaves named by their stem."""
    out: dict[str, tuple[pathlib.Path, bool]] = {}
    for top, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = [top, *path.relative_to(folder).with_suffix("").parts]
            is_pkg = parts[-1] == "__init__"
            out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
        for path in folder.rglob("*.so"):
            parts = [top, *path.relative_to(folder).parent.parts, path.name.split(".")[0]]
            out[".".join(parts)] = (path, False)
    return out


def imports_of(name: str, path: pathlib.Path, is_pkg: bool, known: set[str]) -> set[str]:
    """The package's own modules that ``name`` imports anywhere in its source."""
    here = name.split(".") if is_pkg else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(here[: len(here) - node.level + 1] + ([node.module] if node.module else [])) if node.level else node.module
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # `import fragility.store._reader as r` names that module; a name in a module names the module
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {n: imports_of(n, p, pkg, set(mods)) for n, (p, pkg) in mods.items() if p.suffix == ".py"}


def test_no_import_circle_among_the_packages_modules():
    edges = graph()
    assert len(edges) >= 45 and "fragility.analysis._engine" in edges["fragility.analysis"]  # the walk sees TYPE_CHECKING imports
    assert "fragility.registrars" in edges["fragility.hookspecs"]
    assert circles(edges) == []


def test_the_walk_finds_a_circle_where_there_is_one():
    edges = graph()
    edges["fragility.registrars"] = edges["fragility.registrars"] | {"fragility._manager"}  # _manager imports registrars
    assert any({"fragility._manager", "fragility.registrars"} <= set(c) for c in circles(edges))


def test_every_module_imports_first_in_a_fresh_interpreter():
    """Each module imported before any other of the package (its module table emptied of them in between)."""
    names = sorted(n for n, (p, _) in modules().items() if p.suffix == ".py" and not n.endswith("__main__"))
    code = (
        "import importlib, sys\n"
        f"failed = []\n"
        f"for name in {names!r}:\n"
        "    for m in [m for m in sys.modules if m.split('.')[0] in ('fragility', 'fragility_plugins') and not m.endswith('_ckernels')]:\n"
        "        del sys.modules[m]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as exc:\n"
        "        failed.append(f'{name}: {type(exc).__name__}: {exc}')\n"
        "print('\\n'.join(failed) or 'ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stdout + out.stderr[-2000:]


def test_type_hints_of_the_hook_specs_resolve():
    import typing

    from fragility import hookspecs
    from fragility.registrars import AnalyzerRegistrar, ReportSectionRegistrar

    specs = {n: typing.get_type_hints(getattr(hookspecs, n)) for n in dir(hookspecs) if n.startswith("fragility_")}
    assert specs["fragility_register_analyzers"]["registrar"] is AnalyzerRegistrar
    assert specs["fragility_register_report_sections"]["registrar"] is ReportSectionRegistrar
    import torch

    from fragility.taps import Head

    assert specs["fragility_resolve_head"]["model"] is torch.nn.Module
    assert specs["fragility_resolve_head"]["return"] == Head | None


def test_every_imported_package_is_declared():
    """Each third-party package the code imports is a dependency or an extra of pyproject.toml (an import in an
    ``except ImportError:`` fallback is an alternative, not a requirement); nothing declared goes unused."""
    import importlib.metadata
    import re
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {re.split(r"[<>=\[; ]", d, maxsplit=1)[0].lower().replace("_", "-")
                for d in project["dependencies"] + [d for k, ds in project["optional-dependencies"].items() if k != "test" for d in ds]}
    dists = importlib.metadata.packages_distributions()
    used: dict[str, str] = {}
    for n, (path, _) in modules().items():
        if path.suffix != ".py":
            continue
        tree = ast.parse(path.read_text())
        fallback = {id(i) for t in ast.walk(tree) if isinstance(t, ast.Try) for h in t.handlers for i in ast.walk(h)}
        for node in ast.walk(tree):
            if id(node) in fallback:
                continue
            if isinstance(node, ast.Import):
                tops = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                tops = [node.module.split(".")[0]]
            else:
                continue
            for top in tops:
                if top not in sys.stdlib_module_names and top not in PACKAGES:
                    used[dists[top][0].lower()] = n
    assert {"torch", "h5py", "pillow", "scikit-learn", "scipy", "pandas", "lightning"} <= set(used)  # the walk sees them
    assert set(used) - declared == set(), {d: used[d] for d in set(used) - declared}
    # extras for what the caller brings: tensorboard (the Lightning logger imports it), dask (analyze_dask's client)
    assert declared - set(used) - {"tensorboard", "dask"} == set()
