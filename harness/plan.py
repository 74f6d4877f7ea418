"""The plan: which runs a campaign is made of, in which order, and which shard runs which.

A campaign is a set of cells (scenario x strategy), each with up to ``runs`` runs indexed
0..runs-1 (one number for all cells, or one per cell). A run's id, ``scenario/strategy/index``,
is stable: a resumed or sharded campaign names the same run the same way, which is what makes
``--resume`` and ``merge`` exact.

Runs are issued round-robin across cells (index 0 of every cell, then index 1, ...), so that
the strategies being compared run side by side under the same load, not one after the other.
Shard I of N takes the runs whose index is I-1 modulo N: every shard gets a fair share of
every cell, and the shards together are exactly the unsharded plan.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Container, Iterator, Mapping, Sequence
from dataclasses import dataclass

from shutdown_harness.errors import UsageError

__all__ = ["RunSpec", "Cell", "parse_shard", "iter_plan", "plan_size"]

Cell = tuple[str, str]  # (scenario, strategy)


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
