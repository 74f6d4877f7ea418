"""No two modules of the package import each other, directly or through a longer cycle.

The package's modules are read with ast (never imported), from the folders pyproject.toml maps
to ``shutdown_harness``; every import counts, at module level or inside a function, except
those under ``if TYPE_CHECKING:`` (types only, never run).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _package_modules(root: Path) -> dict[str, Path]:
    """Every module of the installed package, by dotted name, from pyproject's package-dir."""
    setuptools = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    package_dir: dict[str, str] = setuptools["package-dir"]
    modules: dict[str, Path] = {}
    for package in setuptools["packages"]:
        base = max((p for p in package_dir if package == p or package.startswith(p + ".")),
                   key=len)
        folder = root / package_dir[base] / package[len(base):].lstrip(".").replace(".", "/")
        for path in sorted(folder.glob("*.py")):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            modules[name] = path
    return modules


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.Module, module: str, is_package: bool) -> set[str]:
    """Dotted names this module imports (candidates: modules, or names inside modules)."""
    found: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            found.add(source)
            found.update(f"{source}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the package's modules it imports (itself left out)."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        targets = set()
        for imported in _imports(tree, name, path.stem == "__init__"):
            # ``from pkg import mod`` imports pkg.mod; ``from pkg.mod import func`` imports
            # pkg.mod: the longest prefix that is one of the package's modules.
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def _path(graph: dict[str, set[str]], component: list[str]) -> str:
    """One cycle through the component's first module, for the failure message."""
    start, members = component[0], set(component)
    trail, seen = [start], {start}
    while True:
        nxt = sorted(graph[trail[-1]] & members)
        back = [n for n in nxt if n == start]
        if back and len(trail) > 1:
            return " -> ".join([*trail, start])
        fresh = [n for n in nxt if n not in seen]
        if not fresh:
            return " <-> ".join(component)
        trail.append(fresh[0])
        seen.add(fresh[0])


def test_no_two_modules_of_the_package_import_each_other() -> None:
    modules = _package_modules(ROOT)
    assert {"shutdown_harness.cli", "shutdown_harness.reports.html",
            "shutdown_harness.scenarios._clients"} <= set(modules)
    graph = import_graph(modules)
    assert "shutdown_harness.schema" in graph["shutdown_harness.classify"]  # edges are seen
    found = cycles(graph)
    assert not found, "import cycles: " + "; ".join(_path(graph, c) for c in found)


def test_the_check_finds_function_level_and_long_cycles(tmp_path: Path) -> None:
    pkg = tmp_path / "src"
    (pkg / "sub").mkdir(parents=True)
    (tmp_path / "pyproject.toml").write_text(
        '[tool.setuptools]\npackages = ["p", "p.sub"]\n'
        '[tool.setuptools.package-dir]\np = "src"\n')
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from p.sub import c\n")
    (pkg / "b.py").write_text("from p import a\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "c.py").write_text("from .. import b\n")
    (pkg / "d.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                              "    from p import e\n")
    (pkg / "e.py").write_text("import p.d\n")
    graph = import_graph(_package_modules(tmp_path))
    assert graph["p.d"] == set() and graph["p.e"] == {"p.d"}
    found = cycles(graph)
    assert found == [["p.a", "p.b", "p.sub.c"]]
    assert _path(graph, found[0]) == "p.a -> p.sub.c -> p.b -> p.a"


#: Heavy or optional modules (docs/architecture.md, "Imports"): imported where they are used,
#: never on the way to `--help`, `list` or a campaign's end (its reports included).
_HEAVY = ("scipy", "urllib.request", "http.client", "importlib.metadata", "filelock", "docker",
          "testcontainers", "rich", "packaging.specifiers", "packaging.tags")
#: Not imported by `cli` and `workflow` themselves (`run` imports those, then starts the
#: children): the report stage loads while the runs go (workflow.ReportStage), the prepare stage
#: for scenario campaigns only (not --command), the rest on the paths that need it (a core to
#: read, --warm, an interval to compute, the end of the campaign).
_AFTER_THE_FIRST_RUN = ("shutdown_harness.reports", "shutdown_harness.aggregate",
                        "shutdown_harness.merge", "shutdown_harness.prepare",
                        "shutdown_harness.discovery", "shutdown_harness.strategies",
                        "shutdown_harness.virtualenv", "shutdown_harness.warm",
                        "shutdown_harness.versions", "concurrent.futures", "statistics",
                        "socket", "secrets", "uuid", "hashlib", "subprocess", "textwrap",
                        "base64", "packaging.version")

_CAMPAIGN = ("shutdown_harness.cli, shutdown_harness.workflow, shutdown_harness.reports, "
             + ", ".join(f"shutdown_harness.reports.{m}" for m in (
                 "terminal", "json_report", "markdown", "junit", "html")))


def _loaded(modules: str) -> list[str]:
    code = (f"import sys; before = set(sys.modules); import {modules}; "
            "print(__import__('json').dumps(sorted(set(sys.modules) - before)))")
    return list(json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True,
                                          text=True, check=True).stdout))


def _among(loaded: list[str], names: tuple[str, ...]) -> list[str]:
    return [m for m in loaded if any(m == h or m.startswith(h + ".") for h in names)]


@pytest.mark.parametrize("modules", [
    "shutdown_harness.cli",
    "shutdown_harness.cli, shutdown_harness.discovery, shutdown_harness.strategies",
    _CAMPAIGN,
])
def test_start_up_imports_nothing_heavy(modules: str) -> None:
    heavy = _among(_loaded(modules), _HEAVY)
    assert not heavy, f"import {modules} loads {heavy}"


def test_nothing_a_campaign_needs_later_is_imported_before_its_first_run() -> None:
    early = _among(_loaded("shutdown_harness.cli, shutdown_harness.workflow"),
                   _AFTER_THE_FIRST_RUN)
    assert not early, f"loaded before the first run: {early}"
