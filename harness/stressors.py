"""Stressors: ways to raise the crash rate without touching the code under test.

- oversubscription: more children at once (``--jobs``) than CPUs, so that a child's threads are
  descheduled at arbitrary points of its shutdown (``parse_jobs`` accepts ``8`` or ``2x``);
- CPU pinning: all children on the given CPUs (``pin_cpus``; the engine pins each child as
  it starts, the harness itself stays free);
- a random exit delay: the child wrapper sleeps 0..S seconds after the work, which shifts where
  in the runtime's own teardown the interpreter's finalization lands.

Load changes crash rates, so every record keeps the load it ran under (``load_label``); the
aggregate (harness/aggregate.py) splits cells by load and says so, never pooling them.
"""

from __future__ import annotations

import os
import re
from typing import Any

from shutdown_harness.errors import UsageError

__all__ = [
    "cpu_count",
    "parse_jobs",
    "pin_cpus",
    "format_cpus",
    "parse_exit_delay",
    "load_label",
]

MAX_EXIT_DELAY_S = 60.0


def cpu_count() -> int:
    """CPUs this process may run on (its affinity, not the machine's total)."""
    return len(os.sched_getaffinity(0))


def parse_jobs(text: str | int, cpus: int | None = None) -> int:
    """``8`` -> 8; ``2x`` -> twice the CPUs (oversubscription relative to the machine)."""
    cpus = cpus or cpu_count()
    raw = str(text).strip().lower()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)x", raw)
    try:
        jobs = round(float(m.group(1)) * cpus) if m else int(raw)
    except ValueError:
        raise UsageError(
            f"--jobs must be a number or a multiple of the CPUs (2x), not {text!r}"
        ) from None
    if jobs < 1:
        raise UsageError(f"--jobs {text}: must give at least one job")
    return jobs


def pin_cpus(spec: str) -> list[int]:
    """``"0"``, ``"0-1"``, ``"0,2"``, ``"0-1,3"`` -> sorted CPU numbers, all usable here."""
    cpus: set[int] = set()
    for part in spec.replace(" ", "").split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise UsageError(f"--pin must list CPUs like 0, 0-1 or 0,2, not {spec!r}")
        first, last = int(m.group(1)), int(m.group(2) or m.group(1))
        if last < first:
            raise UsageError(f"--pin {spec}: range {part} runs backwards")
        cpus.update(range(first, last + 1))
    usable = os.sched_getaffinity(0)
    missing = sorted(cpus - usable)
    if missing:
        raise UsageError(
            f"--pin {spec}: CPU {missing[0]} is not available here (usable: {format_cpus(usable)})"
        )
    return sorted(cpus)


def format_cpus(cpus: set[int] | list[int]) -> str:
    """[0, 1, 2, 5] -> ``"0-2,5"``."""
    ordered = sorted(set(cpus))
    ranges: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        ranges.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(ranges)


def parse_exit_delay(text: str | float) -> float:
    """``0.2``, ``"0.2s"`` or ``"200ms"`` -> the maximum random exit delay in seconds."""
    raw = str(text).strip().lower()
    m = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)\s*(ms|s)?", raw)
    if not m:
        raise UsageError(
            f"--exit-delay must be seconds (0.2) or milliseconds (200ms), not {text!r}"
        )
    seconds = float(m.group(1)) / (1000.0 if m.group(2) == "ms" else 1.0)
    if seconds > MAX_EXIT_DELAY_S:
        raise UsageError(f"--exit-delay {text}: at most {MAX_EXIT_DELAY_S:g} s")
    return seconds


def load_label(
    jobs: int,
    cpus: int | None = None,
    pin: list[int] | str | None = None,
    exit_delay: float | None = None,
) -> dict[str, Any]:
    """The load a run ran under, as records and campaign.json keep it.

    ``cpus`` defaults to the pinned CPUs when pinned, else to this process's usable CPUs.
    """
    pinned = pin_cpus(pin) if isinstance(pin, str) else pin
    if cpus is None:
        cpus = len(pinned) if pinned else cpu_count()
    return {
        "jobs": jobs,
        "cpus": cpus,
        "jobs_per_cpu": round(jobs / cpus, 3),
        "pin": format_cpus(pinned) if pinned else None,
        "exit_delay": float(exit_delay or 0.0),
    }

