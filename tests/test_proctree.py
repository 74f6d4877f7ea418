"""Nothing a run starts outlives it, or the harness: hostile children, real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from shutdown_harness import proctree
from shutdown_harness.engine import Engine, Exit, Job

HOSTILE = Path(__file__).parent / "fixtures" / "hostile"
CHILD = Path(__file__).parent.parent / "harness" / "child.py"
HARNESS = [sys.executable, "-m", "shutdown_harness"]


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for a parent that is not us counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat[stat.rfind(")") + 2] != "Z"


def _wait_for(predicate, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def _run_engine(tmp_path: Path, jobs: list[Job], parallel: int = 1,
                limit: float = 60.0) -> dict[str, Exit | dict]:
    """Run the engine in a thread; fail (instead of hanging the suite) past ``limit``."""
    seen: dict[str, dict] = {}

    def on_exit(ex: Exit) -> None:
        seen[ex.job.run_id] = {"stdout": ex.stdout.text(), "returncode": ex.returncode,
                               "timed_out": ex.timed_out}

    engine = Engine(tmp_path / "work", jobs=parallel, grace=0.5)
    thread = threading.Thread(target=engine.run, args=(jobs, on_exit), daemon=True)
    thread.start()
    thread.join(limit)
    assert not thread.is_alive(), "the engine did not end"
    return seen  # type: ignore[return-value]


def _pids(text: str) -> list[int]:
    return [int(p) for p in text.split()]


def test_a_child_that_joins_our_process_group_and_ignores_signals_is_killed(
    tmp_path: Path,
) -> None:
    pidfile = tmp_path / "pid"
    job = Job("joinpg", (sys.executable, str(HOSTILE / "joinpg.py"), str(pidfile)), timeout=1.0)
    seen = _run_engine(tmp_path, [job])
    assert seen["joinpg"]["timed_out"]
    assert seen["joinpg"]["returncode"] == -signal.SIGKILL
    assert not _alive(int(pidfile.read_text()))


def test_grandchildren_in_sessions_of_their_own_die_with_their_run(tmp_path: Path) -> None:
    hostile = (sys.executable, str(HOSTILE / "grandchildren.py"), "2")
    jobs = [Job("exits", (*hostile, "exit"), timeout=30.0),
            Job("hangs", (*hostile, "hang"), timeout=3.0)]
    seen = _run_engine(tmp_path, jobs, parallel=2)
    assert seen["exits"]["returncode"] == 0
    assert seen["hangs"]["timed_out"]
    pids = _pids(seen["exits"]["stdout"]) + _pids(seen["hangs"]["stdout"])
    assert len(pids) == 8
    assert [pid for pid in pids if _alive(pid)] == []


def test_small_campaigns_run_at_the_concurrency_asked(tmp_path: Path) -> None:
    # Each child prints when its sleep starts and ends; with as many runs as slots (and up to
    # twice as many), every slot runs one at once: none holds a second run another could start.
    code = "import time; print(time.time()); time.sleep(1.0); print(time.time())"
    for runs, parallel in ((2, 2), (4, 4), (3, 2)):
        jobs = [Job(f"r{i}", (sys.executable, "-c", code), timeout=60) for i in range(runs)]
        seen = _run_engine(tmp_path / f"{runs}-{parallel}", jobs, parallel=parallel)
        spans = [tuple(map(float, r["stdout"].split())) for r in seen.values()]
        events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
        running = peak = 0
        for _, delta in events:
            running += delta
            peak = max(peak, running)
        assert peak == parallel, (runs, parallel)


def _start_harness(tmp_path: Path, command: str, timeout: str = "60") -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*HARNESS, "run", "--command", command, "--timeout", timeout, "--runs", "1",
         "--jobs", "1", "--out", str(tmp_path / "out")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )


def test_sigterm_ends_the_harness_even_when_the_child_left_its_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    harness = _start_harness(tmp_path, f"{sys.executable} {HOSTILE / 'joinpg.py'} {pidfile}")
    try:
        assert _wait_for(pidfile.exists, 60), harness.communicate(timeout=5)[0]
        harness.send_signal(signal.SIGTERM)
        output, _ = harness.communicate(timeout=30)  # grace is 2 s; generous for a busy CI
    finally:
        harness.kill()
    assert harness.returncode == 130, output
    assert not _alive(int(pidfile.read_text()))


def test_a_killed_harness_leaves_no_child_or_grandchild_behind(tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    harness = _start_harness(
        tmp_path, f"{sys.executable} {HOSTILE / 'grandchildren.py'} 2 hang {pidfile}"
    )
    try:
        assert _wait_for(pidfile.exists, 60), harness.communicate(timeout=5)[0]
        harness.kill()  # SIGKILL: nothing of the harness runs after this
        harness.wait(timeout=10)
    finally:
        harness.kill()
    pids = _pids(pidfile.read_text())
    assert len(pids) == 4
    assert _wait_for(lambda: not any(_alive(pid) for pid in pids), 15), [
        pid for pid in pids if _alive(pid)
    ]


def test_a_scenario_child_dies_with_its_parent(tmp_path: Path) -> None:
    # harness/child.py asks for PR_SET_PDEATHSIG: its parent here is a stand-in for the harness.
    pidfile = tmp_path / "pid"
    scenario = HOSTILE / "hang_scenario.py"
    parent = subprocess.Popen(
        [sys.executable, "-c",
         "import subprocess, sys, time\n"
         f"subprocess.Popen([sys.executable, {str(CHILD)!r}, {str(scenario)!r}])\n"
         "time.sleep(300)\n"],
        env={**os.environ, "HOSTILE_PIDFILE": str(pidfile)},
    )
    try:
        assert _wait_for(pidfile.exists, 60)
        parent.kill()
        parent.wait(timeout=10)
    finally:
        parent.kill()
    pid = int(pidfile.read_text())
    assert _wait_for(lambda: not _alive(pid), 10)


def test_each_record_names_the_concurrency_that_ran(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = subprocess.run(
        [*HARNESS, "run", "--command", f"{sys.executable} -c pass", "--runs", "3",
         "--jobs", "4", "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(records) == 3
    assert {r["load"]["jobs"] for r in records} == {3}


def _leave_orphan(mark: str) -> int:
    """Start a marked shell that leaves a sleeping child behind and exits; its pid."""
    shell = subprocess.run(
        ["sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!"], capture_output=True, text=True,
        env={**os.environ, proctree.MARK: mark}, check=True,
    )
    return int(shell.stdout)


def test_orphans_are_found_at_every_look_not_only_the_first() -> None:
    # Orphans keeps the children file open and reads it again at offset 0 for each exit:
    # every read must list the children as they are then, also after it was closed at the end.
    nonce = proctree.new_nonce()
    previous = proctree.become_subreaper()
    assert previous is not None, "this kernel has no child subreapers"
    orphans = proctree.Orphans(nonce)
    left: list[int] = []
    try:
        orphans.collect()  # nothing came back
        for serial in range(3):
            left.append(_leave_orphan(f"{nonce}.0.{serial}"))
            assert _alive(left[-1])
            orphans.collect()
            assert not _alive(left[-1]), serial
            assert orphans.killed == serial + 1
        orphans.collect(everything=True)  # the engine is done: the file is closed
        left.append(_leave_orphan(f"{nonce}.0.9"))
        orphans.collect()
        assert not _alive(left[-1])
        assert orphans.killed == 4
    finally:
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        orphans.collect(everything=True)
        proctree.restore_subreaper(previous)


def test_the_watchdog_waits_in_a_shell_and_sweeps_once_its_stdin_ends() -> None:
    nonce = proctree.new_nonce()
    sleeper = subprocess.Popen(["sleep", "300"],
                               env={**os.environ, proctree.MARK: f"{nonce}.0.0"})
    unmarked = subprocess.Popen(["sleep", "300"])
    watchdog = proctree.start_watchdog(nonce)
    try:
        assert watchdog is not None
        time.sleep(0.3)
        # Waiting costs no interpreter: the shell runs Python only for the sweep.
        exe = os.path.realpath(f"/proc/{watchdog.pid}/exe")
        assert exe != os.path.realpath(sys.executable), exe
        assert watchdog.poll() is None and sleeper.poll() is None
        proctree.stop_watchdog(watchdog)  # stdin closes: it sweeps, then exits
        assert watchdog.returncode == 0
        assert sleeper.wait(timeout=10) == -signal.SIGKILL
        assert unmarked.poll() is None
    finally:
        for process in (sleeper, unmarked):
            process.kill()
            process.wait()
        if watchdog is not None:
            watchdog.kill()
            watchdog.wait()
