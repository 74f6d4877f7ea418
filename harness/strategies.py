"""Strategies: which client packages a child runs with, and how it cleans up before exit.

A strategy is client packages (pip requirements, installed into its own virtualenv), a cleanup
mode the child wrapper applies after the scenario's work, and the Python executable. Named
strategies come from the configuration (``[strategies.NAME]`` in harness/data/defaults.toml,
``[tool.shutdown-harness.strategies.NAME]`` in a pyproject.toml); anywhere a name is accepted an
inline spec works too: requirements joined by ``+`` and an optional mode after ``@``, e.g.
``etcd-client-py==0.5.1+valkey-glide==2.6.0@explicit`` or ``etcd-client-py==0.4.1@sleep:0.5``.
A mode's argument comes after its first colon: ``@sleep:0.5``, and for the ``explicit`` and
``atexit`` modes the cleanup function of any package, ``@explicit:mypkg.cleanup:shutdown``
(``cleanup = "mypkg.cleanup:shutdown"`` in a named strategy).

Which function a known client offers for ``explicit``/``atexit`` cleanup is data, not code: the
``[clients."DISTRIBUTION"]`` table of the configuration names its module and cleanup function.
Whether the function can really be had is checked in the strategy's own Python before any run
starts, with the scenario's folder first on the import path as the child has it
(``check_mode``): a cleanup module may live next to the scenario.
"""

from __future__ import annotations

import difflib
import json
import re
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from shutdown_harness.errors import UsageError
from shutdown_harness.virtualenv import installed_versions

__all__ = [
    "MODES",
    "DEFAULT_SLEEP_S",
    "Strategy",
    "canonical_name",
    "parse_inline",
    "from_config",
    "resolve",
    "cleanup_for",
    "check_mode",
]

MODES = ("none", "explicit", "atexit", "hard-exit", "sleep")
_CLEANUP_MODES = ("explicit", "atexit")
DEFAULT_SLEEP_S = 0.5

_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_VERSION_CLAUSE = r"\s*(?:===|==|!=|~=|>=|<=|<|>)\s*[A-Za-z0-9.*+!_-]+\s*"
_REQUIREMENT = re.compile(
    rf"^(?P<name>{_NAME})\s*(?:\[\s*{_NAME}(?:\s*,\s*{_NAME})*\s*\])?"
    rf"(?P<spec>{_VERSION_CLAUSE}(?:,{_VERSION_CLAUSE})*)?$"
)
_URL_REQUIREMENT = re.compile(rf"^(?P<name>{_NAME})\s*(?:\[[^\]]*\])?\s*@\s*\S+$")
_MODE_SUFFIX = re.compile(r"^(?P<mode>[a-z-]+)(?::(?P<arg>[\w.:]+))?$")
_CLEANUP = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


@dataclass(frozen=True)
class Strategy:
    """One way of running the children: packages, cleanup mode, Python."""

    name: str
    requirements: tuple[str, ...]
    mode: str = "none"
    sleep_s: float = DEFAULT_SLEEP_S
    python: str | None = None  # executable path or a version for uv; None: the harness's
    cleanup: str | None = None  # "module:function" for the explicit and atexit modes
    description: str = ""
    distributions: tuple[str, ...] = field(default=(), compare=False)

    def child_args(self) -> list[str]:
        """The child wrapper's options that apply this strategy's cleanup mode."""
        args = ["--mode", self.mode]
        if self.cleanup and self.mode in _CLEANUP_MODES:
            args += ["--cleanup", self.cleanup]
        if self.mode == "sleep":
            args += ["--sleep", f"{self.sleep_s:g}"]
        return args


