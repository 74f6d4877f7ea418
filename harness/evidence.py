"""Evidence bundle: a campaign folder -> a folder (and .tar.gz) ready for an upstream issue.

    BUNDLE/
      ISSUE.md         title, verdicts, summary table with intervals across versions, signatures
                       with exemplar stderr and native backtrace, environment, how to reproduce
      reproduce.py     standalone: needs only the client and an etcd endpoint (see below)
      COMMAND.txt      the exact command that reruns the campaign with shutdown-harness
      results.jsonl    the raw records; campaign.json the plan and environment
      report.md, report.html, report.json
      artifacts/       stdout/stderr/backtrace of the exemplar runs (no core files)
    BUNDLE.tar.gz

`reproduce.py` inlines the failing scenario's source (and the sibling helper modules it imports,
such as `_clients.py`) and runs its `main()` in fresh child processes of itself, each of which
then exits normally, so interpreter finalization happens as it does for a user. It prints how
many children crashed and exits 1 when any did. A `--command` campaign's reproducer runs the
command instead.
"""

from __future__ import annotations

import ast
import json
import shlex
import shutil
import string
import tarfile
from pathlib import Path
from typing import Any

from shutdown_harness import MARKER, __version__
from shutdown_harness.aggregate import Aggregate, Cell, load_campaign
from shutdown_harness.discovery import BUILTIN_DIR
from shutdown_harness.errors import UsageError
from shutdown_harness.reports import prepare, render
from shutdown_harness.reports._common import (
    ReportData,
    artifact_dir,
    command_line,
    crashing_thread,
    env_rows,
    read_artifact,
    verdicts,
)
from shutdown_harness.reports.markdown import cells_table, escape

__all__ = ["build_bundle", "reproducer_source", "scenario_path", "focus_cell"]

_BUNDLE_MARK = "ISSUE.md"
_ARTIFACT_FILES = ("stderr.txt", "stdout.txt", "backtrace.txt")
_MAX_SIGNATURES = 3


def focus_cell(agg: Aggregate) -> Cell:
    """The cell the issue is about: the surest failure (highest lower bound, then count)."""
    failing = [c for c in agg.cells if c.failures]
    if not failing:
        raise UsageError("no failures in this campaign: nothing to report upstream")
    return max(failing, key=lambda c: (c.interval()[0], c.failures))


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
    builtin = BUILTIN_DIR
    candidates += [Path(scenario), builtin / f"{scenario}.py",
                   builtin / f"{scenario.replace('-', '_')}.py"]
    for path in candidates:
        if path.suffix == ".py" and path.is_file():
            return path
    return None


def _local_imports(source: str, folder: Path) -> list[str]:
    """Top-level modules imported by `source` that are files in `folder` (scenario helpers)."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module.split(".")[0])
    return [n for n in dict.fromkeys(names) if (folder / f"{n}.py").is_file()]


def _helpers(path: Path, source: str) -> dict[str, str]:
    """Sibling modules the scenario needs, transitively, in dependency order."""
    found: dict[str, str] = {}

    def visit(src: str) -> None:
        for name in _local_imports(src, path.parent):
            if name not in found and name != path.stem:
                text = (path.parent / f"{name}.py").read_text(encoding="utf-8")
                visit(text)
                found[name] = text

    visit(source)
    return found


def _literal(text: str) -> str:
    """A Python literal for `text`: a readable raw triple-quoted string when that is exact."""
    candidate = "r'''" + text + "'''"
    try:
        if ast.literal_eval(candidate) == text:
            return candidate
    except (SyntaxError, ValueError):
        pass
    return repr(text)


def _scenario_constant(source: str, name: str) -> Any:
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            try:
                return ast.literal_eval(node.value)
            except ValueError:
                return None
    return None


_TEMPLATE = string.Template('''\
#!/usr/bin/env python3
"""Standalone reproducer: $title

Generated by shutdown-harness $version from the scenario `$scenario`$origin.
It runs the scenario's body in fresh child processes of this script; each child then exits
normally, so the interpreter finalizes as it does for any user. The script counts how many
children died (a signal such as SIGABRT/SIGSEGV, or an error exit) and exits 1 if any did.

Needs only the client and an etcd endpoint:

    python -m pip install $requirements
    python reproduce.py --endpoint 127.0.0.1:2379 --runs 200 --jobs $jobs

