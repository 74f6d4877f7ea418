"""Evidence bundle: a campaign folder -> a folder (and .tar.gz) to post upstream as it is.

    BUNDLE/
      ISSUE.md         at most 60,000 characters, whatever the campaign: title, which cell the
                       bundle is about and why, rates with intervals and p-values, per
                       signature its explanation and upstream links (signatures.toml), the top
                       frames of the crashing thread and one trimmed stderr exemplar; how to
                       reproduce; the environment; the list of the files below
      reproduce.py     shutdown_harness/reproducer.py with its CONFIG block filled in: runs the
                       scenario in fresh child processes, each in a fresh folder, and takes
                       exactly the endpoints the scenario's SERVICES need (--NAME HOST:PORT)
      scenario/        the scenario file and the local modules it imports (e.g. _clients.py)
      COMMAND.txt      how to rerun: reproduce.py, and the campaign with shutdown-harness,
                       with paths inside the bundle only
      results.jsonl    the raw records; campaign.json the plan and environment
      report.md, report.html, report.json
      artifacts/       every exemplar run's full stdout, stderr and gdb backtrace (all threads)
    BUNDLE.tar.gz

The cell (scenario x strategy x load) is the one `--scenario`/`--strategy` name, else the
newest release that still fails at shutdown (versions compared with `packaging.version`):
upstream acts on the newest release, not on the oldest one that fails most surely.
"""

from __future__ import annotations

import ast
import dataclasses
import pprint
import re
import shlex
import shutil
import tarfile
from importlib import resources
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import InvalidWheelFilename, parse_wheel_filename
from packaging.version import InvalidVersion, Version
from shutdown_harness import __version__
from shutdown_harness.aggregate import Aggregate, Cell, SignatureStat, load_campaign
from shutdown_harness.discovery import BUILTIN_DIR, DEFAULT_SERVICES
from shutdown_harness.errors import UsageError
from shutdown_harness.reports import prepare, render
from shutdown_harness.reports._common import (
    ReportData,
    artifact_dir,
    crashing_thread,
    env_rows,
    verdicts,
)
from shutdown_harness.reports.markdown import cells_table, escape
from shutdown_harness.signatures import rule_by_id

__all__ = [
    "ISSUE_LIMIT",
    "Bundle",
    "Choice",
    "build_bundle",
    "choose_cell",
    "release_of",
    "reproducer_source",
    "scenario_path",
    "scenario_services",
]

#: GitHub takes an issue body of up to 65,536 characters; leave room for the poster's words.
ISSUE_LIMIT = 60_000
_BUNDLE_MARK = "ISSUE.md"
_ARTIFACT_FILES = ("stderr.txt", "stdout.txt", "backtrace.txt")
_MAX_SIGNATURES = 3
_MAX_FRAMES = 12
_MAX_FRAME_CHARS = 200
_STDERR_HEAD, _STDERR_TAIL, _MAX_STDERR_CHARS = 12, 20, 3_000
_MAX_TABLE_ROWS = 30
_MAX_VERDICTS = 10
_MAX_SCENARIO_CHARS = 6_000
_SCENARIO_DIR = "scenario"
_CONFIG_START = "# -- CONFIG:"
_CONFIG_END = "# -- end of CONFIG"


@dataclasses.dataclass(frozen=True)
class Choice:
    """The cell a bundle is about, and why that one."""

    cell: Cell
    reason: str


@dataclasses.dataclass(frozen=True)
class Bundle:
    """A written bundle: its folder, its tarball, the cell it is about."""

    path: Path
    tarball: Path
    choice: Choice

    def size(self) -> int:
        """Bytes of every file in the folder."""
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())


# --------------------------------------------------------------------------------------------
# Which cell


def _requirements(agg: Aggregate, cell: Cell) -> list[str]:
    """What to pip install: the cell's recorded client versions, else the strategy's spec."""
    versions = [v for v in cell.client_versions if "==" in v]
    if versions:
        return sorted({part for v in versions for part in v.split("+")})
    spec = (agg.campaign.get("strategies") or {}).get(cell.strategy) or {}
    return [str(r) for r in spec.get("requirements") or []]


