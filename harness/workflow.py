"""The ``run`` pipeline, as a list of small tasks in one visible order.

    open_campaign -> resolve_scenarios -> start_services -> prepare_strategies -> plan_cells
        -> write_campaign_file -> start_warm -> execute -> summarize -> write_reports

``execute`` feeds the plan to the engine (harness/engine.py); every exit goes to the recorder
(harness/recorder.py), which classifies it and stores the record.

Each task takes the :class:`Campaign` built so far and adds to it; :func:`run` calls them in
order and always stops the services and closes the store, also on Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import shlex
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from shutdown_harness import __version__, stressors
from shutdown_harness.engine import Engine, raise_core_limit
from shutdown_harness.errors import EXIT_GATE, EXIT_INTERRUPTED, EXIT_OK, UsageError
from shutdown_harness.plan import Cell, iter_plan, plan_size
from shutdown_harness.progress import ProgressView, Tally
from shutdown_harness.recorder import Recorder, now_iso
from shutdown_harness.store import ResultStore, iter_records

__all__ = ["Campaign", "run", "new_plan", "TASKS", "COMMAND_SCENARIO", "COMMAND_STRATEGY"]

COMMAND_SCENARIO = "command"
COMMAND_STRATEGY = "host"
CHILD = Path(__file__).with_name("child.py")


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
    scenarios: list[Any] = field(default_factory=list)  # shutdown_harness.discovery.ScenarioInfo
    strategies: dict[str, Any] = field(default_factory=dict)  # name -> Strategy
    pythons: dict[str, Path] = field(default_factory=dict)  # strategy -> venv python
    cells: dict[Cell, Cellinfo] = field(default_factory=dict)
    not_applicable: dict[str, str] = field(default_factory=dict)  # "scenario/strategy" -> why
    warm_servers: dict[Cell, Any] = field(default_factory=dict)  # harness.warm.ForkServer
    warm_refused: dict[Cell, str] = field(default_factory=dict)  # --warm cells run cold: why
    tally: Tally = field(default_factory=Tally)
    interrupted: bool = False
    completed: bool = False
    gate_failed: bool = False
    reports: dict[str, Path] = field(default_factory=dict)

    def say(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()


# -- the plan ------------------------------------------------------------------------------
def new_plan(**settings: Any) -> dict[str, Any]:
    """A complete plan: ``settings`` over the defaults that ``run`` uses for options not given.

    ``runs``/``timeout`` None mean each scenario's own defaults; ``seed`` is fixed here, the
    command line draws a random one and stores it.
    """
    plan: dict[str, Any] = {
        "command": None,
        "scenarios": None,
        "strategies": None,
        "runs": None,
        "jobs": stressors.cpu_count(),
        "timeout": None,
        "seed": 0,
        "shard": None,
        "until_halfwidth": None,
        "etcd": "auto",
        "valkey": "auto",
        "services": {},  # declared services: {name: auto|embedded|HOST:PORT}
        "pin": None,
        "pin_cpus": None,
        "exit_delay": None,
        "cores": "auto",
        "keep_cores": False,
        "keep_artifacts": 3,
        "cores_per_signature": 3,
        "faulthandler": True,
        "python": None,  # the interpreter of the strategies' virtualenvs (--python): a path
        "warm": False,
    }
    unknown = sorted(set(settings) - set(plan))
    if unknown:
        raise TypeError(f"not plan settings: {', '.join(unknown)}")
    plan.update(settings)
    return plan


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
        "cpus_usable": stressors.cpu_count(),
        "core_pattern": core_pattern,
        "harness": __version__,
    }


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


def resolve_scenarios(c: Campaign) -> None:
    """Read the planned scenarios (names or paths; bad ones are a usage error, before any
    service starts)."""
    if c.plan.get("command"):
        return
    from shutdown_harness import discovery
    from shutdown_harness.service_kinds import kinds

    c.scenarios = discovery.resolve(c.plan["scenarios"], services=kinds(c.config))


def start_services(c: Campaign) -> None:
    """Start (or check) the services the planned scenarios declare, and only those."""
    needed = sorted({s for info in c.scenarios for s in info.services})
    if not needed:
        return
    from shutdown_harness import services

    how = {**(c.plan.get("services") or {}), **{k: c.plan.get(k) for k in ("etcd", "valkey")}}
    c.services = services.ServiceSet(
        {name: how.get(name) or "auto" for name in needed}, config=c.config, log=c.say
    )
    c.services.start()
    c.endpoints = c.services.endpoints()


def prepare_strategies(c: Campaign) -> None:
    """Build (or reuse) one virtualenv per strategy and check its cleanup mode."""
    if c.plan.get("command"):
        return
    from shutdown_harness import strategies, virtualenv

    for strategy in strategies.resolve(c.plan["strategies"], c.config):
        if c.plan.get("python") and strategy.python is None and strategy.requirements:
            strategy = dataclasses.replace(strategy, python=c.plan["python"])
        if strategy.requirements:
            python = virtualenv.ensure(strategy, progress=lambda msg: c.say(f"  {msg}"))
        else:  # an existing interpreter with the client already installed
            python = Path(strategy.python or sys.executable)
        strategies.check_mode(strategy, python, [info.path.parent for info in c.scenarios])
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
    from shutdown_harness import discovery, virtualenv

    for info in c.scenarios:
        for name, strategy in c.strategies.items():
            python = c.pythons[name]
            env = {**base_env, **(c.services.env(info.services) if info.services else {})}
            reason = discovery.probe(info, python, env)
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


def check_gates(c: Campaign) -> None:
    """Say before any run which gate no outcome can pass with the planned runs (e.g.
    max_upper = 0.05 needs 73 runs without a failure): the campaign still measures."""
    gates = c.config.get("gates")
    if not gates:
        return
    from shutdown_harness.gates import unreachable

    cells = ((scenario, strategy, info.runs) for (scenario, strategy), info in c.cells.items())
    for line in unreachable(gates, cells):
        c.say(f"warning: {line}")


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
            "created_at": now_iso(),
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
            "load": stressors.plan_load(c.plan),
        }
    )


def start_warm(c: Campaign) -> None:
    """With --warm: one fork server per cell (harness/warm.py); cells that cannot fork run cold."""
    if not c.plan.get("warm"):
        return
    from shutdown_harness import warm

    if c.plan.get("command"):
        raise UsageError("--warm forks scenario children: it does not apply to --command")
    cannot = warm.become_subreaper()
    unsafe = warm.unsafe_modules()
    servers: dict[Cell, warm.ForkServer] = {}
    for cell, info in c.cells.items():
        if cannot:
            c.warm_refused[cell] = cannot
            continue
        log = c.out / ".work" / "warm" / f"{len(servers)}.log"
        server = warm.ForkServer(str(info.argv[0]), info.argv, info.env, log, unsafe)
        server.spawn()
        servers[cell] = server
    for cell, server in servers.items():  # their imports ran side by side
        reason = server.ready()
        if reason is None:
            c.warm_servers[cell] = server
        else:
            c.warm_refused[cell] = reason
    for (scenario, strategy), reason in c.warm_refused.items():
        c.say(f"warm start refused for {scenario} / {strategy}, its runs start cold: {reason}")
    if c.warm_servers:
        c.say(f"warm start: {len(c.warm_servers)} fork servers ready; cold controls: "
              f"{warm.CONTROL_FRACTION:.0%} of each cell's runs, at least {warm.MIN_CONTROLS}")


def stop_warm(c: Campaign) -> None:
    for server in c.warm_servers.values():
        server.close()
    c.warm_servers.clear()


def execute(c: Campaign) -> None:
    """Run the plan through the engine; every finished run is on disk before it is counted."""
    assert c.store is not None
    cells = list(c.cells)
    runs = {cell: info.runs for cell, info in c.cells.items()}
    shard = (c.plan["shard"][0], c.plan["shard"][1]) if c.plan.get("shard") else None
    planned = plan_size(cells, runs, shard)
    for record in iter_records(c.out):  # a resumed campaign counts what it already has
        c.tally.add(record)
    counter_done = _adaptive(c) if c.plan.get("until_halfwidth") else None
    cell_done = _cell_done(c, counter_done) if counter_done is not None else None
    if c.plan.get("cores", "auto") != "off":
        raise_core_limit()
    remaining = planned - len(c.store.done)
    # No more slots than runs: the load each record names is the concurrency that ran.
    jobs = max(1, min(c.plan["jobs"], remaining))
    engine = Engine(c.out / ".work", jobs=jobs)
    previous = {
        sig: signal.signal(sig, lambda *_: _interrupt(c, engine))
        for sig in (signal.SIGINT, signal.SIGTERM)
    }
    c.say(f"{remaining} runs to do ({planned} planned) with {jobs} jobs -> {c.out}")
    done = c.store.done
    try:
        with ProgressView(
            c.tally, planned, stream=c.stream, already=len(done), adaptive=cell_done is not None
        ) as view:
            recorder = Recorder(c, view, ends_cell=counter_done)
            recorder.load = stressors.plan_load({**c.plan, "jobs": jobs})
            try:
                c.completed = engine.run(
                    recorder.jobs(iter_plan(cells, runs, shard, done, cell_done)),
                    recorder.on_exit,
                )
            finally:
                recorder.close()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _remove_tree(c.out / ".work")
        _remove_tree(c.out / ".cores")


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _interrupt(c: Campaign, engine: Engine) -> None:
    c.interrupted = True
    engine.stop()


def _adaptive(c: Campaign) -> Callable[[Counter[str]], bool]:
    """Whether a cell's counts are enough to stop it (``--until-halfwidth``)."""
    from shutdown_harness.stats import cell_done

    width = float(c.plan["until_halfwidth"])

    def done(counter: Counter[str]) -> bool:
        return bool(cell_done(Tally.failures(counter), Tally.runs(counter), width))

    return done


