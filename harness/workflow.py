"""The ``run`` pipeline, as small tasks in one visible order (:func:`run`).

    open_campaign -> prepare (a --command's cell, or harness/prepare.py: scenarios, services,
        virtualenvs, cells, fork servers) -> check_gates -> write_campaign_file
        -> count_recorded -> execute (the report stage loads meanwhile: ReportStage)
        -> summarize -> write_reports

Each task takes plain values (the :class:`~harness.plan.Plan`, the store, the cells...) and
returns its result; :func:`run` passes them on and always stops the services and closes the
store, also on Ctrl-C / SIGTERM. ``execute`` feeds the plan to the engine (harness/engine.py);
every exit goes to the recorder (harness/recorder.py), which classifies it and stores the record.
"""

from __future__ import annotations

import importlib
import os
import shlex
import shutil
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from shutdown_harness import __version__, stressors
from shutdown_harness.engine import Engine, raise_core_limit
from shutdown_harness.errors import EXIT_GATE, EXIT_INTERRUPTED, EXIT_OK, UsageError
from shutdown_harness.gates import unreachable
from shutdown_harness.plan import (
    Cell,
    Cellinfo,
    Plan,
    Prepared,
    child_environment,
    iter_plan,
    plan_size,
)
from shutdown_harness.progress import ProgressView, Tally
from shutdown_harness.recorder import Recorder, RecorderOptions, Stop, now_iso
from shutdown_harness.stats import cell_done
from shutdown_harness.store import ResultStore, iter_records

if TYPE_CHECKING:
    from shutdown_harness.services import ServiceSet
    from shutdown_harness.warm import ForkServer

__all__ = [
    "Options",
    "Outcome",
    "run",
    "open_campaign",
    "prepare",
    "command_cell",
    "check_gates",
    "write_campaign_file",
    "count_recorded",
    "ReportStage",
    "execute",
    "summarize",
    "write_reports",
    "COMMAND_SCENARIO",
    "COMMAND_STRATEGY",
]

COMMAND_SCENARIO = "command"
COMMAND_STRATEGY = "host"

Log = Callable[[str], None]


@dataclass(frozen=True)
class Options:
    """How one ``run`` invocation runs: everything that is not the plan."""

    out: Path
    resume: bool = False
    config: Mapping[str, Any] = field(default_factory=dict)
    argv: tuple[str, ...] = ()
    given: frozenset[str] = frozenset()  # plan settings given on the command line
    with_reports: bool = True  # write every report format at the end
    stream: IO[str] = field(default_factory=lambda: sys.stdout)
    stop: Stop | None = None  # asked before each new run (pytest plugin: verdict, deadline)


@dataclass(frozen=True)
class Outcome:
    """What one ``run`` did."""

    plan: Plan  # the stored plan when resumed
    out: Path
    cells: Mapping[Cell, Cellinfo]
    tally: Tally
    interrupted: bool = False
    completed: bool = False  # every planned run was handed out
    gate_failed: bool = False
    reports: Mapping[str, Path] = field(default_factory=dict)

    @property
    def code(self) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_GATE if self.gate_failed else EXIT_OK


def _logger(stream: IO[str]) -> Log:
    def say(text: str) -> None:
        stream.write(text + "\n")
        stream.flush()

    return say


# -- the pipeline --------------------------------------------------------------------------
def run(plan: Plan, options: Options) -> Outcome:
    """Run a campaign: the tasks below, in this order."""
    started = time.monotonic()
    log = _logger(options.stream)
    out = options.out.absolute()  # the engine steps into slot folders to start children
    with ExitStack() as cleanup:
        store, plan = open_campaign(plan, out, options.resume, options.given, log)
        cleanup.callback(store.close)
        prepared = prepare(plan, options.config, out, cleanup, log)
        check_gates(options.config, prepared.cells, log)
        if not options.resume:
            write_campaign_file(store, plan, options.argv, prepared)
        tally = count_recorded(out)
        report_stage = ReportStage() if options.with_reports else None
        if report_stage is not None:
            cleanup.callback(report_stage.close)
        completed, interrupted = execute(
            plan, prepared.cells, store, tally, services=prepared.services,
            stream=options.stream, log=log, stop=options.stop, warm=prepared.warm,
            warm_refused=prepared.warm_refused,
            started=report_stage.begin if report_stage is not None else None,
        )
        summarize(tally, out, completed=completed, interrupted=interrupted, log=log)
        reports: dict[str, Path] = {}
        gate_failed = False
        if options.with_reports and not interrupted:
            reports, gate_failed = write_reports(out, options.config, options.stream)
    log(f"({time.monotonic() - started:.1f} s)")
    return Outcome(plan=plan, out=out, cells=prepared.cells, tally=tally, interrupted=interrupted,
                   completed=completed, gate_failed=gate_failed, reports=reports)