def release_of(agg: Aggregate, cell: Cell) -> tuple[str, Version] | None:
    """(distribution, version) of the first pinned package of the cell, or None."""
    for text in _requirements(agg, cell):
        name = Path(text).name
        if name.endswith(".whl"):  # a local wheel: its file name says
            try:
                dist, version, _, _ = parse_wheel_filename(name)
            except InvalidWheelFilename:
                continue
            return str(dist), version
        try:
            requirement = Requirement(text)
        except InvalidRequirement:
            continue
        for spec in requirement.specifier:
            if spec.operator in ("==", "===") and "*" not in spec.version:
                try:
                    return requirement.name, Version(spec.version)
                except InvalidVersion:
                    continue
    return None


def _fails_at_shutdown(cell: Cell) -> bool:
    return any(s.phases.get("finalization") for s in cell.signatures.values())


def _release_text(agg: Aggregate, cell: Cell) -> str:
    release = release_of(agg, cell)
    return f"{release[0]} {release[1]}" if release else f"`{cell.strategy}`"


def choose_cell(agg: Aggregate, scenario: str | None = None,
                strategy: str | None = None) -> Choice:
    """The cell to report: the one named, else the newest release that still fails at shutdown
    (then the surest failure among that release's cells)."""
    cells = agg.cells
    if scenario is not None:
        cells = [c for c in cells if c.scenario == scenario]
        if not cells:
            raise UsageError(f"no scenario {scenario!r} in this campaign"
                             f" (it has: {', '.join(agg.scenarios)})")
    if strategy is not None:
        cells = [c for c in cells if c.strategy == strategy]
        if not cells:
            known = ", ".join(dict.fromkeys(c.strategy for c in agg.cells
                                            if scenario in (None, c.scenario)))
            raise UsageError(f"no strategy {strategy!r} in this campaign (it has: {known})")
    failing = [c for c in cells if c.failures]
    if not failing:
        which = " for that cell" if scenario or strategy else " in this campaign"
        raise UsageError(f"no failures{which}: nothing to report upstream")

    def surest(c: Cell) -> tuple[float, int]:
        return c.interval()[0], c.failures

    if scenario is not None and strategy is not None:
        cell = max(failing, key=surest)
        return Choice(cell, f"named with --scenario {scenario} --strategy {strategy}")
    at_shutdown = [c for c in failing if _fails_at_shutdown(c)]
    pool = at_shutdown or failing
    versioned = [c for c in pool if release_of(agg, c) is not None]
    named = ("--scenario " + scenario if scenario else "") + \
            ("--strategy " + strategy if strategy else "")
    lead = f"among the cells of {named}, " if named else ""
    if not versioned:
        cell = max(pool, key=surest)
        return Choice(cell, lead + "the surest failure (highest lower bound of the failure"
                      " rate): no strategy pins a release")
    cell = max(versioned, key=lambda c: (release_of(agg, c)[1], surest(c)))  # type: ignore[index]
    newest = release_of(agg, cell)
    assert newest is not None
    reason = [lead + f"the newest release that still fails: {newest[0]} {newest[1]}"
              f" ({cell.failures}/{cell.runs} runs, {cell.rate_text()})"]
    newer_clean = sorted(
        {_release_text(agg, c) + f" ({c.failures}/{c.runs})" for c in cells
         if c.scenario == cell.scenario and (r := release_of(agg, c)) is not None
         and r[0] == newest[0] and r[1] > newest[1] and not _fails_at_shutdown(c)})
    if newer_clean:
        reason.append("newer without failures at shutdown: " + ", ".join(newer_clean))
    older = sorted({str(r[1]) for c in pool if c is not cell
                    and (r := release_of(agg, c)) is not None and r[1] < newest[1]},
                   key=Version)
    if older:
        reason.append("older releases that fail too: " + ", ".join(older))
    if at_shutdown and len(at_shutdown) < len(failing):
        reason.append("cells whose failures are all during the work were passed over")
    return Choice(cell, "; ".join(reason))


# --------------------------------------------------------------------------------------------
# The scenario and its reproducer


