"""Helpers shared by tests that start and kill real processes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path


def gone(pid: int, within: float = 10.0) -> bool:
    """Whether ``pid`` is dead within ``within`` seconds (a zombie counts: it is dead, just not
    reaped by its parent yet)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ")[1].startswith("Z"):
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def living() -> Iterator[tuple[int, bytes]]:
    """Every process that is not a zombie, with its command line."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if stat[stat.rfind(")") + 2] != "Z":
                yield int(entry.name), cmdline