def canonical_name(name: str) -> str:
    """A distribution name as PEP 503 compares them: ``Etcd_Client.Py`` -> ``etcd-client-py``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _distribution(requirement: str) -> str | None:
    """The distribution a requirement installs, when it says (a source folder does not)."""
    m = _REQUIREMENT.match(requirement) or _URL_REQUIREMENT.match(requirement)
    if m:
        return canonical_name(m.group("name"))
    filename = Path(requirement).name
    if filename.endswith(".whl"):  # name-version-...whl
        return canonical_name(filename.split("-", 1)[0])
    for suffix in (".tar.gz", ".zip"):  # name-version.tar.gz
        if filename.endswith(suffix) and "-" in filename:
            return canonical_name(filename.removesuffix(suffix).rsplit("-", 1)[0])
    return None


def _check_requirement(requirement: str, where: str) -> None:
    if _REQUIREMENT.match(requirement) or _URL_REQUIREMENT.match(requirement):
        return
    if Path(requirement).expanduser().exists():  # a local wheel, sdist or source folder
        return
    raise UsageError(f"{where}: {requirement!r} is not a requirement (e.g. etcd-client-py==0.5.1)")


def _mode(text: str, where: str) -> tuple[str, float, str | None]:
    """``(mode, sleep_s, cleanup)`` from ``none``, ``sleep:0.5``, ``explicit:mod:func``..."""
    m = _MODE_SUFFIX.match(text.strip())
    mode = m.group("mode") if m else text
    if mode not in MODES:
        close = difflib.get_close_matches(mode, MODES, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise UsageError(f"{where}: unknown cleanup mode {mode!r}{hint}; modes: {', '.join(MODES)}")
    arg = m.group("arg") if m else None
    if arg is None:
        return mode, DEFAULT_SLEEP_S, None
    if mode in _CLEANUP_MODES:
        if not _CLEANUP.fullmatch(arg):
            raise UsageError(
                f"{where}: {mode}:{arg} names no function: give {mode}:module:function"
            )
        return mode, DEFAULT_SLEEP_S, arg
    if mode != "sleep":
        raise UsageError(
            f"{where}: mode {mode} takes no value (sleep:0.5, explicit:module:function and"
            " atexit:module:function do)"
        )
    try:
        sleep_s = float(arg)
    except ValueError:
        raise UsageError(f"{where}: bad sleep duration {arg!r}") from None
    return mode, sleep_s, None


def cleanup_for(requirements: tuple[str, ...], clients: Mapping[str, Any]) -> str | None:
    """``module:function`` of the first client among the requirements that has a cleanup."""
    table = {canonical_name(k): v for k, v in clients.items()}
    for requirement in requirements:
        entry = table.get(_distribution(requirement) or "")
        if isinstance(entry, Mapping) and entry.get("module") and entry.get("cleanup"):
            return f"{entry['module']}:{entry['cleanup']}"
    return None


def _finish(
    name: str,
    requirements: tuple[str, ...],
    mode: str,
    sleep_s: float,
    python: str | None,
    cleanup: str | None,
    description: str,
    config: Mapping[str, Any],
    inline: bool = False,
) -> Strategy:
    if mode in _CLEANUP_MODES and cleanup is None:
        cleanup = cleanup_for(requirements, config.get("clients", {}))
        if cleanup is None:
            packages = " + ".join(requirements) or "the host Python's packages"
            if inline:
                how = f"name one: {'+'.join(requirements)}@{mode}:module:function"
            else:
                table = f"[tool.shutdown-harness.strategies.{name}]"
                how = f'name one: cleanup = "module:function" in {table}'
            raise UsageError(
                f"strategy {name}: mode {mode} needs a cleanup function, and none of"
                f" {packages} has a known one: {how}"
            )
    if cleanup is not None and not _CLEANUP.fullmatch(cleanup):
        raise UsageError(f"strategy {name}: cleanup must look like module:function")
    return Strategy(
        name=name,
        requirements=requirements,
        mode=mode,
        sleep_s=sleep_s,
        python=python,
        cleanup=cleanup,
        description=description,
        distributions=tuple(d for d in map(_distribution, requirements) if d),
    )


def _label(spec: str, requirements: tuple[str, ...]) -> str:
    """The spec as written, but a local wheel or sdist by its name-version (the mode kept):
    ``/build/dist/etcd_client_py-0.4.1-cp311-abi3-linux_x86_64.whl@explicit`` ->
    ``etcd-client-py-0.4.1@explicit``, so two modes of one wheel read apart in every table."""
    label = spec.strip()
    files = [r for r in requirements if Path(r).name.endswith((".whl", ".tar.gz", ".zip"))]
    if not files:
        return label
    # Imported here: packaging.utils pulls packaging.tags (~18 ms of a run's start-up, -X
    # importtime), needed only for a strategy that installs a local file.
    from packaging.utils import (
        InvalidSdistFilename,
        InvalidWheelFilename,
        parse_sdist_filename,
        parse_wheel_filename,
    )

    for requirement in files:
        filename = Path(requirement).name
        try:
            if filename.endswith(".whl"):
                name, version, *_ = parse_wheel_filename(filename)
            elif filename.endswith((".tar.gz", ".zip")):
                name, version = parse_sdist_filename(filename)
            else:
                continue
        except (InvalidWheelFilename, InvalidSdistFilename):
            continue
        label = label.replace(requirement, f"{name}-{version}", 1)
    return label


def parse_inline(spec: str, config: Mapping[str, Any] | None = None) -> Strategy:
    """``etcd-client-py==0.5.1+valkey-glide==2.6.0@explicit`` -> Strategy (named as written;
    a local wheel or sdist named by its name-version, see ``_label``)."""
    text = spec.strip()
    where = f"strategy {spec}"
    mode, sleep_s, cleanup = "none", DEFAULT_SLEEP_S, None
    head, at, tail = text.rpartition("@")
    if at and _MODE_SUFFIX.match(tail.strip()) and not tail.startswith(("/", " ")):
        text = head
        mode, sleep_s, cleanup = _mode(tail, where)
    requirements = tuple(r.strip() for r in text.split("+"))
    if not text or any(not r for r in requirements):
        raise UsageError(f"{where}: empty requirement (join packages with +)")
    for requirement in requirements:
        _check_requirement(requirement, where)
    return _finish(_label(spec, requirements), requirements, mode, sleep_s, None, cleanup, "",
                   config or {}, inline=True)


def from_config(name: str, table: Mapping[str, Any], config: Mapping[str, Any]) -> Strategy:
    """A named strategy from its ``[strategies.NAME]`` table."""
    where = f"strategy {name}"
    if not isinstance(table, Mapping):
        raise UsageError(f"{where}: must be a table")
    unknown = set(table) - {"requirements", "mode", "sleep", "python", "cleanup", "description"}
    if unknown:
        raise UsageError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    requirements = table.get("requirements", [])
    if isinstance(requirements, str):
        requirements = [requirements]
    if not isinstance(requirements, list) or not all(isinstance(r, str) for r in requirements):
        raise UsageError(f"{where}: requirements must be a list of strings")
    for requirement in requirements:
        _check_requirement(requirement, where)
    mode_text = table.get("mode", "none")
    if not isinstance(mode_text, str):
        raise UsageError(f"{where}: mode must be a string")
    mode, sleep_s, inline_cleanup = _mode(mode_text, where)
    if "sleep" in table:
        sleep = table["sleep"]
        if isinstance(sleep, bool) or not isinstance(sleep, int | float) or sleep < 0:
            raise UsageError(f"{where}: sleep must be a number of seconds")
        sleep_s = float(sleep)
    python = table.get("python")
    if python is not None and not isinstance(python, str):
        raise UsageError(f"{where}: python must be a path or a version string")
    if not requirements and python is None:
        raise UsageError(f"{where}: give requirements, or the python that has the client")
    cleanup = table.get("cleanup")
    if cleanup is not None and not isinstance(cleanup, str):
        raise UsageError(f"{where}: cleanup must be a 'module:function' string")
    if cleanup is not None and inline_cleanup is not None and cleanup != inline_cleanup:
        raise UsageError(f"{where}: mode names {inline_cleanup}, cleanup {cleanup}: keep one")
    cleanup = cleanup or inline_cleanup
    description = str(table.get("description", ""))
    return _finish(
        name, tuple(requirements), mode, sleep_s, python, cleanup, description, config
    )


def _split(items: list[str]) -> list[str]:
    """Comma-separated names/specs; a piece starting with a version operator continues a spec
    (``etcd-client-py>=0.4,<0.5``)."""
    pieces: list[str] = []
    for item in items:
        for piece in item.split(","):
            piece = piece.strip()
            if pieces and piece[:1] in ("<", ">", "=", "!", "~"):
                pieces[-1] += "," + piece
            elif piece:
                pieces.append(piece)
    return pieces


def resolve(names_or_specs: list[str], config: Mapping[str, Any]) -> list[Strategy]:
    """Strategies by name (from ``config["strategies"]``) or inline spec, in order, once each."""
    named: Mapping[str, Any] = config.get("strategies", {})
    clients = {canonical_name(k) for k in config.get("clients", {})}
    found: dict[str, Strategy] = {}
    for spec in _split(names_or_specs):
        if spec in named:
            strategy = from_config(spec, named[spec], config)
        else:
            bare = re.fullmatch(_NAME, spec) is not None
            if bare and canonical_name(spec) not in clients:
                close = difflib.get_close_matches(spec, list(named), n=3, cutoff=0.5)
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                raise UsageError(
                    f"unknown strategy {spec!r}{hint}; name one from `shutdown-harness list`"
                    " or give packages, e.g. etcd-client-py==0.5.1@explicit"
                )
            strategy = parse_inline(spec, config)
        same = found.get(strategy.name)
        if same is not None and same.requirements != strategy.requirements:
            strategy = replace(strategy, name=spec)  # two local builds of one version
        found.setdefault(strategy.name, strategy)
    return list(found.values())


_PROBE = """
import importlib, json, sys
if sys.argv[2:]:
    sys.path[0:1] = sys.argv[2:3]  # the scenario's folder, first, as the child wrapper does
