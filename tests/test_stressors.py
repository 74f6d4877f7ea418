"""Stressors: CPU pinning specs, oversubscription, exit delays, and the load label."""

from __future__ import annotations

import os

import pytest
from shutdown_harness import stressors
from shutdown_harness.errors import UsageError

USABLE = sorted(os.sched_getaffinity(0))


def test_pin_cpus_forms() -> None:
    first = USABLE[0]
    assert stressors.pin_cpus(str(first)) == [first]
    assert stressors.pin_cpus(f"{first}-{first}") == [first]
    assert stressors.pin_cpus(",".join(map(str, USABLE))) == USABLE
    if len(USABLE) > 1 and USABLE[1] == first + 1:
        assert stressors.pin_cpus(f"{first}-{first + 1}, {first}") == [first, first + 1]


@pytest.mark.parametrize("spec", ["", "a", "0-", "1-0", "0;1", "-1"])
def test_pin_cpus_rejects_bad_syntax(spec: str) -> None:
    with pytest.raises(UsageError, match="--pin"):
        stressors.pin_cpus(spec)


def test_pin_cpus_rejects_a_cpu_this_process_cannot_use() -> None:
    missing = max(USABLE) + 1
    with pytest.raises(UsageError, match=f"CPU {missing} is not available here"):
        stressors.pin_cpus(f"{USABLE[0]},{missing}")


def test_format_cpus_round_trips() -> None:
    assert stressors.format_cpus([5, 0, 1, 2, 7, 8]) == "0-2,5,7-8"
    assert stressors.format_cpus({3}) == "3"
    assert stressors.format_cpus([]) == ""


def test_parse_jobs_absolute_and_oversubscribed() -> None:
    assert stressors.parse_jobs("8", cpus=2) == 8
    assert stressors.parse_jobs(3, cpus=2) == 3
    assert stressors.parse_jobs("2x", cpus=2) == 4
    assert stressors.parse_jobs("1.5x", cpus=4) == 6
    assert stressors.parse_jobs("2x") == 2 * len(USABLE)
    for bad in ("0", "x", "-1", "0x"):
        with pytest.raises(UsageError, match="--jobs"):
            stressors.parse_jobs(bad, cpus=2)


def test_parse_exit_delay() -> None:
    assert stressors.parse_exit_delay("0.2") == 0.2
    assert stressors.parse_exit_delay("0.2s") == 0.2
    assert stressors.parse_exit_delay("250ms") == 0.25
    assert stressors.parse_exit_delay(1) == 1.0
    for bad in ("-1", "soon", "61"):
        with pytest.raises(UsageError, match="--exit-delay"):
            stressors.parse_exit_delay(bad)


def test_load_label() -> None:
    plain = stressors.load_label(4, cpus=2)
    assert plain == {"jobs": 4, "cpus": 2, "jobs_per_cpu": 2.0, "pin": None, "exit_delay": 0.0}
    pinned = stressors.load_label(2, pin=[USABLE[0]], exit_delay=0.2)
    assert (pinned["cpus"], pinned["pin"], pinned["jobs_per_cpu"]) == (1, str(USABLE[0]), 2.0)
    assert stressors.load_label(2)["cpus"] == len(USABLE)