def scenario_path(agg: Aggregate, scenario: str) -> Path | None:
    """Where the scenario's source is: campaign.json's cells argv, `scenarios_paths`, or the
    built-in scenarios folder."""
    campaign = agg.campaign
    candidates: list[Path] = []
    for key, info in (campaign.get("cells") or {}).items():
        if key.split("/")[0] == scenario and isinstance(info, dict):
            candidates += [Path(a) for a in info.get("argv") or []
                           if str(a).endswith(".py") and not str(a).endswith("child.py")]
    paths = campaign.get("scenarios_paths")
    if isinstance(paths, dict) and paths.get(scenario):
        candidates.append(Path(paths[scenario]))
    candidates += [Path(scenario), BUILTIN_DIR / f"{scenario}.py",
                   BUILTIN_DIR / f"{scenario.replace('-', '_')}.py"]
    for path in candidates:
        if path.suffix == ".py" and path.is_file():
            return path
    return None


def _imports(source: str) -> list[str]:
    """Top-level module names that `source` imports."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module.split(".")[0])
    return list(dict.fromkeys(names))


def _helpers(path: Path) -> list[Path]:
    """Local modules the scenario imports, transitively: files beside it first, then the
    built-in scenarios' helpers (``_clients.py``), which the child finds last on sys.path."""
    found: dict[str, Path] = {}
    folders = [path.parent, BUILTIN_DIR]

    def visit(source: str) -> None:
        for name in _imports(source):
            if name in found or name == path.stem:
                continue
            for folder in folders:
                if (folder / f"{name}.py").is_file():
                    found[name] = folder / f"{name}.py"
                    visit(found[name].read_text(encoding="utf-8"))
                    break

    visit(path.read_text(encoding="utf-8"))
    return list(found.values())


def _constant(source: str, name: str) -> Any:
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            try:
                return ast.literal_eval(value)
            except ValueError:
                return None
    return None


def scenario_services(agg: Aggregate, source: str | None) -> list[dict[str, str]]:
    """The services the scenario declares (its SERVICES; a `--command` campaign: those the
    campaign started), each with the environment variable that carries its endpoint."""
    started = agg.campaign.get("services") or {}
    if source is None:
        names = list(started)
    else:
        declared = _constant(source, "SERVICES")
        if declared is None:
            declared = DEFAULT_SERVICES
        names = [declared] if isinstance(declared, str) else list(declared)
    out = []
    for name in names:
        info = started.get(name) if isinstance(started, dict) else None
        env = info.get("env") if isinstance(info, dict) else None
        out.append({"name": str(name),
                    "env": str(env or "SHUTDOWN_HARNESS_" + re.sub(r"\W", "_", name).upper())})
    return out


def _template() -> str:
    return resources.files("shutdown_harness").joinpath("reproducer.py").read_text("utf-8")


def reproducer_source(agg: Aggregate, cell: Cell, scenario_file: str | None) -> str:
    """The text of reproduce.py for `cell`: the shipped reproducer with its CONFIG filled in.
    `scenario_file` is the scenario's path inside the bundle (None for a --command campaign)."""
    plan = agg.campaign.get("plan") or {}
    spec = (agg.campaign.get("strategies") or {}).get(cell.strategy) or {}
    source = None
    if scenario_file is not None:
        path = scenario_path(agg, cell.scenario)
        source = path.read_text(encoding="utf-8") if path else None
    command = shlex.split(str(plan["command"])) if plan.get("command") else None
    timeout = plan.get("timeout") or (source and _constant(source, "TIMEOUT")) or 30.0
    config = {
        "title": _title(agg, cell),
        "scenario": cell.scenario,
        "scenario_file": scenario_file,
        "command": command,
        "services": scenario_services(agg, source if command is None else None),
        "requirements": _requirements(agg, cell),
        "mode": str(spec.get("mode") or "none"),
        "cleanup": spec.get("cleanup"),
        "sleep": float(spec.get("sleep") or spec.get("sleep_s") or 0.5),
        "jobs": int((cell.load or {}).get("jobs") or plan.get("jobs") or 4),
        "timeout": float(timeout),
        "measured": [f"{c.strategy}: {c.failures}/{c.runs} runs died, {c.rate_text()}"
                     f" ({c.load_label})" for c in agg.cells if c.scenario == cell.scenario],
    }
    text = _template()
    start = text.index(_CONFIG_START)
    end = text.index(_CONFIG_END)
    block = (f"{_CONFIG_START} filled in by shutdown-harness {__version__} evidence\n"
             f"CONFIG: dict[str, Any] = {pprint.pformat(config, width=96, sort_dicts=False)}\n")
    return text[:start] + block + text[end:]


