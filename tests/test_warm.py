"""Warm start: fork servers, warm children through the engine, the unsafe-fork fallback and
the campaign's cold controls, with real children that exit, abort, segfault and hang."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _processes import gone, living
from shutdown_harness import proctree, warm
from shutdown_harness.engine import Engine, Exit, Job, raise_core_limit
from shutdown_harness.plan import Plan
from shutdown_harness.prepare import CHILD
from shutdown_harness.store import iter_records
from shutdown_harness.workflow import Options, Outcome, run

CHILDREN = Path(__file__).parent / "children"
BEHAVE = CHILDREN / "warm_behave.py"
THREAD_AT_IMPORT = CHILDREN / "thread_at_import.py"


def test_controls_are_a_tenth_at_least_twenty_spread_from_index_0() -> None:
    assert warm.controls(1000) == 100
    assert warm.controls(300) == 30
    assert warm.controls(100) == 20
    assert warm.controls(12) == 12
    for runs in (7, 30, 95, 300, 1001):
        chosen = [i for i in range(runs) if warm.is_control(i, runs)]
        assert len(chosen) == warm.controls(runs)
        assert chosen[0] == 0
    # evenly spread: every tenth run of 300
    assert [i for i in range(300) if warm.is_control(i, 300)][:4] == [0, 10, 20, 30]


def test_unsafe_list_is_module_names() -> None:
    names = warm.unsafe_modules()
    assert "grpc" in names
    assert all(n.replace(".", "").replace("_", "").isalnum() for n in names)


def _argv(scenario: Path, *options: str) -> list[str]:
    return [sys.executable, str(CHILD), str(scenario), *options]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[warm.ForkServer]:
    assert warm.become_subreaper() is None
    raise_core_limit()
    srv = warm.ForkServer(sys.executable, _argv(BEHAVE), dict(os.environ), tmp_path / "log",
                          warm.unsafe_modules())
    srv.spawn()
    assert srv.ready() is None, (tmp_path / "log").read_text()
    assert srv.imports == ["json"]
    yield srv
    srv.close()


def _run(tmp_path: Path, jobs: list[Job]) -> dict[str, Exit | dict[str, Any]]:
    seen: dict[str, Any] = {}

    def on_exit(ex: Exit) -> None:
        seen[ex.job.run_id] = {
            "pid": ex.pid, "returncode": ex.returncode, "timed_out": ex.timed_out,
            "stdout": ex.stdout.text(), "stderr": ex.stderr.text(), "error": ex.error,
            "core": ex.core_path is not None, "cpu": ex.cpu_s, "rss": ex.max_rss_kb,
            "workdir": str(ex.workdir),
        }

    assert Engine(tmp_path / "work", jobs=2, grace=1.0).run(jobs, on_exit)
    return seen


def _job(srv: warm.ForkServer | None, run_id: str, action: str, timeout: float = 20.0) -> Job:
    env = {**os.environ, "SHUTDOWN_HARNESS_RUN_ID": run_id, "WARM_BEHAVE": action}
    return Job(run_id, tuple(_argv(BEHAVE)), timeout, env=env,
               launcher=srv.launch if srv is not None else None)


def test_warm_children_exit_like_cold_ones(tmp_path: Path, server: warm.ForkServer) -> None:
    actions = ["ok", "abort", "segv", "raise"]
    jobs = [_job(server, f"warm-{a}", a) for a in actions]
    jobs += [_job(None, f"cold-{a}", a) for a in actions]
    seen = _run(tmp_path, jobs)
    for start in ("warm", "cold"):
        ok, abort, segv, boom = (seen[f"{start}-{a}"] for a in actions)
        assert ok["returncode"] == 0 and ok["error"] is None
        # the marker, then a finalizer: the interpreter finalized normally (no os._exit)
        assert ok["stdout"].endswith("@@shutdown-harness: work done@@\nfinalized\n")
        facts = json.loads(ok["stdout"].splitlines()[0])
        assert facts["run_id"] == f"{start}-ok"
        assert facts["pgid"] == facts["pid"] == ok["pid"]  # its own process group
        assert facts["cwd"] == ok["workdir"]  # its own slot folder
        assert abort["returncode"] == -signal.SIGABRT
        assert segv["returncode"] == -signal.SIGSEGV
        assert "Fatal Python error: Segmentation fault" in segv["stderr"]  # faulthandler on
        assert boom["returncode"] == 1
        assert "ValueError: boom from a warm child" in boom["stderr"]
        assert "work done" not in boom["stdout"]
        assert ok["cpu"] > 0 and ok["rss"] > 0  # reaped by the harness: wait4's rusage
        if abort["core"] is False:
            pytest.skip("no core files on this machine")  # (checked for both starts below)
    assert seen["warm-abort"]["core"] == seen["cold-abort"]["core"]


def test_a_hung_warm_child_dumps_its_stacks_and_is_killed(
    tmp_path: Path, server: warm.ForkServer
) -> None:
    seen = _run(tmp_path, [_job(server, "hang", "hang", timeout=1.0)])
    hang = seen["hang"]
    assert hang["timed_out"]
    assert hang["returncode"] == -signal.SIGKILL
    assert "time.sleep" in hang["stderr"] or "in main" in hang["stderr"]  # SIGUSR1 dump


def test_a_dead_server_refuses_from_then_on(tmp_path: Path, server: warm.ForkServer) -> None:
    assert server._process is not None
    server._process.kill()
    server._process.wait()
    seen = _run(tmp_path, [_job(server, "after", "ok")])
    assert seen["after"]["returncode"] is None
    assert seen["after"]["error"].startswith("cannot start: the fork server ")
    assert server.refused is not None and server.refused in seen["after"]["error"]


def test_a_thread_started_at_import_refuses_warm_start(tmp_path: Path) -> None:
    srv = warm.ForkServer(sys.executable, _argv(THREAD_AT_IMPORT), dict(os.environ),
                          tmp_path / "log")
    srv.spawn()
    reason = srv.ready()
    assert reason is not None and "2 threads" in reason


def test_an_unsafe_import_refuses_warm_start(tmp_path: Path) -> None:
    srv = warm.ForkServer(sys.executable, _argv(BEHAVE), dict(os.environ), tmp_path / "log",
                          unsafe=["json"])
    srv.spawn()
    reason = srv.ready()
    assert reason is not None and "json, listed as unsafe to fork" in reason


def test_a_server_without_room_for_the_run_mark_refuses(tmp_path: Path) -> None:
    # Without the padded mark that ForkServer.spawn gives it, a run could not be marked: the
    # server says so and its cell runs cold (a run must never go unmarked).
    import socket

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    env = {k: v for k, v in os.environ.items() if k != proctree.MARK}
    with ours:
        server = subprocess.Popen(
            [sys.executable, str(warm.FORK_SERVER), "--fd", str(theirs.fileno()), "--mark",
             proctree.MARK, "--", *_argv(BEHAVE)[2:]], env=env, pass_fds=(theirs.fileno(),))
        theirs.close()
        ours.settimeout(60)
        hello = json.loads(ours.recv(1 << 16))
    assert server.wait(timeout=60) == 0
    assert hello["ok"] is False and "cannot mark the runs" in hello["reason"], hello


def _campaign(tmp_path: Path, scenario: Path, runs: int) -> tuple[Outcome, str]:
    """Run a --warm campaign; its outcome and what it said."""
    config = {"strategies": {"host": {"python": sys.executable}}}
    plan = Plan(scenarios=(str(scenario),), strategies=("host",), runs=runs, jobs=2, seed=1,
                warm=True)
    stream = io.StringIO()
    outcome = run(plan, Options(out=tmp_path / "c", config=config, stream=stream))
    return outcome, stream.getvalue()


def test_warm_campaign_marks_every_record_and_interleaves_cold_controls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WARM_BEHAVE", "ok")
    c, said = _campaign(tmp_path, BEHAVE, runs=30)
    assert c.code == 0
    records = sorted(iter_records(c.out), key=lambda r: r["index"])
    assert len(records) == 30
    starts = {r["index"]: r["start"] for r in records}
    assert [i for i, s in starts.items() if s == "cold"] == [
        i for i in range(30) if warm.is_control(i, 30)
    ]
    assert sum(s == "warm" for s in starts.values()) == 10
    assert all(r["category"] == "clean" and r["work_done"] for r in records)
    report = json.loads((c.out / "report.json").read_text())
    assert report["fidelity"] == [{
        "scenario": "warm_behave", "strategy": "host", "load_label": records[0]["load"] and
        report["cells"][0]["load_label"], "warm": [0, 10], "cold": [0, 20], "p_value": 1.0,
        "differs": False,
    }]
    assert "Fidelity" in said


def test_a_cell_that_cannot_fork_runs_cold_and_says_why(tmp_path: Path) -> None:
    c, out = _campaign(tmp_path, THREAD_AT_IMPORT, runs=4)
    assert c.code == 0
    assert "warm start refused for thread_at_import / host" in out
    records = list(iter_records(c.out))
    assert len(records) == 4
    assert {r["start"] for r in records} == {"cold"}
    assert all("2 threads" in r["warm_refused"] for r in records)
    report = json.loads((c.out / "report.json").read_text())
    assert any("ran cold although --warm was given" in n for n in report["notes"])


HOSTILE = Path(__file__).parent / "fixtures" / "hostile"
FORKS = HOSTILE / "forks_scenario.py"


def _left(piddir: Path) -> dict[int, tuple[str, list[int]]]:
    """What forks_scenario.py runs wrote: run pid -> (warm|cold, the processes it left)."""
    found = {}
    for path in piddir.iterdir():
        if not path.name.endswith(".tmp"):
            start, run, *left = path.read_text().split()
            found[int(run)] = (start, [int(p) for p in left])
    return found


def test_what_a_warm_run_leaves_dies_when_it_ends_as_a_cold_runs(tmp_path: Path) -> None:
    # Forked (not exec'd) children see only the environment block the fork server started
    # with: without the run's mark written there, the engine would leave them running.
    assert warm.become_subreaper() is None
    piddir = tmp_path / "pids"
    piddir.mkdir()
    srv = warm.ForkServer(sys.executable, _argv(FORKS), dict(os.environ), tmp_path / "log")
    srv.spawn()
    try:
        assert srv.ready() is None, (tmp_path / "log").read_text()
        env = {**os.environ, "HOSTILE_PIDDIR": str(piddir), "HOSTILE_THEN": "exit"}
        jobs = [Job(start, tuple(_argv(FORKS)), 30.0, env=env,
                    launcher=srv.launch if start == "warm" else None)
                for start in ("warm", "cold")]
        seen: dict[str, tuple[int | None, str, list[int]]] = {}

        def on_exit(ex: Exit) -> None:  # when the run is over, before the engine ends
            start, left = _left(piddir).get(ex.pid, ("", []))
            seen[ex.job.run_id] = (ex.returncode, start, [p for p in left if not gone(p, 5)])

        assert Engine(tmp_path / "work", jobs=2, grace=1.0).run(jobs, on_exit)
    finally:
        srv.close()
    assert seen == {"warm": (0, "warm", []), "cold": (0, "cold", [])}, (
        seen, (tmp_path / "log").read_text())
    assert len(_left(piddir)) == 2 and all(len(left) == 3 for _, left in _left(piddir).values())


def test_a_killed_harness_leaves_no_warm_run_fork_or_server_behind(tmp_path: Path) -> None:
    scenario = tmp_path / "forks_warm.py"  # a name of its own: no other test's processes
    scenario.write_bytes(FORKS.read_bytes())
    (tmp_path / "pyproject.toml").write_text(
        f"[tool.shutdown-harness.strategies.host]\npython = {json.dumps(sys.executable)}\n")
    piddir = tmp_path / "pids"
    piddir.mkdir()
    harness = subprocess.Popen(
        [sys.executable, "-m", "shutdown_harness", "run", "--scenario", str(scenario),
         "--strategy", "host", "--runs", "40", "--jobs", "2", "--warm", "--timeout", "100",
         "--out", str(tmp_path / "c")], cwd=tmp_path,
        env={**os.environ, "HOSTILE_PIDDIR": str(piddir), "HOSTILE_THEN": "hang"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # Runs 0 (a cold control) and 1 (warm) start together and hang with what they left.
        deadline = time.monotonic() + 90
        while {start for start, _ in _left(piddir).values()} != {"warm", "cold"}:
            assert time.monotonic() < deadline and harness.poll() is None
            time.sleep(0.1)
        ours = [pid for pid, cmdline in living()  # the harness names it too
                if str(scenario).encode() in cmdline and pid != harness.pid]
        marks = {pid: proctree.marked(pid) or "" for pid in ours}
        pids = [pid for run, (_, left) in _left(piddir).items() for pid in (run, *left)]
        nonces = {mark.split(".")[0] for mark in marks.values() if mark}
        assert any(".server." in mark for mark in marks.values()), marks  # the fork server
        unmarked = [pid for pid in ours if not marks[pid]]
        assert not set(unmarked) & {pid for pid, _ in living()}, marks  # warm runs, forks too
        assert len(nonces) == 2, marks  # the engine's, the servers'
    finally:
        harness.kill()  # SIGKILL: nothing of the harness runs after this
        harness.wait()
    deadline = time.monotonic() + 15

    def left_behind() -> list[tuple[int, bytes]]:
        return [(pid, cmdline) for pid, cmdline in living()
                if pid in pids or str(scenario).encode() in cmdline
                or (proctree.marked(pid) or ".").split(".")[0] in nonces]

    while left_behind():
        assert time.monotonic() < deadline, left_behind()
        time.sleep(0.1)