module, _, attr = sys.argv[1].partition(":")
try:
    found = callable(getattr(importlib.import_module(module), attr, None))
    error = None
except Exception as e:
    found, error = False, f"{type(e).__name__}: {e}"
print(json.dumps({"found": found, "error": error}))
"""


def check_mode(strategy: Strategy, python: Path, folders: Iterable[Path] = ()) -> None:
    """Raise UsageError when the strategy's Python lacks what its cleanup mode calls.

    ``folders``: the folders of the scenarios it will run; the function is looked up with each
    first on the import path, as the child wrapper puts its scenario's folder (a cleanup module
    may live next to the scenario). No folder: the strategy's packages only."""
    if strategy.mode not in _CLEANUP_MODES:
        return
    if strategy.cleanup is None:  # from_config/parse_inline never let this through
        raise UsageError(f"strategy {strategy.name}: mode {strategy.mode} needs a cleanup")
    candidates: list[str | None] = [*dict.fromkeys(str(f) for f in folders)]
    for folder in candidates or [None]:
        try:
            done = subprocess.run(
                [str(python), "-c", _PROBE, strategy.cleanup, *([folder] if folder else [])],
                capture_output=True,
                text=True,
                timeout=120,
            )
            verdict = json.loads(done.stdout.strip().splitlines()[-1])
        except (OSError, subprocess.TimeoutExpired, IndexError, json.JSONDecodeError) as e:
            raise UsageError(f"strategy {strategy.name}: cannot run {python}: {e}") from None
        if verdict["found"]:
            continue
        versions = _versions_text(strategy, python)
        what = versions or "the installed packages"
        notes = [f"looked in {folder} too"] if folder else []
        notes += [verdict["error"]] if verdict["error"] else []
        why = f" ({'; '.join(notes)})" if notes else ""
        raise UsageError(
            f"strategy {strategy.name}: mode {strategy.mode} calls {strategy.cleanup}(), which"
            f" {what} does not have{why}"
        )


def _versions_text(strategy: Strategy, python: Path) -> str:
    try:
        versions = installed_versions(python)
    except UsageError:
        return ""
    return " + ".join(f"{d} {versions[d]}" for d in strategy.distributions if d in versions)