def _cell_done(
    c: Campaign, counter_done: Callable[[Counter[str]], bool]
) -> Callable[[Cell], bool]:
    """Whether a cell is finished, by what is on disk (the campaign's tally)."""

    def done(cell: Cell) -> bool:
        counter = c.tally.cells.get(cell)
        return counter is not None and counter_done(counter)

    return done


def summarize(c: Campaign) -> None:
    """The last lines on the terminal: one per cell, and where everything is."""
    state = "interrupted" if c.interrupted else ("done" if c.completed else "stopped")
    c.say(f"\n{state}: {sum(c.tally.total.values())} runs in {c.out}")
    from shutdown_harness.versions import label_key

    for (scenario, strategy), counter in sorted(
        c.tally.cells.items(), key=lambda item: (item[0][0], label_key(item[0][1]))
    ):
        c.say(f"  {scenario} / {strategy}: {Tally.describe(counter)}")
    if c.interrupted:
        c.say(f"resume with: shutdown-harness run --resume --out {c.out}")


def write_reports(c: Campaign) -> None:
    """Every report format next to the results; the terminal table; gates decide the exit."""
    if c.interrupted or not c.with_reports:
        return
    from shutdown_harness import reports

    data = reports.prepare(c.out, c.config.get("gates") or {})
    c.reports = reports.write_all(data, c.out)
    c.gate_failed = reports.print_terminal(data, c.stream)


TASKS: list[Callable[[Campaign], None]] = [
    open_campaign,
    resolve_scenarios,
    start_services,
    prepare_strategies,
    plan_cells,
    check_gates,
    write_campaign_file,
    start_warm,
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
        stop_warm(c)
        if c.services is not None:
            c.services.stop()
        if c.store is not None:
            c.store.close()
    c.say(f"({time.monotonic() - started:.1f} s)")
    if c.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_GATE if c.gate_failed else EXIT_OK
