"""harness.cores: the core budget's decisions, and real gdb runs on real cores."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from shutdown_harness.backtrace import crashing_thread_frames
from shutdown_harness.classify import classify, needs_backtrace
from shutdown_harness.cores import CoreBudget, core_dump_unavailable, gdb_available, run_gdb

# --------------------------------------------------------------------------------------------
# CoreBudget


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_budget_specific_signatures_get_exemplars_only() -> None:
    budget = CoreBudget(exemplars=2)
    decisions = []
    for _ in range(4):
        d = budget.decide("cell/gilstate", unspecific=False)
        decisions.append(d.analyse)
        if d.analyse:
            budget.record("cell/gilstate", "gilstate", None, 0.5)
    assert decisions == [True, True, False, False]
    assert budget.summary()["not_analysed"] == 2


def test_budget_unspecific_analysed_within_gdb_share_then_inferred() -> None:
    clock = _Clock()
    budget = CoreBudget(exemplars=2, max_gdb_share=0.25, clock=clock)
    key = "cell/unclassified-SIGABRT"
    analysed = 0
    for _ in range(10):
        clock.now += 1.0  # a run finishes every second; gdb takes 0.6 s
        if budget.decide(key, unspecific=True).analyse:
            budget.record(key, "pthread-exit-unwind-abort", ["take_gil"], 0.6)
            analysed += 1
    assert 2 <= analysed < 10  # the share caps gdb time
    assert budget.summary()["gdb_seconds"] <= 0.25 * clock.now + 0.6
    v = classify(returncode=-6, stderr="Fatal Python error: Aborted\n")
    assert needs_backtrace(v)
    inferred = budget.infer(key, v)
    assert inferred.signature == "pthread-exit-unwind-abort"
    assert inferred.source == "inferred"
    assert any("inferred from" in n for n in inferred.notes)


def test_budget_does_not_infer_when_exemplars_disagree() -> None:
    budget = CoreBudget(exemplars=2)
    budget.record("k", "native-crash:a", ["a"], 0.1)
    budget.record("k", "native-crash:b", ["b"], 0.1)
    v = classify(returncode=-11, stderr="")
    assert budget.infer("k", v).signature == "unclassified-SIGSEGV"
    assert budget.infer("unknown-key", v).signature == "unclassified-SIGSEGV"


def test_budget_infers_the_majority_of_a_mixed_group() -> None:
    budget = CoreBudget(exemplars=3)
    for signature in ("native-crash:a", "native-crash:b", "native-crash:a", "native-crash:a"):
        budget.record("k", signature, [signature], 0.1)
    inferred = budget.infer("k", classify(returncode=-11, stderr=""))
    assert inferred.signature == "native-crash:a" and inferred.source == "inferred"
    assert any("3 of 4 analysed cores" in n for n in inferred.notes)


def test_budget_grows_with_the_crash_rate() -> None:
    """A group that crashes in every run keeps getting analyses after the time share is
    spent: exemplars + isqrt(crashes), about 3 + 31 for 1,000 crashes."""
    clock = _Clock()
    budget = CoreBudget(exemplars=3, max_gdb_share=0.0, clock=clock)
    analysed = 0
    for _ in range(1000):
        clock.now += 0.1
        if budget.decide("cell/unclassified-SIGSEGV", unspecific=True).analyse:
            budget.record("cell/unclassified-SIGSEGV", "native-crash:a", ["a"], 0.6)
            analysed += 1
    assert analysed == 3 + 31
    specific = [budget.decide("cell/gilstate", unspecific=False).analyse for _ in range(100)]
    assert sum(specific) == 3  # a specific stderr needs exemplars only


def test_budget_keeps_few_cores_and_bounded_bytes() -> None:
    budget = CoreBudget(keep_cores=1, max_core_bytes=100)
    assert budget.keep_core("k", "s1", 60)
    assert not budget.keep_core("k", "s1", 10)  # one per signature
    assert not budget.keep_core("k", "s2", 50)  # would pass the byte cap
    assert budget.keep_core("k", "s3", 40)


# --------------------------------------------------------------------------------------------
# real gdb on a real core


def _no_core_reason() -> str | None:
    return gdb_available() or core_dump_unavailable()


@pytest.mark.skipif(_no_core_reason() is not None, reason=str(_no_core_reason()))
def test_run_gdb_on_a_real_segfault_core(tmp_path: Path) -> None:
    def cores_on() -> None:
        resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))

    proc = subprocess.run([sys.executable, "-X", "faulthandler", "-c",
                           "import ctypes; ctypes.string_at(0)"],
                          cwd=tmp_path, capture_output=True, text=True, preexec_fn=cores_on,
                          timeout=60)
    assert proc.returncode == -11
    core = tmp_path / "core"  # core_dump_unavailable() is None: core_pattern is a file name
    if not core.exists():
        core = next(tmp_path.glob("core.*"))
    # sys.executable is a venv symlink: run_gdb must follow it to the real binary
    text = run_gdb(core, Path(sys.executable), timeout=120)
    assert "Program terminated with signal SIGSEGV" in text
    frames = crashing_thread_frames(text)
    assert "<signal handler called>" in frames
    v = classify(returncode=proc.returncode, stderr=proc.stderr, backtrace=text)
    assert v.signature.startswith("native-crash:") and v.source == "frames"
    assert "0x" not in v.signature and v.frames


def test_run_gdb_reports_a_bad_core_in_one_line(tmp_path: Path) -> None:
    if gdb_available() is not None:
        pytest.skip(str(gdb_available()))
    bogus = tmp_path / "core"
    bogus.write_bytes(b"not a core")
    with pytest.raises(RuntimeError, match="gdb gave no backtrace"):
        run_gdb(bogus, Path(os.path.realpath(sys.executable)), timeout=60)


def test_core_budget_counts_analyses_still_in_flight() -> None:
    # gdb runs in the background: decisions made before any result comes back count too,
    # or every crash of a burst would be taken for one of the first exemplars.
    budget = CoreBudget(exemplars=3)
    decisions = [budget.decide("cell/gilstate", unspecific=False) for _ in range(5)]
    assert [d.analyse for d in decisions] == [True, True, True, False, False]
    budget.abandon("cell/gilstate")  # one gdb failed: its place is free again
    assert budget.decide("cell/gilstate", unspecific=False).analyse