# -- environment facts ---------------------------------------------------------------------
def environment() -> dict[str, Any]:
    """What the campaign ran on, for campaign.json and the reports.

    From ``os.uname`` and ``sys``, not the ``platform`` module: ``platform.platform()`` runs
    ``uname -p`` in a subprocess on Linux (7-14 ms of every campaign's start). ``os`` is the
    string ``platform.platform()`` gives (``Linux-6.1.0-x86_64-with-glibc2.36``).
    """
    uname = os.uname()
    try:
        libc = os.confstr("CS_GNU_LIBC_VERSION") or ""  # "glibc 2.36"; None off glibc
    except (ValueError, OSError):
        libc = ""
    try:
        core_pattern = Path("/proc/sys/kernel/core_pattern").read_text().strip()
    except OSError:
        core_pattern = None
    build = sys.version.partition("(")[2].partition(")")[0]  # "main, May  9 2026, 07:35:25"
    implementation = sys.implementation.name
    return {
        "os": f"{uname.sysname}-{uname.release}-{uname.machine}"
              + (f"-with-{libc.replace(' ', '')}" if libc else ""),
        "kernel": uname.release,
        "machine": uname.machine,
        "libc": libc,
        "python": sys.version.split()[0],
        "python_build": build.replace(", ", " "),
        "python_implementation": {"cpython": "CPython", "pypy": "PyPy"}.get(implementation,
                                                                           implementation),
        "cpus": os.cpu_count(),
        "cpus_usable": stressors.cpu_count(),
        "core_pattern": core_pattern,
        "harness": __version__,
    }


# -- tasks ---------------------------------------------------------------------------------
#: Options that may change between an interrupted campaign and its resumption.
RUNTIME_OPTIONS = ("jobs",)


def open_campaign(
    plan: Plan, out: Path, resume: bool, given: frozenset[str], log: Log
) -> tuple[ResultStore, Plan]:
    """Check the campaign folder, or reopen it with --resume: its stored plan wins (the
    options given again must match it, but for :data:`RUNTIME_OPTIONS`)."""
    store = ResultStore(out, keep_per_signature=plan.keep_artifacts)
    if not resume:
        store.check_new()
        return store, plan
    try:
        stored = Plan.from_dict(store.resume().get("plan") or {})
        for key in sorted(given):
            if key not in RUNTIME_OPTIONS and getattr(stored, key) != getattr(plan, key):
                raise UsageError(
                    f"{out} was planned with {key}={getattr(stored, key)!r}, not"
                    f" {getattr(plan, key)!r}: drop the option to resume it, or use another --out"
                )
    except BaseException:
        store.close()
        raise
    plan = stored.replace(**{k: getattr(plan, k) for k in RUNTIME_OPTIONS if k in given})
    store.keep_per_signature = plan.keep_artifacts
    log(f"resuming {out}: {len(store.done)} runs already recorded")
    return store, plan


def prepare(plan: Plan, config: Mapping[str, Any], out: Path, cleanup: ExitStack,
            log: Log) -> Prepared:
    """The cells to run and what they run on: a ``--command``'s one cell, or the prepare stage
    of a scenario campaign (harness/prepare.py: scenarios, services, virtualenvs, fork
    servers), whose services and servers ``cleanup`` stops."""
    if plan.command:
        if plan.warm:
            raise UsageError("--warm forks scenario children: it does not apply to --command")
        return Prepared(cells={(COMMAND_SCENARIO, COMMAND_STRATEGY): command_cell(plan)})
    # Imported here: the prepare stage (discovery, strategies, virtualenvs, services, warm
    # start) is ~20 M instructions of imports (~10 ms, callgrind) a --command campaign never
    # needs.
    from shutdown_harness.prepare import scenario_stage

    return scenario_stage(plan, config, out, cleanup, log)


