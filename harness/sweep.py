"""``sweep PACKAGE --scenario S``: one scenario across a package's releases, in one campaign.

    find the releases (releases.py) -> install each (not-installable: why) -> one campaign of
    strategies PACKAGE==V, interleaved -> per release: measured / not-runnable / not-applicable
    -> change points (adjacent measured releases, Fisher) -> sweep.json, table, HTML chart

The releases come from the package index this machine is configured for (uv's and pip's
settings), narrowed by ``--versions`` (a list, which also works offline, or a specifier);
pre-releases and yanked releases only when asked. Every installable release is a strategy
``PACKAGE==V`` of the same campaign, so the plan runs them round-robin under one load (and
adaptively with ``--until-halfwidth``). The helpers here (release lists, installing one
release, measuring a batch) are what ``bisect`` (bisection.py) measures with too.
"""

from __future__ import annotations

import io
import json
import math
import platform
import re
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version
from rich.console import Console
from rich.table import Table
from rich.text import Text
from shutdown_harness import discovery, reports, stats, strategies, virtualenv
from shutdown_harness import releases as index
from shutdown_harness.aggregate import load_campaign
from shutdown_harness.errors import EXIT_OK, UsageError
from shutdown_harness.plan import Plan
from shutdown_harness.store import read_campaign
from shutdown_harness.virtualenv import find_python
from shutdown_harness.workflow import Options, run

__all__ = [
    "SWEEP_FILE",
    "Release",
    "strategy_of",
    "check_package",
    "find_versions",
    "install",
    "resolve_python",
    "python_version",
    "unsupported",
    "run_campaign",
    "results_of",
    "change_points",
    "render_table",
    "sweep_command",
]

SWEEP_FILE = "sweep.json"
Log = Callable[[str], None]


@dataclass
class Release:
    """One release in a sweep or a bisect, and what became of it."""

    version: Version
    status: str = "pending"  # measured | not-runnable | not-installable | not-applicable
    reason: str | None = None
    runs: int = 0
    failures: int = 0
    signatures: dict[str, int] = field(default_factory=dict)
    python: str | None = None

    @property
    def counted(self) -> bool:
        return self.status == "measured"

    @property
    def rate(self) -> float | None:
        return self.failures / self.runs if self.runs and self.counted else None

    def interval(self) -> tuple[float, float] | None:
        return stats.wilson_interval(self.failures, self.runs) if self.counted else None

    def rate_text(self) -> str:
        if self.status == "measured":
            return stats.format_rate(self.failures, self.runs)
        return f"{self.status}: {self.reason}" if self.reason else self.status

    def to_dict(self) -> dict[str, Any]:
        interval = self.interval()
        return {"version": str(self.version), "status": self.status, "reason": self.reason,
                "runs": self.runs, "failures": self.failures, "rate": self.rate,
                "interval": list(interval) if interval else None,
                "signatures": dict(self.signatures), "python": self.python}


def strategy_of(package: str, version: Version | str) -> str:
    return f"{package}=={version}"


# -- which releases --------------------------------------------------------------------------
def check_package(package: str) -> str:
    """The package name as given, if it is a valid distribution name."""
    if not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?", package):
        raise UsageError(f"{package!r} is not a package name")
    return package


def find_versions(package: str, spec: str | None, *, pre: bool = False, yanked: bool = False,
                  log: Log = lambda _: None) -> list[tuple[Version, str | None]]:
    """The releases to measure, oldest first, each with its Requires-Python: from the
    configured index, narrowed by ``spec``; an explicit list still works when the index
    cannot be reached."""
    try:
        releases = index.released_versions(package)
    except index.IndexUnreachable as e:
        if spec and not index.is_specifier(spec):
            log(f"{e}: measuring the versions as listed")
            return [(v, None) for v in index.select(package, spec, None)]
        raise
    requires = {r.version: r.requires_python for r in releases}
    chosen = index.select(package, spec, releases, pre=pre, yanked=yanked)
    return [(v, requires.get(v)) for v in chosen]


def python_version(python: str | None) -> str:
    """The version of the interpreter the virtualenvs are built with."""
    if python is None:
        return platform.python_version()
    done = subprocess.run([python, "-c", "import platform; print(platform.python_version())"],
                          capture_output=True, text=True, timeout=60)
    return done.stdout.strip()