def _reproduce_command(services: list[dict[str, str]], jobs: int) -> str:
    endpoints = " ".join(f"--{s['name'].lower().replace('_', '-')} 127.0.0.1:PORT"
                         for s in services)
    return " ".join(p for p in ("python reproduce.py", endpoints, f"--runs 200 --jobs {jobs}")
                    if p)


# --------------------------------------------------------------------------------------------
# ISSUE.md


def _title(agg: Aggregate, cell: Cell) -> str:
    sig = cell.top_signatures(1)[0]
    packages = ", ".join(_requirements(agg, cell)) or cell.strategy
    when = "at interpreter shutdown" if sig.phase == "finalization" else f"({sig.phase} phase)"
    what = {"crash": "Crash", "hang": "Hang", "error": "Error exit"}.get(sig.category, "Failure")
    outcome = sig.outcomes.most_common(1)[0][0] if sig.outcomes else sig.category
    outcome = outcome.split(":", 1)[-1]
    return (f"{what} {when} ({outcome}, {sig.signature}) with {packages}: "
            f"{cell.failures}/{cell.runs} runs ({cell.rate_text()})")


def _trim_line(line: str, limit: int = _MAX_FRAME_CHARS) -> str:
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _trimmed_stderr(text: str, where: str) -> str:
    lines = [_trim_line(line, 300) for line in text.strip().splitlines()]
    if len(lines) > _STDERR_HEAD + _STDERR_TAIL:
        cut = len(lines) - _STDERR_HEAD - _STDERR_TAIL
        lines = [*lines[:_STDERR_HEAD], f"... ({cut} lines cut: the whole stderr is {where})",
                 *lines[-_STDERR_TAIL:]]
    out = "\n".join(lines)
    if len(out) > _MAX_STDERR_CHARS:
        out = out[:_MAX_STDERR_CHARS].rsplit("\n", 1)[0]
        out += f"\n... (cut: the whole stderr is {where})"
    return out or "(empty: the process died without a message)"


def _top_frames(backtrace: str | None, exemplar: dict[str, Any]) -> str | None:
    thread = crashing_thread(backtrace) if backtrace else None
    if thread:
        lines = thread.splitlines()
        head, frames = lines[0], [ln for ln in lines[1:] if ln.lstrip().startswith("#")]
        shown = [_trim_line(f.strip()) for f in frames[:_MAX_FRAMES]]
        if len(frames) > _MAX_FRAMES:
            shown.append(f"... ({len(frames) - _MAX_FRAMES} more frames)")
        return "\n".join([head, *shown])
    recorded = exemplar.get("frames")
    if recorded:
        names = recorded if isinstance(recorded, list) else str(recorded).split(" | ")
        return "\n".join(f"#{i} {_trim_line(str(n))}" for i, n in enumerate(names[:_MAX_FRAMES]))
    return None


def _read(path: Path | None) -> str | None:
    if path is None or not path.is_file():
        return None
    return path.read_text(encoding="utf-8", errors="replace")


def _signature_section(agg: Aggregate, cell: Cell, sig: SignatureStat) -> list[str]:
    ex = sig.exemplar or {}
    phase = {"finalization": "after the work completed, during interpreter finalization",
             "work": "during the work"}.get(sig.phase, sig.phase)
    out = [f"### `{sig.signature}`", ""]
    try:
        rule = rule_by_id(sig.signature.split(":", 1)[0])
    except KeyError:
        rule = None
    if rule is not None:
        out += [rule.explanation, ""]
        if rule.upstream:
            out += ["Reported upstream: " + ", ".join(rule.upstream), ""]
    outcomes = ", ".join(f"{o} ×{n}" for o, n in sig.outcomes.most_common())
    out += [f"{sig.count} of {cell.runs} runs ({sig.category}, {outcomes}), {phase}.", ""]
    folder = artifact_dir(agg, ex)
    rel = Path(str(ex["artifacts"])).as_posix() if folder else None
    backtrace = _read(folder / "backtrace.txt") if folder else None
    frames = _top_frames(backtrace, ex)
    if frames:
        out += ["Top frames of the crashing thread (gdb):", "", "```", frames, "```", ""]
    stderr = _read(folder / "stderr.txt") if folder else None
    where = f"in `{rel}/stderr.txt`" if rel else "not saved"
    out += [f"stderr of run `{ex.get('run_id')}`:", "", "```",
            _trimmed_stderr(stderr if stderr is not None else str(ex.get("stderr_tail") or ""),
                            where), "```", ""]
    if rel:
        saved = [n for n in _ARTIFACT_FILES if folder and (folder / n).is_file()]
        out += [f"Full output of this run: {', '.join(f'`{rel}/{n}`' for n in saved)}"
                + (" (gdb `thread apply all bt`: every thread)" if "backtrace.txt" in saved
                   else "") + ".", ""]
    return out


