"""The ``run`` pipeline, as a list of small tasks in one visible order.

    open_campaign -> start_services -> prepare_strategies -> plan_cells -> execute
        -> summarize -> write_reports

Each task takes the :class:`Campaign` built so far and adds to it; :func:`run` calls them in
order and always stops the services and closes the store, also on Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import os
import platform
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from harness import MARKER, __version__, stressors
from harness.engine import Engine, Exit, Job, raise_core_limit
from harness.errors import EXIT_GATE, EXIT_INTERRUPTED, EXIT_OK, UsageError
from harness.plan import Cell, RunSpec, iter_plan, plan_size
from harness.progress import ProgressView, Tally
from harness.store import ResultStore, iter_records

__all__ = ["Campaign", "run", "TASKS", "COMMAND_SCENARIO", "COMMAND_STRATEGY"]

COMMAND_SCENARIO = "command"
COMMAND_STRATEGY = "host"
CHILD = Path(__file__).with_name("child.py")
_STDOUT_LIMIT = 4 << 20
_STDERR_HEAD = 64 << 10
_STDERR_TAIL = 256 << 10
_TAIL_CHARS = 2000


@dataclass
class Cellinfo:
    """How to start one run of a cell."""

    argv: tuple[str, ...]
    env: dict[str, str]
    timeout: float
    dump_signal: int | None
    runs: int
    python: str | None = None
    executable: str | None = None  # the real binary, for gdb on a core file
    client_version: str | None = None
    services: tuple[str, ...] = ()


@dataclass
class Campaign:
    """Everything one ``run`` invocation knows; tasks fill it in order."""

    plan: dict[str, Any]
    out: Path
    resume: bool
    config: dict[str, Any]
    stream: IO[str] = field(default_factory=lambda: sys.stdout)
    argv: list[str] = field(default_factory=list)
    given: set[str] = field(default_factory=set)  # plan keys set on the command line
    deadline: float | None = None  # time.monotonic() after which no new run starts
    with_reports: bool = True  # write every report format at the end
    store: ResultStore | None = None
    services: Any = None  # harness.services.ServiceSet
    endpoints: dict[str, str] = field(default_factory=dict)
    strategies: dict[str, Any] = field(default_factory=dict)  # name -> Strategy
    pythons: dict[str, Path] = field(default_factory=dict)  # strategy -> venv python
    cells: dict[Cell, Cellinfo] = field(default_factory=dict)
    not_applicable: dict[str, str] = field(default_factory=dict)  # "scenario/strategy" -> why
    tally: Tally = field(default_factory=Tally)
    interrupted: bool = False
    completed: bool = False
    gate_failed: bool = False
    reports: dict[str, Path] = field(default_factory=dict)

    def say(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()


# -- environment facts ---------------------------------------------------------------------
def environment() -> dict[str, Any]:
    libc, libc_version = platform.libc_ver()
    try:
        core_pattern = Path("/proc/sys/kernel/core_pattern").read_text().strip()
    except OSError:
        core_pattern = None
    return {
        "os": platform.platform(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "libc": f"{libc} {libc_version}".strip(),
        "python": sys.version.split()[0],
        "python_build": " ".join(platform.python_build()),
        "python_implementation": platform.python_implementation(),
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "core_pattern": core_pattern,
        "harness": __version__,
    }


def load_label(plan: dict[str, Any]) -> dict[str, Any]:
    return stressors.load_label(
        plan["jobs"], pin=plan.get("pin_cpus"), exit_delay=plan.get("exit_delay")
    )


# -- tasks ---------------------------------------------------------------------------------
#: Options that may change between an interrupted campaign and its resumption.
RUNTIME_OPTIONS = ("jobs",)


def open_campaign(c: Campaign) -> None:
    """Check the campaign folder, or reopen it with --resume (its stored plan wins)."""
    c.out = c.out.absolute()  # the engine steps into slot folders to start children
    c.store = ResultStore(c.out, keep_per_signature=c.plan.get("keep_artifacts", 3))
    if not c.resume:
        c.store.check_new()
        return
    stored = c.store.resume()["plan"]
    for key in sorted(c.given):
        if key not in RUNTIME_OPTIONS and stored.get(key) != c.plan.get(key):
            raise UsageError(
                f"{c.out} was planned with {key}={stored.get(key)!r}, not {c.plan.get(key)!r}:"
                " drop the option to resume it, or use another --out"
            )
    c.plan = {**stored, **{k: c.plan[k] for k in RUNTIME_OPTIONS if k in c.given}}
    c.say(f"resuming {c.out}: {len(c.store.done)} runs already recorded")


def start_services(c: Campaign) -> None:
    """Start (or check) etcd and valkey when the planned scenarios need them."""
    if c.plan.get("command"):
        return
    from harness import scenarios

    infos = scenarios.resolve(c.plan["scenarios"])
    needed = sorted({s for info in infos for s in info.services})
    if not needed:
        return
    from harness import services

    c.services = services.ServiceSet(
        {kind: c.plan.get(kind) or "auto" for kind in needed}, log=c.say
    )
    c.services.start()
    c.endpoints = c.services.endpoints()


def prepare_strategies(c: Campaign) -> None:
    """Build (or reuse) one virtualenv per strategy and check its cleanup mode."""
    if c.plan.get("command"):
        return
    from harness import strategies, virtualenv

    for strategy in strategies.resolve(c.plan["strategies"], c.config):
        if strategy.requirements:
            python = virtualenv.ensure(strategy, progress=lambda msg: c.say(f"  {msg}"))
        else:  # an existing interpreter with the client already installed
            python = Path(strategy.python or sys.executable)
        strategies.check_mode(strategy, python)
        c.strategies[strategy.name] = strategy
        c.pythons[strategy.name] = python


def plan_cells(c: Campaign) -> None:
    """One :class:`Cellinfo` per (scenario, strategy) that can run; the rest are n/a."""
    base_env = dict(os.environ)
    seed = str(c.plan["seed"])
    base_env["SHUTDOWN_HARNESS_SEED"] = seed
    base_env["SHUTDOWN_HARNESS_CWD"] = os.getcwd()  # where the harness was started
    if c.plan.get("command"):
        command = tuple(_absolute_files(shlex.split(c.plan["command"])))
        env = {**base_env, "PYTHONFAULTHANDLER": "1"}
        exe = _which(command[0])
        c.cells[(COMMAND_SCENARIO, COMMAND_STRATEGY)] = Cellinfo(
            argv=command,
            env=env,
            timeout=c.plan.get("timeout") or 60.0,
            dump_signal=signal.SIGABRT,  # with PYTHONFAULTHANDLER=1: all thread stacks
            runs=c.plan["runs"] or 100,
            executable=exe,
        )
        return
    from harness import scenarios, virtualenv

    for info in scenarios.resolve(c.plan["scenarios"]):
        for name, strategy in c.strategies.items():
            python = c.pythons[name]
            env = {**base_env}
            for kind, endpoint in c.endpoints.items():
                env[f"SHUTDOWN_HARNESS_{kind.upper()}"] = endpoint
            reason = scenarios.probe(info, python, env)
            if reason is not None:
                c.not_applicable[f"{info.name}/{name}"] = reason
                continue
            argv: list[str] = [str(python), str(CHILD), str(info.path), *strategy.child_args()]
            if c.plan.get("exit_delay"):
                argv += ["--exit-delay", str(c.plan["exit_delay"])]
            if not c.plan.get("faulthandler", True):
                argv += ["--no-faulthandler"]
            versions = virtualenv.installed_versions(python)
            c.cells[(info.name, name)] = Cellinfo(
                argv=tuple(argv),
                env=env,
                timeout=c.plan.get("timeout") or info.timeout,
                dump_signal=signal.SIGUSR1,
                runs=c.plan["runs"] or info.runs,
                python=versions.get("python"),
                executable=os.path.realpath(python),
                client_version=_client_version(strategy, versions),
                services=info.services,
            )
    for cell, why in c.not_applicable.items():
        c.say(f"not applicable: {cell}: {why}")
    if not c.cells:
        raise UsageError("no scenario can run under the chosen strategies (all not applicable)")


def _client_version(strategy: Any, versions: dict[str, str]) -> str | None:
    found = [f"{d}=={versions[d]}" for d in strategy.distributions if d in versions]
    return "+".join(found) or None


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
    import shutil

    found = shutil.which(program)
    return os.path.realpath(found) if found else None


def write_campaign_file(c: Campaign) -> None:
    """campaign.json: the plan and what it ran on (new campaigns only)."""
    assert c.store is not None
    if c.resume:
        return
    c.store.create(
        {
            "format": 1,
            "created_at": _now_iso(),
            "argv": c.argv,
            "plan": c.plan,
            "strategies": {
                name: {
                    "requirements": list(s.requirements),
                    "mode": s.mode,
                    "cleanup": s.cleanup,
                    "description": s.description,
                    "python": s.python,
                }
                for name, s in c.strategies.items()
            },
            "cells": {
                f"{cell[0]}/{cell[1]}": {
                    "runs": info.runs,
                    "timeout": info.timeout,
                    "python": info.python,
                    "client_version": info.client_version,
                    "argv": list(info.argv),
                }
                for cell, info in c.cells.items()
            },
            "not_applicable": c.not_applicable,
            "environment": environment(),
            "services": c.services.describe() if c.services is not None else {},
            "load": load_label(c.plan),
        }
    )


def _now_iso(ts: float | None = None) -> str:
    moment = datetime.fromtimestamp(ts, UTC) if ts is not None else datetime.now(UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _read_limited(path: Path, head: int, tail: int) -> str:
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(0)
            if size <= head + tail:
                data = f.read()
            else:
                first = f.read(head)
                f.seek(size - tail)
                data = first + b"\n[... %d bytes cut ...]\n" % (size - head - tail) + f.read()
    except OSError:
        return ""
    return data.decode("utf-8", errors="replace")


class _Executor:
    """Turns engine exits into records: classify, backtraces, artifacts, store, progress."""

    def __init__(self, c: Campaign, view: ProgressView) -> None:
        from harness import backtrace as bt
        from harness.classify import classify, needs_backtrace

        self.c = c
        self.view = view
        self.classify = classify
        self.needs_backtrace = needs_backtrace
        self.bt = bt
        self.specs: dict[str, RunSpec] = {}
        self.load = load_label(c.plan)
        self.lock = threading.Lock()
        self.command = bool(c.plan.get("command"))
        cores_wanted = c.plan.get("cores", "auto") != "off"
        self.no_core_reason = bt.core_dump_unavailable() if cores_wanted else "--cores off"
        self.no_gdb_reason = bt.gdb_available()
        self.core_budget = bt.CoreBudget(exemplars=c.plan.get("cores_per_signature", 3))
        self.analysis = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gdb")
        self.core_dir = c.out / ".cores"

    def jobs(self, specs: Callable[[], Any]) -> Any:
        for spec in specs():
            if self.c.deadline is not None and time.monotonic() > self.c.deadline:
                self.c.say("deadline reached: no new runs")
                return
            info = self.c.cells[spec.cell]
            self.specs[spec.run_id] = spec
            env = info.env.copy()
            env["SHUTDOWN_HARNESS_RUN_ID"] = spec.run_id
            yield Job(
                run_id=spec.run_id,
                argv=info.argv,
                timeout=info.timeout,
                env=env,
                dump_signal=info.dump_signal,
                cpus=frozenset(self.c.plan["pin_cpus"]) if self.c.plan.get("pin_cpus") else None,
            )

    def on_exit(self, ex: Exit) -> None:
        spec = self.specs.pop(ex.job.run_id)
        info = self.c.cells[spec.cell]
        stdout = _read_limited(ex.stdout_path, 0, _STDOUT_LIMIT)
        stderr = _read_limited(ex.stderr_path, _STDERR_HEAD, _STDERR_TAIL)
        if ex.error:
            stderr = f"{stderr}\nshutdown-harness: {ex.error}".strip()
        work_done = MARKER in stdout
        core = ex.core_path
        verdict = self.classify(
            returncode=ex.returncode,
            stderr=stderr,
            stdout=stdout,
            timed_out=ex.timed_out,
            work_done=None if self.command else work_done,
            marker_expected=not self.command,
            backtrace_unavailable=None if core else self.no_core_reason,
        )
        record: dict[str, Any] = {
            "run_id": spec.run_id,
            "scenario": spec.scenario,
            "strategy": spec.strategy,
            "index": spec.index,
            "returncode": ex.returncode,
            "signal": verdict.signal,
            "timed_out": ex.timed_out,
            "work_done": work_done,
            "duration_s": round(ex.duration_s, 4),
            **_verdict_fields(verdict),
            "stderr_tail": stderr[-_TAIL_CHARS:],
            "load": self.load,
            "python": info.python,
            "client_version": info.client_version,
            "started_at": _now_iso(ex.started_at),
            "cpu_s": round(ex.cpu_s, 4),
            "max_rss_kb": ex.max_rss_kb,
            "backtrace": None,
        }
        if verdict.category != "clean" and self._service_down(info, record):
            self._finish(record, stdout, stderr, None, core)
            return
        if core is not None and verdict.category == "crash":
            key = f"{spec.scenario}/{spec.strategy}/{verdict.signature}"
            unspecific = self.needs_backtrace(verdict)
            decision = self.core_budget.decide(key, unspecific)
            if decision.analyse and info.executable and not self.no_gdb_reason:
                # gdb takes ~0.6 s: analyse in the background and free the slot now.
                self.core_dir.mkdir(exist_ok=True)
                kept = self.core_dir / f"{ex.pid}.core"
                os.replace(core, kept)
                self.analysis.submit(
                    self._analyse, key, record, ex, stdout, stderr, kept, info, decision.reason
                )
                return
            why = self.no_gdb_reason or decision.reason
            if unspecific:
                verdict = self.core_budget.infer(key, verdict)
                record.update(_verdict_fields(verdict))
            record["backtrace"] = f"unavailable: {why}"
        elif verdict.category == "crash":
            record["backtrace"] = f"unavailable: {self.no_core_reason or 'no core file'}"
        self._finish(record, stdout, stderr, None, core)

    def _service_down(self, info: Cellinfo, record: dict[str, Any]) -> bool:
        services = self.c.services
        if services is None or not info.services:
            return False
        health = services.healthy()
        down = sorted(kind for kind in info.services if not health.get(kind, True))
        if not down:
            return False
        record.update(
            category="infra",
            outcome="infra",
            signature=f"infra-service-down:{'+'.join(down)}",
            phase="unknown",
        )
        record.setdefault("notes", []).append(
            f"{', '.join(down)} was down after this run: not counted as a crash"
        )
        for kind in down:
            self.c.say(f"{kind} went down; restarting it")
            services.restart(kind)
        return True

    def _analyse(
        self,
        key: str,
        record: dict[str, Any],
        ex: Exit,
        stdout: str,
        stderr: str,
        core: Path,
        info: Cellinfo,
        reason: str,
    ) -> None:
        text: str | None = None
        keep_core = False
        try:
            assert info.executable is not None
            started = time.monotonic()
            text = self.bt.run_gdb(core, Path(info.executable))
            verdict = self.classify(
                returncode=ex.returncode,
                stderr=stderr,
                stdout=stdout,
                timed_out=ex.timed_out,
                work_done=None if self.command else record["work_done"],
                marker_expected=not self.command,
                backtrace=text,
            )
            self.core_budget.record(
                key, verdict.signature, verdict.frames, time.monotonic() - started
            )
            record.update(_verdict_fields(verdict.with_note(f"core analysed: {reason}")))
            record["backtrace"] = "gdb"
            keep_core = bool(self.c.plan.get("keep_cores")) and self.core_budget.keep_core(
                key, verdict.signature, core.stat().st_size
            )
        except Exception as e:  # noqa: BLE001 - a failed analysis must not lose the run
            self.core_budget.abandon(key)
            record["backtrace"] = f"unavailable: gdb failed: {e}"
        self._finish(record, stdout, stderr, text, core, keep_core)

    def _finish(
        self,
        record: dict[str, Any],
        stdout: str,
        stderr: str,
        backtrace: str | None,
        core: Path | None,
        keep_core: bool = False,
    ) -> None:
        assert self.c.store is not None
        with self.lock:
            if self.c.store.wants_artifacts(record):
                files: dict[str, Path | str] = {"stdout.txt": stdout, "stderr.txt": stderr}
                if backtrace:
                    files["backtrace.txt"] = backtrace
                if core is not None and keep_core:
                    files["core"] = core
                record["artifacts"] = self.c.store.keep_artifacts(record, files)
            if core is not None and core.exists() and core.parent == self.core_dir:
                core.unlink()
            self.c.store.append(record)
            self.c.tally.add(record)
            self.view.update(record)

    def close(self) -> None:
        self.analysis.shutdown(wait=True)


def _verdict_fields(verdict: Any) -> dict[str, Any]:
    fields = {
        "category": verdict.category,
        "outcome": verdict.outcome,
        "signature": verdict.signature,
        "phase": verdict.phase,
        "signal": verdict.signal,
        "signature_source": verdict.source,
    }
    if verdict.exception:
        fields["exception"] = verdict.exception
    if verdict.frames:
        fields["frames"] = verdict.frames
    if verdict.notes:
        fields["notes"] = list(verdict.notes)
    return fields


def execute(c: Campaign) -> None:
    """Run the plan through the engine; every finished run is on disk before it is counted."""
    assert c.store is not None
    cells = list(c.cells)
    runs = {cell: info.runs for cell, info in c.cells.items()}
    shard = (c.plan["shard"][0], c.plan["shard"][1]) if c.plan.get("shard") else None
    planned = plan_size(cells, runs, shard)
    for record in iter_records(c.out):  # a resumed campaign counts what it already has
        c.tally.add(record)
    cell_done = _adaptive(c) if c.plan.get("until_halfwidth") else None
    if c.plan.get("cores", "auto") != "off":
        raise_core_limit()
    engine = Engine(c.out / ".work", jobs=c.plan["jobs"])
    previous = {
        sig: signal.signal(sig, lambda *_: _interrupt(c, engine))
        for sig in (signal.SIGINT, signal.SIGTERM)
    }
    remaining = planned - len(c.store.done)
    c.say(
        f"{remaining} runs to do ({planned} planned) with {c.plan['jobs']} jobs -> {c.out}"
    )
    done = c.store.done
    try:
        with ProgressView(
            c.tally, planned, stream=c.stream, already=len(done), adaptive=cell_done is not None
        ) as view:
            executor = _Executor(c, view)
            try:
                c.completed = engine.run(
                    executor.jobs(lambda: iter_plan(cells, runs, shard, done, cell_done)),
                    executor.on_exit,
                )
            finally:
                executor.close()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        engine.close()
        _remove_tree(c.out / ".work")
        _remove_tree(c.out / ".cores")


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _interrupt(c: Campaign, engine: Engine) -> None:
    c.interrupted = True
    engine.stop()


def _adaptive(c: Campaign) -> Callable[[Cell], bool]:
    from harness.stats import cell_done

    width = float(c.plan["until_halfwidth"])

    def done(cell: Cell) -> bool:
        counter = c.tally.cells.get(cell)
        if counter is None:
            return False
        return bool(cell_done(Tally.failures(counter), Tally.runs(counter), width))

    return done


def summarize(c: Campaign) -> None:
    """The last lines on the terminal: one per cell, and where everything is."""
    state = "interrupted" if c.interrupted else ("done" if c.completed else "stopped")
    c.say(f"\n{state}: {sum(c.tally.total.values())} runs in {c.out}")
    for (scenario, strategy), counter in sorted(c.tally.cells.items()):
        c.say(f"  {scenario} / {strategy}: {Tally.describe(counter)}")
    if c.interrupted:
        c.say(f"resume with: shutdown-harness run --resume --out {c.out}")


def write_reports(c: Campaign) -> None:
    """Every report format next to the results; the terminal table; gates decide the exit."""
    if c.interrupted or not c.with_reports:
        return
    from harness import reports

    data = reports.prepare(c.out, c.config.get("gates") or {})
    c.reports = reports.write_all(data, c.out)
    c.gate_failed = reports.print_terminal(data, c.stream)


TASKS: list[Callable[[Campaign], None]] = [
    open_campaign,
    start_services,
    prepare_strategies,
    plan_cells,
    write_campaign_file,
    execute,
    summarize,
    write_reports,
]


def run(c: Campaign) -> int:
    started = time.monotonic()
    try:
        for task in TASKS:
            task(c)
    finally:
        if c.services is not None:
            c.services.stop()
        if c.store is not None:
            c.store.close()
    c.say(f"({time.monotonic() - started:.1f} s)")
    if c.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_GATE if c.gate_failed else EXIT_OK