def unsupported(requires_python: str | None, version: str) -> str | None:
    """Why a release's Requires-Python excludes this interpreter (None if it does not)."""
    if not requires_python or not version:
        return None
    try:
        if SpecifierSet(requires_python).contains(version, prereleases=True):
            return None
    except InvalidSpecifier:
        return None
    return f"requires Python {requires_python} (this is {version})"


def resolve_python(python: str | None) -> str | None:
    """``--python PATH|VERSION`` -> the interpreter's path, or None for the harness's own."""
    return None if python is None else find_python(python)


def install(package: str, version: Version, python: str | None, log: Log) -> str | None:
    """Build (or reuse) the release's virtualenv; None when it installs, else why not."""
    strategy = strategies.parse_inline(strategy_of(package, version))
    if python is not None:
        strategy = replace(strategy, python=python)
    try:
        virtualenv.ensure(strategy, progress=lambda msg: log(f"  {msg}"))
    except UsageError as e:
        text = str(e)
        _, cause, rest = text.partition("cause:")  # uv's resolver says why in one sentence
        why = rest if cause else text.split(": ", 1)[-1]
        return " ".join(why.split())[:240]
    return None


# -- measuring ---------------------------------------------------------------------------------
def run_campaign(*, scenario: str, strategies: Sequence[str], out: Path, runs: int | None,
                 config: Mapping[str, Any], stream: IO[str], argv: Sequence[str],
                 settings: Mapping[str, Any], with_reports: bool = True) -> int:
    """One ``run`` campaign through the workflow's public entry point."""
    plan = Plan(scenarios=(scenario,), strategies=tuple(strategies), runs=runs,
                **{k: v for k, v in settings.items() if v is not None})
    options = Options(out=out, config=dict(config), stream=stream, argv=tuple(argv),
                      with_reports=with_reports)
    return run(plan, options).code


def results_of(out: Path, package: str, releases: Sequence[Release]) -> None:
    """Fill each release's counts and status from a campaign folder (aggregate's cells)."""
    agg = load_campaign(out)
    not_applicable = read_campaign(out, missing_ok=True).get("not_applicable") or {}
    for release in releases:
        if release.status in ("not-installable",):
            continue
        name = strategy_of(package, release.version)
        why = next((v for k, v in not_applicable.items() if k.endswith(f"/{name}")), None)
        cells = [c for c in agg.cells if c.strategy == name]
        if why is not None and not cells:
            release.status, release.reason = "not-applicable", str(why)
            continue
        if not cells:
            continue
        release.runs = sum(c.runs for c in cells)
        release.failures = sum(c.failures for c in cells)
        release.signatures = {}
        for c in cells:
            for sig in c.top_signatures():
                release.signatures[sig.signature] = (release.signatures.get(sig.signature, 0)
                                                     + sig.count)
        release.python = ", ".join(sorted({p for c in cells for p in c.pythons})) or None
        blocked = [c.not_runnable for c in cells if c.not_runnable is not None]
        if blocked and len(blocked) == len(cells):
            release.status, release.reason = "not-runnable", blocked[0]
        else:
            release.status, release.reason = "measured", None


def change_points(releases: Sequence[Release],
                  alpha: float = stats.ALPHA) -> list[dict[str, Any]]:
    """Adjacent measured releases whose rates differ significantly (Fisher, two-sided)."""
    measured = [r for r in releases if r.counted and r.runs]
    out = []
    for before, after in zip(measured, measured[1:], strict=False):
        c = stats.compare(str(before.version), before.failures, before.runs,
                          str(after.version), after.failures, after.runs)
        if not math.isfinite(c.p_value) or c.p_value >= alpha:
            continue
        kind = "fixed in" if c.direction == "lower" else "broken in"
        out.append({"kind": kind, "version": str(after.version),
                    "previous": str(before.version), "p_value": c.p_value,
                    "sentence": f"{kind} {after.version}: {after.failures}/{after.runs} "
                                f"({after.rate_text()}) vs {before.failures}/{before.runs} "
                                f"({before.rate_text()}) on {before.version}, "
                                f"{stats.format_p(c.p_value)}"})
    return out