def _scenario_view(agg: Aggregate, scenario: str) -> ReportData:
    """The aggregate cut down to one scenario, for the tables of ISSUE.md."""
    cells = [c for c in agg.cells if c.scenario == scenario]
    comparisons = [cc for cc in agg.comparisons if cc.scenario == scenario]
    return ReportData(dataclasses.replace(agg, cells=cells, comparisons=comparisons))


def _issue(agg: Aggregate, choice: Choice, reproduce: str | None,
           scenario_files: list[str]) -> str:
    cell = choice.cell
    view = _scenario_view(agg, cell.scenario)
    out = [f"# {_title(agg, cell)}", "",
           f"This report is about scenario `{cell.scenario}` with `{cell.strategy}`"
           f" ({cell.load_label}): {choice.reason}.", ""]
    sentences = [s for _, s in verdicts(view.agg)]
    if sentences:
        out += ["## Summary", ""]
        out += [f"- {s}" for s in sentences[:_MAX_VERDICTS]]
        if len(sentences) > _MAX_VERDICTS:
            out.append(f"- ... {len(sentences) - _MAX_VERDICTS} more comparisons in `report.md`")
        out.append("")
    table = cells_table(view)
    if len(table) - 2 > _MAX_TABLE_ROWS:
        rest = len(table) - 2 - _MAX_TABLE_ROWS
        table = table[: 2 + _MAX_TABLE_ROWS] + [f"| ... {rest} more rows in `report.md` |"]
    out += table
    out += ["", "Failure = a crash (death by a signal), error exit or hang; "
            f"{view.agg.infra} infra runs (service failures) are excluded. 95% Wilson intervals,"
            " Fisher's exact test (two-sided).", ""]
    specs = agg.campaign.get("strategies") or {}
    rows = []
    for c in view.agg.cells:
        reqs = ", ".join(_requirements(agg, c))
        mode = (specs.get(c.strategy) or {}).get("mode") or ""
        rows.append(f"| `{escape(c.strategy)}` | {escape(reqs)} |"
                    f" {escape(', '.join(sorted(c.pythons)))} | {escape(mode)} |")
    rows = list(dict.fromkeys(rows))
    out += ["| Strategy | Packages | Python | Cleanup mode |", "|---|---|---|---|",
            *rows[:_MAX_TABLE_ROWS], ""]
    out += [f"## Signatures of `{cell.strategy}`", ""]
    for sig in cell.top_signatures(_MAX_SIGNATURES):
        out += _signature_section(agg, cell, sig)
    more = len(cell.signatures) - _MAX_SIGNATURES
    if more > 0:
        out += [f"{more} more signatures in `report.md`.", ""]
    out += ["## Reproduce", ""]
    if reproduce is not None:
        reqs = " ".join(_requirements(agg, cell)) or "<the client package>"
        out += ["`reproduce.py` needs only the packages and the endpoints below; run it from the"
                " bundle's folder, which carries the scenario:", "",
                "```sh", f"python -m pip install {reqs}", reproduce, "```", "",
                "It runs the scenario in fresh child processes, each in a fresh folder, and"
                " prints how many died, during the work or after it (at shutdown). The rate"
                " depends on load: run as many children at once as there are CPUs, or more.",
                ""]
    else:
        out += ["No standalone reproducer: see `REPRODUCE-MISSING.txt`.", ""]
    if scenario_files:
        main_file = scenario_files[0]
        text = _read(Path(main_file)) or ""
        out += [f"<details><summary>Scenario <code>{escape(cell.scenario)}</code>"
                f" ({Path(main_file).name})</summary>", "", "```python",
                text.strip() if len(text) <= _MAX_SCENARIO_CHARS
                else text[:_MAX_SCENARIO_CHARS].rsplit("\n", 1)[0] + "\n# ... (cut: see the file)",
                "```", "", "</details>", ""]
    out += ["The whole campaign, with shutdown-harness: see `COMMAND.txt`.", ""]
    out += ["## Environment", "", "| | |", "|---|---|"]
    out += [f"| {escape(k)} | {escape(_trim_line(v, 300))} |" for k, v in env_rows(agg)]
    services = agg.campaign.get("services") or {}
    for name, info in services.items() if isinstance(services, dict) else ():
        version = info.get("version") if isinstance(info, dict) else None
        out.append(f"| service {escape(str(name))} | {escape(str(version or 'used'))} |")
    out += ["", "## Files in this bundle", "",
            "- `reproduce.py`: the standalone reproducer; `scenario/`: the scenario"
            + (" and the modules it imports" if len(scenario_files) > 1 else ""),
            "- `COMMAND.txt`: the commands that rerun it",
            "- `artifacts/`: every exemplar run's full stdout, stderr and gdb backtrace of all"
            " threads",
            "- `report.md`, `report.html` (chart), `report.json`: the whole campaign",
            "- `results.jsonl`: one record per run; `campaign.json`: the plan and environment",
            ""]
    if agg.notes:
        out += ["Notes:", ""] + [f"- {escape(_trim_line(n, 400))}" for n in agg.notes[:10]] + [""]
    return _cap("\n".join(out))


