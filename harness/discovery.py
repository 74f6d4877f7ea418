"""Scenario discovery: the built-in ``scenarios/`` modules and users' own scenario files.

A scenario is read with ``ast``, never imported in the harness's process: its docstring gives
the summary (first line) and description, and its module-level constants ``SERVICES``,
``RUNS`` and ``TIMEOUT`` give what it needs and its defaults (see docs/architecture.md for the
contract). A scenario without ``SERVICES`` needs none; the names it lists must be services the
configuration knows (built in, or declared in ``[tool.shutdown-harness.services]``). Whether
the installed client can run it is asked in the strategy's own Python, through the child
wrapper's ``--probe`` (``probe``).
"""

from __future__ import annotations

import ast
import difflib
import json
import os
import subprocess
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from shutdown_harness import scenarios as _builtin_scenarios
from shutdown_harness.errors import UsageError
from shutdown_harness.service_kinds import BUILTIN

__all__ = [
    "ScenarioInfo",
    "BUILTIN_DIR",
    "CHILD",
    "KNOWN_SERVICES",
    "DEFAULT_SERVICES",
    "DEFAULT_RUNS",
    "DEFAULT_TIMEOUT",
    "builtin",
    "read",
    "resolve",
    "probe",
]

#: The built-in scenarios: the package ``shutdown_harness.scenarios`` (the repository's
#: scenarios/ folder, wherever an install or an editable install maps it).
BUILTIN_DIR = Path(_builtin_scenarios.__file__).resolve().parent
CHILD = Path(__file__).resolve().parent / "child.py"
#: The built-in service kinds (a configuration may declare more: service_kinds.kinds).
KNOWN_SERVICES: tuple[str, ...] = tuple(BUILTIN)
#: What a scenario file that does not say gets: no service.
DEFAULT_SERVICES: tuple[str, ...] = ()
DEFAULT_RUNS = 100
DEFAULT_TIMEOUT = 30.0
_PROBE_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class ScenarioInfo:
    """What the harness knows about a scenario without running it."""

    name: str
    path: Path
    summary: str
    description: str
    services: tuple[str, ...]
    runs: int
    timeout: float


def _constants(tree: ast.Module) -> dict[str, ast.expr]:
    values: dict[str, ast.expr] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    values[target.id] = node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if node.value is not None:
                values[node.target.id] = node.value
    return values


def _defines(tree: ast.Module, name: str) -> bool:
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name:
            return True
        if isinstance(node, ast.Import | ast.ImportFrom):
            if any((alias.asname or alias.name) == name for alias in node.names):
                return True
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return True
    return False


def _literal(path: Path, name: str, node: ast.expr | None) -> object:
    if node is None:
        return None
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise UsageError(f"scenario {path}: {name} must be a literal value") from None


def read(
    path: Path, name: str | None = None, services: Collection[str] = KNOWN_SERVICES
) -> ScenarioInfo:
    """Read one scenario file (docstring and constants) without importing it; ``services``
    are the service names it may list."""
    try:
        source = path.read_text(encoding="utf-8")
    except OSError as e:
        raise UsageError(f"cannot read scenario {path}: {e.strerror}") from None
    try:
        tree = ast.parse(source, filename=str(path))
    except SyntaxError as e:
        raise UsageError(f"scenario {path}: syntax error at line {e.lineno}: {e.msg}") from None
    if not _defines(tree, "main"):
        raise UsageError(f"scenario {path} defines no main()")

    doc = (ast.get_docstring(tree) or "").strip()
    summary, _, description = doc.partition("\n")
    constants = _constants(tree)

    needed = _literal(path, "SERVICES", constants.get("SERVICES"))
    if needed is None:
        needed = DEFAULT_SERVICES
    if isinstance(needed, str):
        needed = (needed,)
    if not isinstance(needed, tuple | list) or not all(isinstance(s, str) for s in needed):
        raise UsageError(f"scenario {path}: SERVICES must be a tuple of service names")
    unknown = [s for s in needed if s not in services]
    if unknown:
        raise UsageError(
            f"scenario {path}: unknown service {unknown[0]!r} (known: {', '.join(services)};"
            f" declare it in [tool.shutdown-harness.services.{unknown[0]}])"
        )

    runs = _literal(path, "RUNS", constants.get("RUNS"))
    runs = DEFAULT_RUNS if runs is None else runs
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise UsageError(f"scenario {path}: RUNS must be a positive integer")

    timeout = _literal(path, "TIMEOUT", constants.get("TIMEOUT"))
    timeout = DEFAULT_TIMEOUT if timeout is None else timeout
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise UsageError(f"scenario {path}: TIMEOUT must be a positive number of seconds")

    return ScenarioInfo(
        name=name or path.stem,
        path=path.absolute(),  # children run in their own folder
        summary=summary.strip(),
        description=description.strip(),
        services=tuple(dict.fromkeys(needed)),
        runs=runs,
        timeout=float(timeout),
    )


