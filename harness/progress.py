"""Progress of a campaign: a live rich bar on a terminal, a plain status line elsewhere.

Both show runs done, runs per second and failures so far by category, overall and per cell
(scenario x strategy), so a crash rate is visible while the campaign is still running.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from typing import IO, TYPE_CHECKING, Any

from shutdown_harness.schema import FAILURE_CATEGORIES, counts_for_rate

if TYPE_CHECKING:
    from rich.console import Group
    from rich.live import Live
    from rich.progress import Progress, TaskID

__all__ = ["Tally", "ProgressView"]


class Tally:
    """Counts by category, overall and per cell; cheap enough for every run."""

    def __init__(self) -> None:
        self.total: Counter[str] = Counter()
        self.cells: dict[tuple[str, str], Counter[str]] = {}

    def add(self, record: dict[str, Any]) -> None:
        category = record["category"]
        self.total[category] += 1
        cell = (record["scenario"], record["strategy"])
        counter = self.cells.get(cell)
        if counter is None:
            counter = self.cells[cell] = Counter()
        counter[category] += 1

    @staticmethod
    def failures(counter: Counter[str]) -> int:
        return sum(counter[c] for c in FAILURE_CATEGORIES)

    @staticmethod
    def runs(counter: Counter[str]) -> int:
        """Runs that count for a rate (infra runs are not a verdict on the client)."""
        return sum(n for c, n in counter.items() if counts_for_rate(c))

    @classmethod
    def describe(cls, counter: Counter[str]) -> str:
        runs, failed = cls.runs(counter), cls.failures(counter)
        pct = 100.0 * failed / runs if runs else 0.0
        parts = [f"{c} {counter[c]}" for c in (*FAILURE_CATEGORIES, "infra") if counter[c]]
        detail = f" ({', '.join(parts)})" if parts else ""
        return f"{failed}/{runs} failed ({pct:.1f}%){detail}"


class ProgressView:
    """Shows a :class:`Tally` live. Use as a context manager; call :meth:`update` per run."""

    def __init__(
        self,
        tally: Tally,
        planned: int,
        stream: IO[str] | None = None,
        interval: float | None = None,
        live: bool | None = None,
        already: int = 0,
        adaptive: bool = False,
    ) -> None:
        self.tally = tally
        self.planned = planned
        self.adaptive = adaptive  # cells may stop early: `planned` is then a cap
        self.stream = stream or sys.stdout
        # Plain status every 5 s by default (SHUTDOWN_HARNESS_STATUS_INTERVAL overrides).
        self.interval = interval or float(os.environ.get("SHUTDOWN_HARNESS_STATUS_INTERVAL", 5))
        self.live = self.stream.isatty() if live is None else live
        self.started = time.monotonic()
        self._last_line = self.started
        self._done = already
        self._already = already
        self._live: Live | None = None
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._last_render = 0.0

    def __enter__(self) -> ProgressView:
        if self.live:
            # rich's live display is imported only for a terminal: rich.live and rich.progress
            # are a quarter of a one-run campaign's import time (-X importtime), and CI logs,
            # pipes and the bench print plain status lines.
            from rich.console import Console
            from rich.live import Live
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            console = Console(file=self.stream)
            self._progress = Progress(
                TextColumn("[bold]runs"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TextColumn("{task.fields[failures]}"),
                console=console,
            )
            self._task = self._progress.add_task("runs", total=self.planned, rate="", failures="")
            self._live = Live(self._render(), console=console, refresh_per_second=4)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._refresh(force=True)
            self._live.__exit__(None, None, None)

    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return (self._done - self._already) / elapsed if elapsed > 0 else 0.0

    def update(self, record: dict[str, Any]) -> None:
        self._done += 1
        if self.live:
            self._refresh()
        else:
            now = time.monotonic()
            if now - self._last_line >= self.interval:
                self._last_line = now
                self.stream.write(self.status_line() + "\n")
                self.stream.flush()

    def status_line(self) -> str:
        return (
            f"{self._done}/{'at most ' if self.adaptive else ''}{self.planned} runs, "
            f"{self.rate():.1f}/s, "
            f"{Tally.describe(self.tally.total)}"
        )

    def _render(self) -> Group:
        from rich.console import Group
        from rich.table import Table

        table = Table(box=None, pad_edge=False, show_header=True, header_style="bold")
        table.add_column("scenario")
        table.add_column("strategy")
        table.add_column("failures so far")
        for (scenario, strategy), counter in sorted(self.tally.cells.items()):
            table.add_row(scenario, strategy, Tally.describe(counter))
        assert self._progress is not None
        return Group(self._progress, table)

    def _refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_render < 0.2:
            return
        self._last_render = now
        assert self._progress is not None and self._live is not None and self._task is not None
        self._progress.update(
            self._task,
            completed=self._done,
            rate=f"{self.rate():.1f}/s",
            failures=Tally.describe(self.tally.total),
        )
        self._live.update(self._render())
