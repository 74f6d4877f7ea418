"""Helpers shared by tests that start and kill real processes."""

from __future__ import annotations

import time


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