def _builtin_paths(folder: Path) -> dict[str, Path]:
    return {
        p.stem: p
        for p in sorted(folder.glob("*.py"))
        if not p.name.startswith("_") and p.is_file()
    }


def builtin(
    folder: Path = BUILTIN_DIR, services: Collection[str] = KNOWN_SERVICES
) -> list[ScenarioInfo]:
    """Every built-in scenario, by name (helper modules starting with ``_`` are skipped)."""
    return [read(path, services=services) for path in _builtin_paths(folder).values()]


def _looks_like_path(spec: str) -> bool:
    return spec.endswith(".py") or "/" in spec or os.sep in spec or spec.startswith(".")


def _from_path(spec: str, services: Collection[str]) -> ScenarioInfo:
    path = Path(spec).expanduser()
    if path.suffix != ".py":
        raise UsageError(f"scenario {spec}: not a .py file")
    if not path.is_file():
        raise UsageError(f"scenario file not found: {spec}")
    return read(path.resolve(), services=services)


def _from_name(spec: str, known: Mapping[str, Path], services: Collection[str]) -> ScenarioInfo:
    if spec in known:
        return read(known[spec], services=services)
    close = difflib.get_close_matches(spec, list(known), n=3, cutoff=0.5)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise UsageError(f"unknown scenario {spec!r}{hint}; `shutdown-harness list` shows them all")


def resolve(
    specs: list[str], folder: Path = BUILTIN_DIR, services: Collection[str] = KNOWN_SERVICES
) -> list[ScenarioInfo]:
    """Scenarios from names or paths (each item may be comma-separated), in order, once each;
    ``services``: the service names they may need (the built-in and declared kinds)."""
    known = _builtin_paths(folder)
    found: dict[str, ScenarioInfo] = {}
    for item in specs:
        for spec in (s.strip() for s in item.split(",")):
            if not spec:
                continue
            info = (
                _from_path(spec, services)
                if _looks_like_path(spec)
                else _from_name(spec, known, services)
            )
            previous = found.get(info.name)
            if previous is not None and previous.path != info.path:
                raise UsageError(
                    f"two scenarios are named {info.name!r}: {previous.path} and {info.path}"
                )
            found[info.name] = info
    return list(found.values())


def probe(
    info: ScenarioInfo, python: Path, env: Mapping[str, str] | None = None
) -> str | None:
    """Why the scenario cannot run with this Python's packages, or None when it can.

    Runs ``python harness/child.py SCENARIO --probe`` in the strategy's environment (``env``
    is the child's whole environment; None means this process's).
    """
    argv = [str(python), str(CHILD), str(info.path), "--probe"]
    try:
        done = subprocess.run(
            argv,
            env=dict(env) if env is not None else None,
            capture_output=True,
            text=True,
            timeout=_PROBE_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise UsageError(f"cannot probe scenario {info.name} with {python}: {e}") from None
    lines = done.stdout.strip().splitlines()
    try:
        verdict = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        verdict = None
    if done.returncode != 0 or not isinstance(verdict, dict) or "applicable" not in verdict:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        if tail.startswith("ModuleNotFoundError: "):  # a scenario importing a missing client
            return tail.removeprefix("ModuleNotFoundError: ")
        raise UsageError(f"probing scenario {info.name} with {python} failed: {tail}")
    if verdict["applicable"]:
        return None
    return str(verdict.get("reason") or "not applicable")