def _cap(text: str, limit: int = ISSUE_LIMIT) -> str:
    """Cut at a line boundary so that the whole stays within `limit` characters."""
    if len(text) <= limit:
        return text
    note = "\n\n... (ISSUE.md cut at its size limit: the rest is in `report.md` and `artifacts/`)\n"
    head = text[: limit - len(note)].rsplit("\n", 1)[0]
    if head.count("```") % 2:  # close an open code block
        head = head[: limit - len(note) - 4] + "\n```"
    return head + note


# --------------------------------------------------------------------------------------------
# The bundle


def _copy_exemplars(agg: Aggregate, out: Path, scenario: str) -> None:
    for cell in agg.cells:
        if cell.scenario != scenario:
            continue
        for sig in cell.top_signatures():
            source = artifact_dir(agg, sig.exemplar)
            if source is None or agg.directory is None:
                continue
            target = out / source.relative_to(agg.directory)
            target.mkdir(parents=True, exist_ok=True)
            for name in _ARTIFACT_FILES:
                if (source / name).is_file():
                    shutil.copyfile(source / name, target / name)


def _copy_scenario(agg: Aggregate, cell: Cell, out: Path) -> list[Path]:
    """The scenario file and its helpers into out/scenario/; the copied paths, scenario first."""
    if (agg.campaign.get("plan") or {}).get("command"):
        return []
    path = scenario_path(agg, cell.scenario)
    if path is None:
        raise UsageError(f"cannot find the source of scenario {cell.scenario!r} "
                         "(not in campaign.json nor in the scenarios folder)")
    folder = out / _SCENARIO_DIR
    folder.mkdir()
    copied = []
    for source in [path, *_helpers(path)]:
        shutil.copyfile(source, folder / source.name)
        copied.append(folder / source.name)
    return copied


def _portable(arg: str) -> str:
    """A strategy or argument without this machine's absolute paths (a local wheel -> its name)."""
    return re.sub(r"(?:/[^\s/+@,]+)+/([^\s/+@,]+\.(?:whl|tar\.gz|zip))", r"\1", arg)


def _strategy_spec(agg: Aggregate, name: str) -> str:
    """A strategy as an inline spec that runs anywhere: its packages (a local file by its
    name) and its mode, since the recipient has neither this machine's paths nor its config."""
    spec = (agg.campaign.get("strategies") or {}).get(name) or {}
    requirements = spec.get("requirements") or []
    if not requirements:
        return _portable(name)
    text = "+".join(_portable(str(r)) for r in requirements)
    mode = str(spec.get("mode") or "none")
    if mode != "none":
        suffix = name.rpartition("@")[2]
        text += "@" + (suffix if suffix.startswith(mode) else mode)
    return text