def command_cell(plan: Plan) -> Cellinfo:
    """``--command``: any program, run as it is, with all thread stacks on a hang."""
    command = tuple(_absolute_files(shlex.split(plan.command or "")))
    return Cellinfo(
        argv=command,
        env={**child_environment(plan), "PYTHONFAULTHANDLER": "1"},
        timeout=plan.timeout or 60.0,
        dump_signal=signal.SIGABRT,  # with PYTHONFAULTHANDLER=1: all thread stacks
        runs=plan.runs or 100,
        executable=_which(command[0]),
    )


def check_gates(config: Mapping[str, Any], cells: Mapping[Cell, Cellinfo], log: Log) -> None:
    """Say before any run which gate no outcome can pass with the planned runs (e.g.
    max_upper = 0.05 needs 73 runs without a failure): the campaign still measures."""
    gates = config.get("gates")
    if not gates:
        return
    planned = ((scenario, strategy, info.runs) for (scenario, strategy), info in cells.items())
    for line in unreachable(gates, planned):
        log(f"warning: {line}")


def _absolute_files(argv: list[str]) -> list[str]:
    """Arguments naming an existing file or folder, relative to here, made absolute: the
    children run in their own working folders (where their core files land)."""
    out = []
    for i, arg in enumerate(argv):
        relative_program = i == 0 and "/" in arg
        if not os.path.isabs(arg) and (relative_program or (i and os.path.exists(arg))):
            arg = os.path.abspath(arg)
        out.append(arg)
    return out


def _which(program: str) -> str | None:
    found = shutil.which(program)
    return os.path.realpath(found) if found else None


def write_campaign_file(
    store: ResultStore, plan: Plan, argv: tuple[str, ...], prepared: Prepared
) -> None:
    """campaign.json: the plan and what it ran on (new campaigns only)."""
    store.create(
        {
            "format": 1,
            "created_at": now_iso(),
            "argv": list(argv),
            "plan": plan.to_dict(),
            "strategies": {name: dict(spec) for name, spec in prepared.strategies.items()},
            "cells": {
                f"{cell[0]}/{cell[1]}": {
                    "runs": info.runs,
                    "timeout": info.timeout,
                    "python": info.python,
                    "client_version": info.client_version,
                    "argv": list(info.argv),
                }
                for cell, info in prepared.cells.items()
            },
            "not_applicable": dict(prepared.not_applicable),
            "environment": environment(),
            "services": prepared.services.describe() if prepared.services is not None else {},
            "load": plan.load(),
        }
    )


def count_recorded(out: Path) -> Tally:
    """The counts of what is already on disk (a resumed campaign counts what it has)."""
    tally = Tally()
    for record in iter_records(out):
        tally.add(record)
    return tally


#: The report stage: what write_reports needs, and every format it writes (statistics: what
#: stats.py imports where an interval is computed, ~14 M instructions).
REPORT_MODULES = ("shutdown_harness.reports", "shutdown_harness.reports.terminal",
                  "shutdown_harness.reports.json_report", "shutdown_harness.reports.markdown",
                  "shutdown_harness.reports.junit", "shutdown_harness.reports.html", "statistics")


class ReportStage:
    """The report stage's modules, imported in a thread once the first runs have started.

    aggregate, gates and the five formats are ~48 M instructions of imports (~25 ms; callgrind),
    which a small campaign would otherwise wait for after its last run. Started before the
    first child, the thread would take the GIL from the engine's own start; started once the
    first child runs, its imports fall in time the harness spends waiting for children.
    The import system's per-module locks make :func:`write_reports`'s own import wait for a
    load under way; the package has no import cycle (tests/test_imports.py), so the two cannot
    deadlock.
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None

    def begin(self) -> None:
        """The first runs have started: load (called once, from a slot thread)."""
        self._thread = threading.Thread(target=self._load, name="preload-reports", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Wait for the load to end (never left importing at exit); nothing if none began."""
        if self._thread is not None:
            self._thread.join()

    @staticmethod
    def _load() -> None:
        for name in REPORT_MODULES:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - write_reports imports again and says why
                return


