"""The plan: which runs a campaign is made of, in which order, and which shard runs which.

A campaign is a set of cells (scenario x strategy), each with up to ``runs`` runs indexed
0..runs-1 (one number for all cells, or one per cell). A run's id, ``scenario/strategy/index``,
is stable: a resumed or sharded campaign names the same run the same way, which is what makes
``--resume`` and ``merge`` exact.

Runs are issued round-robin across cells (index 0 of every cell, then index 1, ...), so that
the strategies being compared run side by side under the same load, not one after the other.
Shard I of N takes the runs whose index is I-1 modulo N: every shard gets a fair share of
every cell, and the shards together are exactly the unsharded plan.

:class:`Plan` holds every setting of a ``run`` with its default, in one place: the command line,
presets, ``--resume`` (campaign.json) and the pytest plugin all build one. :class:`Cellinfo` is
how one cell's runs start, once the plan has met the scenarios and strategies.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import zlib
from collections.abc import Callable, Container, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shutdown_harness import stressors
from shutdown_harness.errors import UsageError

if TYPE_CHECKING:
    from shutdown_harness.services import ServiceSet
    from shutdown_harness.warm import ForkServer

__all__ = ["Plan", "Cellinfo", "Prepared", "RunSpec", "Cell", "PER_MACHINE", "child_environment",
           "parse_shard", "iter_plan", "plan_size"]

Cell = tuple[str, str]  # (scenario, strategy)
#: Plan settings that may differ between the shards of one campaign (``merge`` ignores them):
#: where and how hard a shard runs, not what it measures.
PER_MACHINE = frozenset({"shard", "jobs", "pin_cpus", "etcd", "valkey", "services", "cores",
                         "keep_cores", "keep_artifacts", "cores_per_signature"})


@dataclass(frozen=True)
class Plan:
    """Every setting of a ``run``, each with its default (adding one is one line here).

    campaign.json keeps it as a plain dict (:meth:`to_dict`, lists for tuples); ``merge``
    compares those dicts and ``--resume`` the settings given again. ``runs``/``timeout`` None
    mean each scenario's own defaults; ``seed`` is fixed here, the command line draws a random
    one and stores it. Lists given for tuple settings are kept as tuples.
    """

    command: str | None = None  # any child program instead of scenarios (--command)
    scenarios: tuple[str, ...] | None = None
    strategies: tuple[str, ...] | None = None
    runs: int | None = None
    jobs: int = field(default_factory=stressors.cpu_count)
    timeout: float | None = None
    seed: int = 0
    shard: tuple[int, int] | None = None
    until_halfwidth: float | None = None
    etcd: str = "auto"
    valkey: str = "auto"
    services: Mapping[str, str] = field(default_factory=dict)  # declared: {name: how}
    pin: str | None = None
    pin_cpus: tuple[int, ...] | None = None
    exit_delay: float | None = None
    cores: str = "auto"
    keep_cores: bool = False
    keep_artifacts: int = 3
    cores_per_signature: int = 3
    faulthandler: bool = True
    python: str | None = None  # the interpreter of the strategies' virtualenvs (--python)
    warm: bool = False  # children forked from a per-cell server (harness/warm.py)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Plan:
        """The plan campaign.json holds; keys it lacks (older versions) or holds as null for a
        setting that has a default take that default."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise UsageError(
                f"the campaign's plan has settings this version does not know: {', '.join(unknown)}"
            )
        given = {
            key: value
            for key, value in data.items()
            if value is not None or _default(fields[key]) is None
        }
        return cls(**given)

    def to_dict(self) -> dict[str, Any]:
        """The plan as campaign.json keeps it (JSON types: lists, not tuples)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def replace(self, **changes: Any) -> Plan:
        return dataclasses.replace(self, **changes)

    def derived_seed(self) -> int:
        """The default seed: a function of what the plan measures (not of the shard or the
        machine, :data:`PER_MACHINE`), so that shards started with the same arguments merge."""
        experiment = {k: v for k, v in self.to_dict().items()
                      if k not in PER_MACHINE and k != "seed"}
        # crc32, not sha256: importing hashlib (OpenSSL) is ~11 M instructions (~5 ms) of
        # every campaign's start, and a seed needs no cryptography.
        return zlib.crc32(json.dumps(experiment, sort_keys=True, default=str).encode()) >> 1

    def load(self) -> dict[str, Any]:
        """The load label of this plan's runs (jobs, pinned CPUs, exit delay)."""
        pin = list(self.pin_cpus) if self.pin_cpus else None
        return stressors.load_label(self.jobs, pin=pin, exit_delay=self.exit_delay)


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


