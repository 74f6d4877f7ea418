"""The prepare stage of a scenario campaign: from the plan's scenarios and strategies to the
cells that will run, and what they run on.

    resolve_scenarios -> resolve the strategies -> services_needed (started) ->
        prepare_strategies (a virtualenv each) -> plan_cells (probe each pair) -> start_warm

:func:`scenario_stage` runs these in this order and hands the run a :class:`~harness.plan.
Prepared`. A bad strategy name is refused before any service starts. workflow.py imports this
module only for a scenario campaign: a ``--command`` campaign's one cell needs none of it.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shutdown_harness import discovery, strategies, virtualenv
from shutdown_harness.errors import UsageError
from shutdown_harness.plan import Cell, Cellinfo, Plan, Prepared, child_environment
from shutdown_harness.service_kinds import kinds

if TYPE_CHECKING:
    from shutdown_harness.services import ServiceSet
    from shutdown_harness.warm import ForkServer

__all__ = ["ReadyStrategy", "CHILD", "scenario_stage", "resolve_scenarios", "services_needed",
           "prepare_strategies", "plan_cells", "start_warm", "stop_warm"]

#: The wrapper every scenario child runs (stdlib only), with the strategy's Python.
CHILD = Path(__file__).with_name("child.py")

Log = Callable[[str], None]


@dataclass(frozen=True)
class ReadyStrategy:
    """A strategy and the Python its children run under."""

    strategy: strategies.Strategy
    python: Path


def scenario_stage(plan: Plan, config: Mapping[str, Any], out: Path, cleanup: ExitStack,
                   log: Log) -> Prepared:
    """The tasks below, in order; services and fork servers are stopped by ``cleanup``."""
    scenarios = resolve_scenarios(plan, config)
    chosen = strategies.resolve(list(plan.strategies or ()), config)  # a bad name: now
    services = services_needed(scenarios, plan, config, log)
    if services is not None:
        cleanup.enter_context(services)  # started; stopped on the way out, whatever happens
    ready = prepare_strategies(plan, chosen, scenarios, log)
    cells, not_applicable = plan_cells(plan, scenarios, ready, services, log)
    warm, warm_refused = start_warm(plan, cells, out, log)
    cleanup.callback(stop_warm, warm)
    return Prepared(
        cells=cells,
        not_applicable=not_applicable,
        strategies={
            name: {
                "requirements": list(r.strategy.requirements),
                "mode": r.strategy.mode,
                "cleanup": r.strategy.cleanup,
                "description": r.strategy.description,
                "python": r.strategy.python,
            }
            for name, r in ready.items()
        },
        services=services,
        warm=warm,
        warm_refused=warm_refused,
    )


def resolve_scenarios(plan: Plan, config: Mapping[str, Any]) -> list[discovery.ScenarioInfo]:
    """Read the planned scenarios (names or paths; bad ones are a usage error, before any
    service starts)."""
    return discovery.resolve(list(plan.scenarios or ()), services=kinds(config))


def services_needed(
    scenarios: list[discovery.ScenarioInfo], plan: Plan, config: Mapping[str, Any], log: Log
) -> ServiceSet | None:
    """The services the planned scenarios declare, and only those, not started yet
    (:func:`run` starts them as a context, so that they are stopped whatever happens)."""
    needed = sorted({s for info in scenarios for s in info.services})
    if not needed:
        return None
    # Imported here: services.py (with containers.py) is ~30 M instructions of imports (~15 ms,
    # callgrind), for scenarios that declare a service only.
    from shutdown_harness import services

    how = {**plan.services, "etcd": plan.etcd, "valkey": plan.valkey}
    return services.ServiceSet(
        {name: how.get(name) or "auto" for name in needed}, config=config, log=log
    )


def prepare_strategies(
    plan: Plan, chosen: list[strategies.Strategy], scenarios: list[discovery.ScenarioInfo],
    log: Log
) -> dict[str, ReadyStrategy]:
    """Build (or reuse) one virtualenv per strategy and check its cleanup mode."""
    prepared: dict[str, ReadyStrategy] = {}
    for strategy in chosen:
        if plan.python and strategy.python is None and strategy.requirements:
            strategy = dataclasses.replace(strategy, python=plan.python)
        if strategy.requirements:
            python = virtualenv.ensure(strategy, progress=lambda msg: log(f"  {msg}"))
        else:  # an existing interpreter with the client already installed
            python = Path(strategy.python or sys.executable)
        strategies.check_mode(strategy, python, [info.path.parent for info in scenarios])
        prepared[strategy.name] = ReadyStrategy(strategy, python)
    return prepared


def plan_cells(
    plan: Plan,
    scenarios: list[discovery.ScenarioInfo],
    prepared: Mapping[str, ReadyStrategy],
    services: ServiceSet | None,
    log: Log,
) -> tuple[dict[Cell, Cellinfo], dict[str, str]]:
    """One :class:`Cellinfo` per (scenario, strategy) that can run, and why the others cannot
    ("scenario/strategy" -> reason)."""
    cells: dict[Cell, Cellinfo] = {}
    not_applicable: dict[str, str] = {}
    base_env = child_environment(plan)
    for info in scenarios:
        for name, each in prepared.items():
            strategy, python = each.strategy, each.python
            env = {**base_env}
            if info.services and services is not None:
                env.update(services.env(info.services))
            reason = discovery.probe(info, python, env)
            if reason is not None:
                not_applicable[f"{info.name}/{name}"] = reason
                continue
            argv: list[str] = [str(python), str(CHILD), str(info.path), *strategy.child_args()]
            if plan.exit_delay:
                argv += ["--exit-delay", str(plan.exit_delay)]
            if not plan.faulthandler:
                argv += ["--no-faulthandler"]
            versions = virtualenv.installed_versions(python)
            cells[(info.name, name)] = Cellinfo(
                argv=tuple(argv),
                env=env,
                timeout=plan.timeout or info.timeout,
                dump_signal=signal.SIGUSR1,
                runs=plan.runs or info.runs,
                python=versions.get("python"),
                executable=os.path.realpath(python),
                client_version=_client_version(strategy, versions),
                services=info.services,
            )
    for cell, why in not_applicable.items():
        log(f"not applicable: {cell}: {why}")
    if not cells:
        raise UsageError("no scenario can run under the chosen strategies (all not applicable)")
    return cells, not_applicable


def _client_version(strategy: strategies.Strategy, versions: dict[str, str]) -> str | None:
    found = [f"{d}=={versions[d]}" for d in strategy.distributions if d in versions]
    return "+".join(found) or None


def start_warm(
    plan: Plan, cells: Mapping[Cell, Cellinfo], out: Path, log: Log
) -> tuple[dict[Cell, ForkServer], dict[Cell, str]]:
    """With --warm: one fork server per cell (harness/warm.py), and why the cells that cannot
    fork run cold."""
    if not plan.warm:
        return {}, {}
    # Imported here: warm.py pulls socket (~6 ms of every run's start-up, -X importtime) for
    # --warm campaigns only.
    from shutdown_harness import warm

    refused: dict[Cell, str] = {}
    cannot = warm.become_subreaper()
    unsafe = warm.unsafe_modules()
    servers: dict[Cell, ForkServer] = {}
    ready: dict[Cell, ForkServer] = {}
    try:
        for cell, info in cells.items():
            if cannot:
                refused[cell] = cannot
                continue
            server_log = out / ".work" / "warm" / f"{len(servers)}.log"
            server = warm.ForkServer(str(info.argv[0]), info.argv, info.env, server_log, unsafe)
            servers[cell] = server
            server.spawn()
        for cell, server in servers.items():  # their imports ran side by side
            reason = server.ready()
            if reason is None:
                ready[cell] = server
            else:
                refused[cell] = reason
                server.close()
    except BaseException:
        stop_warm(servers)
        raise
    for (scenario, strategy), reason in refused.items():
        log(f"warm start refused for {scenario} / {strategy}, its runs start cold: {reason}")
    if ready:
        log(f"warm start: {len(ready)} fork servers ready; cold controls: "
            f"{warm.CONTROL_FRACTION:.0%} of each cell's runs, at least {warm.MIN_CONTROLS}")
    return ready, refused


def stop_warm(servers: Mapping[Cell, ForkServer]) -> None:
    for server in servers.values():
        server.close()