def execute(
    plan: Plan,
    cells: Mapping[Cell, Cellinfo],
    store: ResultStore,
    tally: Tally,
    *,
    services: ServiceSet | None = None,
    stream: IO[str] | None = None,
    log: Log | None = None,
    stop: Stop | None = None,
    warm: Mapping[Cell, ForkServer] | None = None,
    warm_refused: Mapping[Cell, str] | None = None,
    started: Callable[[], None] | None = None,
) -> tuple[bool, bool]:
    """Run the plan through the engine; every finished run is on disk before it is counted
    in ``tally``. ``started`` is called once the first child runs. Returns (completed: every
    run handed out, interrupted: Ctrl-C / SIGTERM)."""
    stream = stream or sys.stdout
    log = log or _logger(stream)
    out = store.folder
    runs = {cell: info.runs for cell, info in cells.items()}
    shard = (plan.shard[0], plan.shard[1]) if plan.shard else None
    planned = plan_size(list(cells), runs, shard)
    counter_done = _adaptive(plan.until_halfwidth) if plan.until_halfwidth else None
    cell_done = _cell_done(tally, counter_done) if counter_done is not None else None
    if plan.cores != "off":
        raise_core_limit()
    remaining = planned - len(store.done)
    # No more slots than runs: the load each record names is the concurrency that ran.
    jobs = max(1, min(plan.jobs, remaining))
    engine = Engine(out / ".work", jobs=jobs)
    engine.started = started
    interrupted = False

    def interrupt(*_: Any) -> None:
        nonlocal interrupted
        interrupted = True
        engine.stop()

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    done = store.done
    log(f"{remaining} runs to do ({planned} planned) with {jobs} jobs -> {out}")
    try:
        with ProgressView(
            tally, planned, stream=stream, already=len(done), adaptive=cell_done is not None
        ) as view:
            options = RecorderOptions.from_plan(plan.replace(jobs=jobs))
            recorder = Recorder(
                store, cells, tally, services=services, options=options, log=log, stop=stop,
                ends_cell=counter_done, view=view, warm=warm, warm_refused=warm_refused,
            )
            if services is not None:
                engine.before_spawn = recorder.before_spawn
            try:
                completed = engine.run(
                    recorder.jobs(iter_plan(list(cells), runs, shard, done, cell_done)),
                    recorder.on_exit,
                )
            finally:
                recorder.close()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _remove_tree(out / ".work")
        _remove_tree(out / ".cores")
    return completed, interrupted


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _adaptive(width: float) -> Callable[[Counter[str]], bool]:
    """Whether a cell's counts are enough to stop it (``--until-halfwidth``)."""
    def done(counter: Counter[str]) -> bool:
        return bool(cell_done(Tally.failures(counter), Tally.runs(counter), float(width)))

    return done


def _cell_done(
    tally: Tally, counter_done: Callable[[Counter[str]], bool]
) -> Callable[[Cell], bool]:
    """Whether a cell is finished, by what is on disk (the campaign's tally)."""

    def done(cell: Cell) -> bool:
        counter = tally.cells.get(cell)
        return counter is not None and counter_done(counter)

    return done


def summarize(tally: Tally, out: Path, *, completed: bool, interrupted: bool, log: Log) -> None:
    """The last lines on the terminal: one per cell, and where everything is."""
    # Imported here: versions.py pulls packaging.version, 9.5 M instructions (callgrind) that
    # every campaign's start would pay; by now the report stage has loaded it (aggregate).
    from shutdown_harness.versions import label_key

    state = "interrupted" if interrupted else ("done" if completed else "stopped")
    log(f"\n{state}: {sum(tally.total.values())} runs in {out}")
    for (scenario, strategy), counter in sorted(
        tally.cells.items(), key=lambda item: (item[0][0], label_key(item[0][1]))
    ):
        log(f"  {scenario} / {strategy}: {Tally.describe(counter)}")
    if interrupted:
        log(f"resume with: shutdown-harness run --resume --out {out}")


def write_reports(
    out: Path, config: Mapping[str, Any], stream: IO[str]
) -> tuple[dict[str, Path], bool]:
    """Every report format next to the results and the terminal table; returns the reports
    written and whether a gate failed."""
    # Imported here: ReportStage has loaded it while the runs went.
    from shutdown_harness import reports

    data = reports.prepare(out, config.get("gates") or {})
    written = reports.write_all(data, out)
    return written, reports.print_terminal(data, stream)