def render_table(data: Mapping[str, Any], color: bool = False) -> str:
    """The terminal view of sweep.json: one row per release in version order."""
    buf = io.StringIO()
    console = Console(file=buf, width=140, force_terminal=color, no_color=not color,
                      highlight=False)
    table = Table(title=f"{data['package']} / {data['scenario']}", title_justify="left")
    show_python = len({v.get("python") for v in data["versions"] if v.get("python")}) > 1
    for name, justify in (("Version", "left"), ("Status", "left"), ("Runs", "right"),
                          ("Fail", "right"), ("Failure rate [95% CI]", "right"),
                          ("Top signatures", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    if show_python:
        table.add_column("Python")
    marks = {p["version"]: p["kind"] for p in data.get("change_points", [])}
    for v in data["versions"]:
        measured = v["status"] == "measured"
        if measured:
            text = stats.format_rate(v["failures"], v["runs"])
            style = "red" if v["failures"] else "green"
        elif v["status"] == "not-runnable":  # the exception's type; the message below
            text, style = (v.get("reason") or "").split(":", 1)[0], "yellow"
        else:
            text, style = (v.get("reason") or "")[:48], "yellow"
        sigs = sorted(v["signatures"].items(), key=lambda kv: (-kv[1], kv[0]))[:2]
        version = v["version"] + (f"  ← {marks[v['version']]}" if v["version"] in marks else "")
        row: list[str | Text] = [version, v["status"], str(v["runs"] or ""),
                                 str(v["failures"]) if measured else "",
                                 Text(text, style=style),
                                 ", ".join(f"{s} ×{n}" for s, n in sigs) if measured else ""]
        if show_python:
            row.append(v.get("python") or "")
        table.add_row(*row)
    console.print(table)
    reasons: dict[str, list[str]] = {}
    for v in data["versions"]:
        if v["status"] != "measured" and v.get("reason"):
            reasons.setdefault(f"{v['status']}: {v['reason']}", []).append(v["version"])
    for reason, versions in reasons.items():
        console.print(" - ", Text(f"{', '.join(versions)} {reason}"), sep="")
    for point in data.get("change_points", []):
        console.print(" • ", Text(point["sentence"]), sep="")
    if not data.get("change_points"):
        console.print(" • no significant change between adjacent measured releases")
    return buf.getvalue()


def sweep_command(package: str, scenario: str, *, spec: str | None, runs: int | None,
                  until_halfwidth: float | None, out: Path, pre: bool = False,
                  yanked: bool = False, python: str | None = None,
                  settings: Mapping[str, Any] | None = None,
                  config: Mapping[str, Any] | None = None, stream: IO[str] | None = None,
                  argv: Sequence[str] = ()) -> int:
    """``shutdown-harness sweep``: exit 0 (1 when a gate of the campaign fails)."""
    stream = stream or sys.stdout

    def log(text: str) -> None:
        stream.write(text + "\n")
        stream.flush()

    check_package(package)
    (info,) = discovery.resolve([scenario])
    if (out / "campaign.json").exists():
        raise UsageError(f"{out} already holds a campaign: choose another --out")
    interpreter = resolve_python(python)
    found = find_versions(package, spec, pre=pre, yanked=yanked, log=log)
    log(f"{package}: {len(found)} release(s): {', '.join(str(v) for v, _ in found)}")
    releases = [Release(v) for v, _ in found]
    this_python = python_version(interpreter)
    for release, (_, requires) in zip(releases, found, strict=True):
        why = unsupported(requires, this_python) or install(package, release.version,
                                                            interpreter, log)
        if why is not None:
            release.status, release.reason = "not-installable", why
            log(f"not installable: {package}=={release.version}: {why}")
    runnable = [r for r in releases if r.status != "not-installable"]
    code = EXIT_OK
    if runnable:
        code = run_campaign(
            scenario=info.name if info.path.parent == discovery.BUILTIN_DIR else str(info.path),
            strategies=[strategy_of(package, r.version) for r in runnable], out=out, runs=runs,
            config=config or {}, stream=stream, argv=argv,
            settings={**(settings or {}), "until_halfwidth": until_halfwidth,
                      "python": interpreter},
            with_reports=False)
        results_of(out, package, releases)
    else:
        out.mkdir(parents=True, exist_ok=True)
    data = {"format": 1, "package": canonicalize_name(package), "scenario": info.name,
            "python": interpreter, "versions": [r.to_dict() for r in releases],
            "change_points": change_points(releases)}
    (out / SWEEP_FILE).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    if runnable:  # every report of the campaign, the HTML one with the release chart

        data_ = reports.prepare(out, (config or {}).get("gates") or {})
        reports.write_all(data_, out)
        code = max(code, 0 if data_.passed else 1)
    stream.write("\n" + render_table(data, color=stream.isatty()))
    log(f"sweep: {out / SWEEP_FILE}")
    return code