def _command_txt(agg: Aggregate, cell: Cell, scenario_rel: str | None,
                 reproduce: str | None) -> str:
    plan = agg.campaign.get("plan") or {}
    lines = []
    if reproduce:
        lines += ["# the standalone reproducer (run in this folder)", reproduce, ""]
    strategies = [c.strategy for c in agg.cells if c.scenario == cell.scenario]
    if plan.get("command"):
        args = ["shutdown-harness", "run", "--command", str(plan["command"])]
    else:
        args = ["shutdown-harness", "run", "--scenario", str(scenario_rel)]
    specs = [_strategy_spec(agg, s) for s in dict.fromkeys(strategies)]
    for spec in specs:
        args += ["--strategy", spec]
    for key, opt in (("runs", "--runs"), ("jobs", "--jobs"), ("timeout", "--timeout"),
                     ("seed", "--seed"), ("until_halfwidth", "--until-halfwidth")):
        if plan.get(key) is not None:
            args += [opt, f"{plan[key]:g}" if isinstance(plan[key], float) else str(plan[key])]
    args += ["--out", "campaign-rerun"]
    lines += ["# the campaign of this scenario, with shutdown-harness (run in this folder)",
              shlex.join(args)]
    if any(re.search(r"\.(?:whl|tar\.gz|zip)(?:$|[+@])", spec) for spec in specs):
        lines.append("# (local wheels are named by their file name: put them in this folder)")
    return "\n".join(lines) + "\n"


def build_bundle(directory: Path, out: Path, gates: dict[str, Any] | None = None, *,
                 scenario: str | None = None, strategy: str | None = None) -> Bundle:
    """Write the evidence bundle folder `out` and `out`.tar.gz.

    `out` must not exist, be empty, or be an earlier bundle (it is then replaced).
    """
    directory, out = Path(directory), Path(out)
    agg = load_campaign(directory)
    choice = choose_cell(agg, scenario, strategy)
    cell = choice.cell
    if out.exists():
        if not out.is_dir() or (any(out.iterdir()) and not (out / _BUNDLE_MARK).exists()):
            raise UsageError(f"{out} exists and is not an evidence bundle: choose another --out")
        if out.resolve() == directory.resolve():
            raise UsageError("--out must differ from the campaign folder")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    reproduce: str | None = None
    scenario_rel: str | None = None
    copied: list[Path] = []
    try:
        copied = _copy_scenario(agg, cell, out)
        scenario_rel = copied[0].relative_to(out).as_posix() if copied else None
        source = copied[0].read_text(encoding="utf-8") if copied else None
        plan = agg.campaign.get("plan") or {}
        services = scenario_services(agg, source if not plan.get("command") else None)
        (out / "reproduce.py").write_text(reproducer_source(agg, cell, scenario_rel),
                                          encoding="utf-8")
        (out / "reproduce.py").chmod(0o755)
        jobs = int((cell.load or {}).get("jobs") or plan.get("jobs") or 4)
        reproduce = _reproduce_command(services, jobs)
    except UsageError as e:
        (out / "REPRODUCE-MISSING.txt").write_text(f"{e}\n", encoding="utf-8")
    (out / "ISSUE.md").write_text(_issue(agg, choice, reproduce, [str(p) for p in copied]),
                                  encoding="utf-8")
    (out / "COMMAND.txt").write_text(_command_txt(agg, cell, scenario_rel, reproduce),
                                     encoding="utf-8")
    for name in ("results.jsonl", "campaign.json"):
        if (directory / name).is_file():
            shutil.copyfile(directory / name, out / name)
    data = prepare(agg, gates if gates is not None else {})
    for fmt, name in (("markdown", "report.md"), ("html", "report.html"), ("json", "report.json")):
        (out / name).write_text(render(data, fmt), encoding="utf-8")
    _copy_exemplars(agg, out, cell.scenario)
    tarball = out.with_name(out.name + ".tar.gz")
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(out, arcname=out.name)
    return Bundle(out, tarball, choice)