@dataclass(frozen=True)
class Cellinfo:
    """How to start one run of a cell (scenario x strategy)."""

    argv: tuple[str, ...]
    env: Mapping[str, str]
    timeout: float
    dump_signal: int | None
    runs: int
    python: str | None = None
    executable: str | None = None  # the real binary, for gdb on a core file
    client_version: str | None = None
    services: tuple[str, ...] = ()


@dataclass(frozen=True)
class Prepared:
    """The cells a campaign runs and what they run on: a ``--command``'s one cell
    (workflow.py), or what the prepare stage made of the scenarios and strategies
    (prepare.py)."""

    cells: Mapping[Cell, Cellinfo]
    not_applicable: Mapping[str, str] = field(default_factory=dict)  # "scenario/strategy": why
    strategies: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # campaign.json's
    services: ServiceSet | None = None  # started
    warm: Mapping[Cell, ForkServer] = field(default_factory=dict)  # ready fork servers
    warm_refused: Mapping[Cell, str] = field(default_factory=dict)  # cells that start cold: why


def child_environment(plan: Plan) -> dict[str, str]:
    """The environment every child starts from: the harness's, the plan's seed and the folder
    the harness was started in."""
    env = dict(os.environ)
    env["SHUTDOWN_HARNESS_SEED"] = str(plan.seed)
    env["SHUTDOWN_HARNESS_CWD"] = os.getcwd()
    return env


@dataclass(frozen=True, slots=True)
class RunSpec:
    scenario: str
    strategy: str
    index: int

    @property
    def run_id(self) -> str:
        return f"{self.scenario}/{self.strategy}/{self.index}"

    @property
    def cell(self) -> Cell:
        return (self.scenario, self.strategy)


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"2/4"`` -> (2, 4); None stays None."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m:
        raise UsageError(f"--shard must look like I/N (e.g. 1/4), not {text!r}")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 1 <= i <= n:
        raise UsageError(f"--shard {text}: I must be between 1 and N")
    return i, n


def _in_shard(index: int, shard: tuple[int, int] | None) -> bool:
    return shard is None or index % shard[1] == shard[0] - 1


def _runs_of(runs: int | Mapping[Cell, int], cell: Cell) -> int:
    return runs if isinstance(runs, int) else runs[cell]


def plan_size(
    cells: Sequence[Cell], runs: int | Mapping[Cell, int], shard: tuple[int, int] | None
) -> int:
    """How many runs the plan holds (before adaptive stopping)."""
    return sum(
        sum(1 for i in range(_runs_of(runs, cell)) if _in_shard(i, shard)) for cell in cells
    )


def iter_plan(
    cells: Sequence[Cell],
    runs: int | Mapping[Cell, int],
    shard: tuple[int, int] | None = None,
    done: Container[str] = frozenset(),
    cell_done: Callable[[Cell], bool] | None = None,
) -> Iterator[RunSpec]:
    """Yield the runs still to do, round-robin across cells.

    ``done`` holds run ids already recorded (resume). ``cell_done`` is asked before each run of
    a cell; once it says True (adaptive stopping), the cell gets no more runs. The iterator is
    lazy, so ``cell_done`` sees the results that arrived while earlier runs were executing.
    """
    stopped: set[Cell] = set()
    longest = max((_runs_of(runs, cell) for cell in cells), default=0)
    for index in range(longest):
        if not _in_shard(index, shard):
            continue
        for cell in cells:
            if cell in stopped or index >= _runs_of(runs, cell):
                continue
            if cell_done is not None and cell_done(cell):
                stopped.add(cell)
                continue
            spec = RunSpec(cell[0], cell[1], index)
            if spec.run_id not in done:
                yield spec
