"""The engine with real children that exit, abort, segfault and hang."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from shutdown_harness.engine import Engine, Exit, Job, raise_core_limit

BEHAVE = Path(__file__).parent / "children" / "behave.py"


def _job(run_id: str, *args: str, timeout: float = 20.0, **kw: object) -> Job:
    return Job(run_id, (sys.executable, str(BEHAVE), *args), timeout=timeout, **kw)  # type: ignore[arg-type]


def _run(tmp_path: Path, jobs: list[Job], parallel: int = 2, **kw: object) -> dict[str, dict]:
    seen: dict[str, dict] = {}

    def on_exit(ex: Exit) -> None:
        seen[ex.job.run_id] = {
            "returncode": ex.returncode,
            "timed_out": ex.timed_out,
            "stdout": ex.stdout.text(),
            "stderr": ex.stderr.text(),
            "core": ex.core_path is not None,
            "duration": ex.duration_s,
            "cpu": ex.cpu_s,
            "workdir": ex.workdir,
        }

    engine = Engine(tmp_path / "work", jobs=parallel, **kw)  # type: ignore[arg-type]
    assert engine.run(jobs, on_exit)
    return seen


def test_exit_codes_and_signals(tmp_path: Path) -> None:
    seen = _run(
        tmp_path,
        [
            _job("ok", "ok"),
            _job("exit3", "exit", "3"),
            _job("raise", "raise"),
            _job("abort", "abort"),
            _job("segv", "segv"),
        ],
    )
    assert seen["ok"]["returncode"] == 0
    assert "@@shutdown-harness: work done@@" in seen["ok"]["stdout"]
    assert seen["exit3"]["returncode"] == 3
    assert seen["raise"]["returncode"] == 1
    assert "ValueError: boom from the child" in seen["raise"]["stderr"]
    assert seen["abort"]["returncode"] == -signal.SIGABRT
    assert seen["segv"]["returncode"] == -signal.SIGSEGV
    assert all(not r["timed_out"] for r in seen.values())
    assert seen["ok"]["cpu"] > 0


def test_parallelism_is_bounded_and_used(tmp_path: Path) -> None:
    # Six children that each print when they start and end, two slots: at most two ever run
    # at once, and two do run at once (no timing assumption beyond the 0.3 s sleep).
    code = "import time; print(time.time()); time.sleep(0.3); print(time.time())"
    jobs = [Job(f"s{i}", (sys.executable, "-c", code), timeout=30) for i in range(6)]
    seen = _run(tmp_path, jobs, parallel=2)
    spans = [tuple(map(float, r["stdout"].split())) for r in seen.values()]
    assert len(spans) == 6
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    assert peak == 2
    slots = {tmp_path / "work" / "slot-0", tmp_path / "work" / "slot-1"}
    assert {r["workdir"] for r in seen.values()} <= slots


def test_core_dump_lands_in_the_child_workdir(tmp_path: Path) -> None:
    if raise_core_limit() is None:
        pytest.skip("the hard RLIMIT_CORE is 0 here")
    pattern = Path("/proc/sys/kernel/core_pattern").read_text().strip()
    if pattern.startswith("|") or "/" in pattern:
        pytest.skip(f"core_pattern is {pattern!r}: cores do not land in the cwd")
    seen = _run(tmp_path, [_job("abort", "abort")], parallel=1)
    assert seen["abort"]["core"]


def test_hang_gets_stacks_then_dies_and_no_process_survives(tmp_path: Path) -> None:
    seen = _run(
        tmp_path,
        [
            Job(
                "hang",
                (sys.executable, "-X", "faulthandler", "-c",
                 "import faulthandler, signal, subprocess, sys, time\n"
                 "faulthandler.register(signal.SIGUSR1, all_threads=True)\n"
                 "subprocess.Popen([sys.executable, '-c',"
                 " 'import time; time.sleep(3600)  # orphan-probe'])\n"
                 "def stuck_here():\n    time.sleep(3600)\n"
                 "stuck_here()\n"),
                timeout=1.0,
            )
        ],
        parallel=1,
        grace=1.0,
    )
    hang = seen["hang"]
    assert hang["timed_out"]
    assert hang["returncode"] == -signal.SIGKILL
    assert "stuck_here" in hang["stderr"]  # faulthandler answered the dump signal
    assert hang["duration"] >= 2.0  # the 1 s timeout, then the 1 s grace for the stacks
    time.sleep(0.2)
    ps = subprocess.run(["ps", "-eo", "pid,stat,args"], capture_output=True, text=True).stdout
    assert "orphan-probe" not in ps


def test_hang_before_and_after_marker(tmp_path: Path) -> None:
    seen = _run(
        tmp_path,
        [_job("before", "hang-before", timeout=1.0), _job("after", "hang-after", timeout=1.0)],
        grace=0.5,
    )
    assert seen["before"]["timed_out"] and seen["after"]["timed_out"]
    assert "work done" not in seen["before"]["stdout"]
    assert "work done" in seen["after"]["stdout"]


def test_missing_program_is_reported_not_raised(tmp_path: Path) -> None:
    seen: list[Exit] = []
    engine = Engine(tmp_path / "work", jobs=1)
    engine.run([Job("x", ("/nonexistent/program",), timeout=5)], seen.append)
    assert seen[0].returncode is None
    assert seen[0].error and "cannot start" in seen[0].error


def test_stop_kills_running_children_and_reports_only_finished(tmp_path: Path) -> None:
    seen: list[Exit] = []
    engine = Engine(tmp_path / "work", jobs=2)
    jobs = [_job("quick", "ok")] + [_job(f"hang{i}", "spawn-and-hang") for i in range(3)]
    timer = threading.Timer(1.5, engine.stop)
    timer.start()
    started = time.monotonic()
    completed = engine.run(jobs, seen.append)
    assert not completed
    assert time.monotonic() - started < 10
    assert [e.job.run_id for e in seen] == ["quick"]
    time.sleep(0.2)
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert "# grandchild" not in ps
    assert os.listdir(tmp_path / "work" / "slot-0") == []


def test_every_child_starts_in_an_empty_folder_whatever_the_last_one_left(
    tmp_path: Path,
) -> None:
    # A run that leaves nothing costs one inotify read; a file, a folder, a file moved in, or
    # one left after the child exited (a process it started) must still be cleared.
    outside = tmp_path / "outside"
    outside.mkdir()
    shell = {
        "file": "echo x > left.txt",
        "folder": "mkdir -p a/b && echo x > a/b/c",
        "moved": f"echo x > {outside}/m && mv {outside}/m here",
        # a process that left the run's group and its mark (so it outlives the run) writes
        # after the child exited; the child waits until it has left them
        "late": f"env -i setsid sh -c 'touch {outside}/left; sleep 0.3; echo x > late.txt' & "
                f"until [ -e {outside}/left ]; do sleep 0.01; done",
        "nothing": "true",
    }
    look = "ls -A; echo END"
    jobs = []
    for name, leave in shell.items():
        jobs += [Job(name, ("sh", "-c", leave), timeout=30),
                 Job(f"after-{name}", ("sh", "-c", look), timeout=30)]
    jobs.insert(jobs.index(next(j for j in jobs if j.run_id == "after-late")),
                Job("wait", ("sh", "-c", "until [ -e late.txt ]; do sleep 0.05; done"),
                    timeout=30))  # the late file is written while this one runs
    seen = _run(tmp_path, jobs, parallel=1)
    assert seen["wait"]["returncode"] == 0
    for name in shell:
        assert seen[f"after-{name}"]["stdout"] == "END\n", name
    assert os.listdir(tmp_path / "work" / "slot-0") == []


def test_callbacks_and_the_job_iterator_never_run_at_once(tmp_path: Path) -> None:
    # on_exit runs in the slot threads: the engine serializes it with the pulls from `jobs`.
    busy: list[str] = []
    overlaps: list[str] = []

    def enter(what: str) -> None:
        if busy:
            overlaps.append(f"{what} during {busy[0]}")
        busy.append(what)

    def jobs():  # type: ignore[no-untyped-def]
        for i in range(12):
            enter("next job")
            time.sleep(0.01)
            busy.pop()
            yield Job(f"j{i}", (sys.executable, "-c", "pass"), timeout=30)

    def on_exit(ex: Exit) -> None:
        enter(ex.job.run_id)
        time.sleep(0.02)
        busy.pop()

    engine = Engine(tmp_path / "work", jobs=3)
    assert engine.run(jobs(), on_exit)
    assert overlaps == []


def test_children_get_the_callers_signal_mask_and_their_slot_as_cwd(tmp_path: Path) -> None:
    # Slot threads block Ctrl-C and friends (Python handles signals in the main thread only)
    # but children must not inherit that; and each slot's cwd is its own, not the process's.
    code = ("import os; print(os.getcwd()); "
            "print([l for l in open('/proc/self/status') if l.startswith('SigBlk')][0].strip())")
    here = os.getcwd()
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, ())
    seen = _run(tmp_path, [Job(f"c{i}", (sys.executable, "-c", code), timeout=30)
                           for i in range(4)])
    assert os.getcwd() == here
    expected = sum(1 << (int(s) - 1) for s in blocked)
    for r in seen.values():
        cwd, sigblk = r["stdout"].splitlines()
        assert Path(cwd) == r["workdir"]
        assert int(sigblk.split()[1], 16) == expected


def test_slot_threads_block_sigchld_only_when_a_handler_wants_it(tmp_path: Path) -> None:
    # A child's SIGCHLD goes to the slot thread that started it. Ignored by default, it is
    # dropped at once if that thread does not block it; blocked, it woke the main thread once
    # per run. A Python handler still gets it in the main thread.
    def masks() -> list[set[int]]:
        seen: list[set[int]] = []

        def on_exit(ex: Exit) -> None:  # called in a slot thread
            seen.append({int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, ())})

        jobs = [Job(f"t{i}", ("true",), timeout=30) for i in range(4)]
        assert Engine(tmp_path / "work", jobs=2).run(jobs, on_exit)
        assert len(seen) == 4
        return seen

    assert signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL
    for mask in masks():
        assert signal.SIGINT in mask
        assert signal.SIGCHLD not in mask
    previous = signal.signal(signal.SIGCHLD, lambda *_: None)
    try:
        for mask in masks():
            assert signal.SIGINT in mask
            assert signal.SIGCHLD in mask
    finally:
        signal.signal(signal.SIGCHLD, previous)


def test_capture_keeps_both_ends_of_a_huge_output_and_frees_the_middle() -> None:
    from shutdown_harness.engine import CAPTURE_LIMIT, KEEP_HEAD, KEEP_TAIL, Capture

    fd = os.memfd_create("test")
    chunk = bytes(range(256)) * 4096  # 1 MiB
    size = CAPTURE_LIMIT + (8 << 20)
    for _ in range(size // len(chunk)):
        os.write(fd, chunk)
    capture = Capture(fd)
    head, tail = capture.read(100, 200).split(b"\n[... ")
    assert head == chunk[:100]
    assert tail.endswith(chunk[-200:]) and f"{size - 300} bytes cut".encode() in tail
    capture.trim()
    assert os.fstat(fd).st_size == size  # same size: readers see the same cut
    assert os.fstat(fd).st_blocks * 512 <= KEEP_HEAD + KEEP_TAIL + (1 << 20)
    assert capture.read(KEEP_HEAD, 0).startswith(chunk[:1000])
    assert capture.read(0, KEEP_TAIL // 2).endswith(chunk[-1000:])
    small = Capture(os.memfd_create("small"))
    os.write(small.fd, b"hello")
    assert small.text() == "hello" and small.text(0, 2) == "\n[... 3 bytes cut ...]\nlo"
    capture.close()
    small.close()
    assert capture.read() == b""


def test_started_is_called_once_after_the_first_child_started(tmp_path: Path) -> None:
    marker = tmp_path / "first-child-ran"
    calls: list[tuple[str, bool]] = []
    engine = Engine(tmp_path / "work", jobs=3)
    # The first child touches a file and sleeps, so "after it started" can be seen from here.
    jobs = [Job("0", (sys.executable, "-c", "import pathlib, sys, time; "
                      "pathlib.Path(sys.argv[1]).touch(); time.sleep(0.5)", str(marker)),
                timeout=20.0)]
    jobs += [_job(str(i), "exit", "0") for i in range(1, 6)]

    def started() -> None:
        calls.append((threading.current_thread().name, engine.started is None))
        deadline = time.monotonic() + 10
        while not marker.exists() and time.monotonic() < deadline:  # the child runs by now
            time.sleep(0.01)

    engine.started = started
    assert engine.run(jobs, lambda ex: None)
    assert len(calls) == 1, calls
    assert calls[0][0].startswith("slot-") and calls[0][1]
    assert marker.exists()