What shutdown-harness measured (95% Wilson intervals, jobs per CPU matter):
$measured
"""

import argparse
import collections
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

MARKER = $marker
SCENARIO_NAME = $scenario_repr
SCENARIO_SOURCE = $source
HELPERS = $helpers
COMMAND = $command


def child():
    """One run: the scenario's main(), the work-done marker, then a normal interpreter exit."""
    import asyncio
    import faulthandler
    import inspect
    import linecache
    import types

    faulthandler.enable(all_threads=True)

    def load(name, source):
        filename = "<reproduce.py:%s.py>" % name
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        module = types.ModuleType(name)
        module.__file__ = filename
        sys.modules[name] = module
        exec(compile(source, filename, "exec"), module.__dict__)
        return module

    for name, source in HELPERS.items():
        load(name, source)
    scenario = load("scenario", SCENARIO_SOURCE)
    if inspect.iscoroutinefunction(scenario.main):
        asyncio.run(scenario.main())
    else:
        scenario.main()
    print(MARKER, flush=True)
    # Return: the interpreter finalizes now, with whatever the client left running.


def run_one(index, args):
    env = dict(os.environ)
    env["SHUTDOWN_HARNESS_ETCD"] = args.endpoint
    if args.valkey:
        env["SHUTDOWN_HARNESS_VALKEY"] = args.valkey
    env["SHUTDOWN_HARNESS_RUN_ID"] = "reproduce/%d" % index
    env["SHUTDOWN_HARNESS_SEED"] = str(index)
    argv = list(COMMAND) if COMMAND else [sys.executable, os.path.abspath(__file__), "--child"]
    if COMMAND:
        env["PYTHONFAULTHANDLER"] = "1"
    started = time.monotonic()
    try:
        proc = subprocess.run(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              timeout=args.timeout)
    except subprocess.TimeoutExpired as e:
        return index, None, (e.stderr or b"").decode(errors="replace"), False, args.timeout
    out = proc.stdout.decode(errors="replace")
    err = proc.stderr.decode(errors="replace")
    return index, proc.returncode, err, MARKER in out, time.monotonic() - started


def describe(returncode):
    if returncode is None:
        return "hang"
    if returncode < 0:
        try:
            return signal.Signals(-returncode).name
        except ValueError:
            return "signal %d" % -returncode
    return "exit %d" % returncode if returncode else "clean"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", default="127.0.0.1:2379", help="etcd host:port")
    parser.add_argument("--valkey", default=None, help="valkey host:port, if the scenario uses it")
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=$jobs, help="children run at once")
    parser.add_argument("--timeout", type=float, default=$timeout, help="seconds per child")
    parser.add_argument("--show", type=int, default=1, help="print stderr of the first N deaths")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child()
        return 0
    print("%s: %d runs, %d at a time, etcd at %s, %s" % (
        SCENARIO_NAME, args.runs, args.jobs, args.endpoint, sys.executable), flush=True)
    outcomes = collections.Counter()
    shown = 0
    deaths = 0
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for index, returncode, err, work_done, seconds in pool.map(
                lambda i: run_one(i, args), range(args.runs)):
            what = describe(returncode)
            outcomes[what] += 1
            if what == "clean":
                continue
            deaths += 1
            when = "after the work was done (at shutdown)" if work_done else "during the work"
            print("run %d: %s %s, %.2f s" % (index, what, when, seconds), flush=True)
            if shown < args.show:
                shown += 1
                print("---- stderr of run %d ----\\n%s\\n----" % (index, err.strip()[-4000:]))
    summary = ", ".join("%s %d" % kv for kv in sorted(outcomes.items(), key=lambda kv: -kv[1]))
    print("%d/%d runs died (%s)" % (deaths, args.runs, summary))
    return 1 if deaths else 0


if __name__ == "__main__":
    sys.exit(main())
