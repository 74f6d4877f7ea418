"""`shutdown-harness doctor`: what this machine offers, and what degrades without each part.

Every check looks at the real thing (an engine that answers, a binary that runs, the kernel's
core_pattern and the process's core limit, gdb and uv that print a version) and says in one
line what was found; the last column says what the harness does without it.
"""

from __future__ import annotations

import resource
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from shutdown_harness import containers, service_kinds, services
from shutdown_harness.errors import EXIT_OK

__all__ = ["Check", "collect", "render", "main"]

_CORE_PATTERN = Path("/proc/sys/kernel/core_pattern")


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    name: str
    ok: bool
    detail: str  # what was found
    without: str  # what degrades when it is missing


def _version_of(argv: list[str]) -> str | None:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = (out.stdout or out.stderr).strip().splitlines()
    return lines[0].strip() if out.returncode == 0 and lines else None


def _engine() -> Check:
    without = "--etcd/--valkey container unusable; auto uses the embedded binaries"
    engine, why = containers.find_engine()
    if engine is None:
        hint = " (.ci/setup-podman sets up Podman's service)"
        return Check("container engine", False, why + hint, without)
    image = services.official_image("etcd")
    reachable, how = containers.registry_reachable(image)
    images = "official images can be pulled" if reachable else (
        f"{how}: images are built locally from the embedded binaries"
    )  # fmt: skip
    return Check("container engine", True, f"{engine.describe()}; {images}", without)


def _binary(kind: str) -> Check:
    flag = f"--{kind}"
    without = f"{flag} embedded unusable: give {flag} HOST:PORT, or use a container"
    try:
        binary = services.embedded_binary(kind)
    except services.ServiceError as e:
        return Check(f"embedded {kind}", False, str(e), without)
    version = services.binary_version(binary)
    if version == "?":
        return Check(f"embedded {kind}", False, f"{binary} does not run", without)
    return Check(f"embedded {kind}", True, f"{kind} {version} at {binary}", without)


def _declared(kind: service_kinds.ServiceKind) -> Check:
    """A service of the project's own: is the program its command runs there?"""
    name = f"service {kind.name}"
    without = f"scenarios that need {kind.name} cannot start it: give --{kind.name} HOST:PORT"
    try:
        program = kind.program()
    except service_kinds.ServiceError as e:
        return Check(name, False, str(e), without)
    return Check(name, True, f"{kind.describe()}; exports {kind.env_var}; {program}", without)


def _core_dumps() -> Check:
    without = "no native backtraces: crashes are classified from signal and stderr only"
    try:
        pattern = _CORE_PATTERN.read_text().strip()
    except OSError as e:
        return Check("core dumps", False, f"cannot read {_CORE_PATTERN}: {e.strerror}", without)
    soft, hard = resource.getrlimit(resource.RLIMIT_CORE)

    def show(n: int) -> str:
        return "unlimited" if n == resource.RLIM_INFINITY else str(n)

    limits = f"ulimit -c soft {show(soft)}, hard {show(hard)}"
    if hard == 0:
        return Check("core dumps", False, f"{limits}: cores cannot be enabled", without)
    if pattern.startswith("|"):
        handler = pattern[1:].split()[0] if pattern[1:].split() else "?"
        return Check(
            "core dumps",
            False,
            f"core_pattern pipes cores to {handler}, not into files; {limits}",
            without,
        )
    where = (
        f"files in {Path(pattern).parent}"
        if pattern.startswith("/")
        else "files in each child's working folder"
    )
    raise_note = "" if soft == hard else " (a child may raise its soft limit up to the hard one)"
    return Check(
        "core dumps", True, f"core_pattern {pattern!r}: {where}; {limits}{raise_note}", without
    )


def _gdb() -> Check:
    without = "no native backtraces: signatures from stderr only, no frames"
    path = shutil.which("gdb")
    version = _version_of([path, "--version"]) if path else None
    if version is None:
        return Check("gdb", False, "gdb not found on PATH (apt-get install gdb)", without)
    return Check("gdb", True, f"{version} at {path}", without)


def _uv() -> Check:
    without = "strategies cannot build their virtualenvs: only the current Python is usable"
    here = Path(sys.executable).parent / "uv"
    path = shutil.which("uv") or (str(here) if here.exists() else None)
    version = _version_of([path, "--version"]) if path else None
    if version is None:
        return Check("uv", False, "uv not found on PATH (pip install uv)", without)
    return Check("uv", True, f"{version} at {path}", without)


def collect(config: Mapping[str, Any] | None = None) -> list[Check]:
    """Every check, in the order shown (declared services come from `config`)."""
    own = [_declared(kind) for kind in service_kinds.declared(config or {}).values()]
    builtin = [_binary(name) for name in service_kinds.BUILTIN]
    return [_engine(), *builtin, *own, _core_dumps(), _gdb(), _uv()]


def render(checks: list[Check], console: Console) -> None:
    """A table on a terminal; plain lines otherwise (logs, CI, pipes)."""
    missing = [c.name for c in checks if not c.ok]
    summary = "everything is usable" if not missing else f"degraded: {', '.join(missing)}"
    if not console.is_terminal:
        for c in checks:
            console.print(f"{c.name}: {'ok' if c.ok else 'MISSING'}: {c.detail}", highlight=False)
            if not c.ok:
                console.print(f"    without it: {c.without}", highlight=False)
        console.print(f"{len(checks) - len(missing)}/{len(checks)} usable; {summary}")
        return
    table = Table(title="shutdown-harness doctor")
    table.add_column("part", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("found", overflow="fold")
    table.add_column("without it", overflow="fold")
    for c in checks:
        status = "[green]ok[/green]" if c.ok else "[yellow]missing[/yellow]"
        without = c.without if not c.ok else f"[dim]{c.without}[/dim]"
        table.add_row(c.name, status, c.detail, without)
    console.print(table)
    console.print(f"{len(checks) - len(missing)}/{len(checks)} usable; {summary}")


def main(config: Mapping[str, Any] | None = None) -> int:
    """Print the report; always exit 0 (a missing part is information, not an error)."""
    render(collect(config), Console(soft_wrap=True))
    return EXIT_OK