''')


def reproducer_source(agg: Aggregate, cell: Cell | None = None) -> str:
    """The text of reproduce.py for `cell` (default: the focus cell)."""
    cell = cell or focus_cell(agg)
    plan = agg.campaign.get("plan") or {}
    command = None
    source = helpers = ""
    origin = ""
    if plan.get("command"):
        command = shlex.split(str(plan["command"]))
        source, helper_map = "", {}
    else:
        path = scenario_path(agg, cell.scenario)
        if path is None:
            raise UsageError(f"cannot find the source of scenario {cell.scenario!r} "
                             "(not in campaign.json nor in the scenarios folder)")
        source = path.read_text(encoding="utf-8")
        helper_map = _helpers(path, source)
        origin = f" ({path.name}" + (f" + {', '.join(f'{h}.py' for h in helper_map)})"
                                     if helper_map else ")")
    helpers = "{}"
    if helper_map:
        items = "".join(f"    {name!r}: {_literal(text)},\n" for name, text in helper_map.items())
        helpers = "{\n" + items + "}"
    timeout = plan.get("timeout") or _scenario_constant(source, "TIMEOUT") or 30.0
    measured = "\n".join(
        f"    {c.strategy:<28} {c.failures}/{c.runs} runs died: {c.rate_text()}"
        f" ({c.load_label})"
        for c in agg.cells if c.scenario == cell.scenario
    )
    return _TEMPLATE.substitute(
        title=_title(agg, cell),
        version=__version__,
        scenario=cell.scenario,
        scenario_repr=repr(cell.scenario),
        origin=origin,
        requirements=" ".join(_requirements(agg, cell)) or "<the client package>",
        jobs=int((cell.load or {}).get("jobs") or plan.get("jobs") or 4),
        timeout=repr(float(timeout)),
        measured=measured,
        marker=repr(MARKER),
        source=_literal(source),
        helpers=helpers,
        command=repr(command),
    )


def _requirements(agg: Aggregate, cell: Cell) -> list[str]:
    """What to pip install: the cell's recorded client versions, else the strategy's spec."""
    versions = [v for v in cell.client_versions if "==" in v]
    if versions:
        return sorted({part for v in versions for part in v.split("+")})
    spec = (agg.campaign.get("strategies") or {}).get(cell.strategy) or {}
    return [str(r) for r in spec.get("requirements") or []]


def _title(agg: Aggregate, cell: Cell) -> str:
    sig = cell.top_signatures(1)[0]
    packages = ", ".join(_requirements(agg, cell)) or cell.strategy
    when = "at interpreter shutdown" if sig.phase == "finalization" else f"({sig.phase} phase)"
    what = {"crash": "Crash", "hang": "Hang", "error": "Error exit"}.get(sig.category, "Failure")
    outcome = sig.outcomes.most_common(1)[0][0] if sig.outcomes else sig.category
    outcome = outcome.split(":", 1)[-1]
    return (f"{what} {when} ({outcome}, {sig.signature}) with {packages}: "
            f"{cell.failures}/{cell.runs} runs ({cell.rate_text()})")


def _issue(data: ReportData, cell: Cell, has_reproducer: bool) -> str:
    agg = data.agg
    out = [f"# {_title(agg, cell)}", ""]
    out += ["## Summary", ""]
    lines = [s for cc, s in verdicts(agg) if cc.scenario == cell.scenario] or \
        [s for _, s in verdicts(agg)]
    out += [f"- {s}" for s in lines] + [""] if lines else []
    out += cells_table(data)
    out += ["", f"Failure = a crash (death by a signal), error exit or hang; "
            f"{agg.infra} infra runs (service failures) are excluded. 95% Wilson intervals, "
            "Fisher's exact test.", ""]
    versions = []
    specs = agg.campaign.get("strategies") or {}
    for c in agg.cells:
        reqs = ", ".join(_requirements(agg, c))
        pythons = ", ".join(sorted(c.pythons))
        mode = (specs.get(c.strategy) or {}).get("mode") or ""
        versions.append(f"| `{escape(c.strategy)}` | {escape(reqs)} | {escape(pythons)} | "
                        f"{escape(mode)} |")
    out += ["| Strategy | Packages | Python | Cleanup mode |", "|---|---|---|---|",
            *dict.fromkeys(versions), ""]
    for sig in cell.top_signatures(_MAX_SIGNATURES):
        ex = sig.exemplar or {}
        phase = {"finalization": "after the work completed, during interpreter finalization",
                 "work": "during the work"}.get(sig.phase, sig.phase)
        out += [f"## Signature `{sig.signature}`", "",
                f"{sig.count} of {cell.runs} runs of `{cell.strategy}` ({sig.category}, "
                f"{', '.join(f'{o} ×{n}' for o, n in sig.outcomes.most_common())}), {phase}.",
                ""]
        if ex.get("frames"):
            frames = ex["frames"]
            joined = " | ".join(frames) if isinstance(frames, list) else str(frames)
            out += [f"Top native frames: `{joined}`", ""]
        stderr = read_artifact(agg, ex, "stderr.txt", max_lines=40) or ex.get("stderr_tail") or ""
        out += [f"Exemplar `{ex.get('run_id')}`, stderr:", "", "```",
                stderr.strip() or "(empty: the process died without a message)", "```", ""]
        backtrace = read_artifact(agg, ex, "backtrace.txt", max_lines=100_000)
        if backtrace:
            thread = crashing_thread(backtrace)
            if thread:
                out += ["Native backtrace of the thread that received the signal (gdb):", "",
                        "```", thread, "```", ""]
            out += ["<details><summary>All threads (gdb <code>thread apply all bt</code>)"
                    "</summary>", "", "```", backtrace.strip(), "```", "", "</details>", ""]
        elif ex.get("backtrace"):
            out += [f"Native backtrace: {ex['backtrace']}", ""]
    out += ["## Reproduce", ""]
    if has_reproducer:
        reqs = " ".join(_requirements(agg, cell)) or "<the client package>"
        jobs = int((cell.load or {}).get("jobs") or 4)
        out += ["`reproduce.py` (in this bundle) needs only the client and an etcd:", "",
                "```sh", f"python -m pip install {reqs}",
                f"python reproduce.py --endpoint 127.0.0.1:2379 --runs 200 --jobs {jobs}",
                "```", "",
                "It runs the scenario below in fresh child processes and prints how many died. "
                "The rate depends on load: run as many children at once as there are CPUs, or "
                "more.", ""]
        path = scenario_path(agg, cell.scenario)
        if path is not None:
            out += [f"<details><summary>Scenario <code>{escape(cell.scenario)}</code>"
                    "</summary>", "", "```python", path.read_text(encoding="utf-8").strip(),
                    "```", "", "</details>", ""]
    command = command_line(agg)
    if command:
        out += ["The whole campaign, with shutdown-harness (also in `COMMAND.txt`):", "",
                "```sh", command, "```", ""]
    out += ["## Environment", "", "| | |", "|---|---|"]
    out += [f"| {escape(k)} | {escape(v)} |" for k, v in env_rows(agg)]
    services = agg.campaign.get("services") or {}
    if services:
        out += [f"| services | {escape(json.dumps(services, sort_keys=True))} |"]
    out += ["", "## Files", "",
            "- `results.jsonl`: one record per run (run_id, returncode, signal, category, "
            "signature, phase, stderr tail, ...); `campaign.json`: the plan and environment",
            "- `report.html` (chart), `report.md`, `report.json`",
            "- `artifacts/`: full stdout, stderr and gdb backtrace of the exemplar runs", ""]
    if agg.notes:
        out += ["Notes:", ""] + [f"- {escape(n)}" for n in agg.notes] + [""]
    return "\n".join(out)


def _copy_exemplars(agg: Aggregate, out: Path) -> None:
    for cell in agg.cells:
        for sig in cell.top_signatures():
            source = artifact_dir(agg, sig.exemplar)
            if source is None or agg.directory is None:
                continue
            target = out / source.relative_to(agg.directory)
            target.mkdir(parents=True, exist_ok=True)
            for name in _ARTIFACT_FILES:
                if (source / name).is_file():
                    shutil.copyfile(source / name, target / name)


def build_bundle(directory: Path, out: Path, gates: dict[str, Any] | None = None) -> Path:
    """Write the evidence bundle folder `out` and `out`.tar.gz; returns the folder.

    `out` must not exist, be empty, or be an earlier bundle (it is then replaced).
    """
    directory, out = Path(directory), Path(out)
    agg = load_campaign(directory)
    cell = focus_cell(agg)
    if out.exists():
        if not out.is_dir() or (any(out.iterdir()) and not (out / _BUNDLE_MARK).exists()):
            raise UsageError(f"{out} exists and is not an evidence bundle: choose another --out")
        if out.resolve() == directory.resolve():
            raise UsageError("--out must differ from the campaign folder")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    data = prepare(agg, gates if gates is not None else {})
    has_reproducer = True
    try:
        (out / "reproduce.py").write_text(reproducer_source(agg, cell), encoding="utf-8")
        (out / "reproduce.py").chmod(0o755)
    except UsageError as e:
        has_reproducer = False
        (out / "REPRODUCE-MISSING.txt").write_text(f"{e}\n", encoding="utf-8")
    (out / "ISSUE.md").write_text(_issue(data, cell, has_reproducer), encoding="utf-8")
    argv = [str(a) for a in agg.campaign.get("argv") or []]
    if argv[:1] != ["shutdown-harness"]:  # campaign.json stores the program name first
        argv = ["shutdown-harness", *argv]
    (out / "COMMAND.txt").write_text(
        "# rerun the whole campaign with shutdown-harness\n" + command_line(agg) + "\n"
        + "# as originally run\n" + shlex.join(argv) + "\n",
        encoding="utf-8")
    for name in ("results.jsonl", "campaign.json"):
        if (directory / name).is_file():
            shutil.copyfile(directory / name, out / name)
    for fmt, name in (("markdown", "report.md"), ("html", "report.html"), ("json", "report.json")):
        (out / name).write_text(render(data, fmt), encoding="utf-8")
    _copy_exemplars(agg, out)
    tarball = out.with_name(out.name + ".tar.gz")
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(out, arcname=out.name)
    return out
