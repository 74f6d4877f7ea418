"""The run engine: a bounded pool of short-lived child processes.

The hot loop is deliberately small, as in Go's ``stress``: spawn up to ``jobs`` children, wait
for any of them to exit (one ``epoll`` on their pidfds, no polling), hand each exit to a
callback, reuse the slot. Each child gets:

- its own working directory (a slot folder, emptied between runs), so a core file lands there;
- its own process group, so a timeout or the end of a run can kill every process it started;
- stdout and stderr redirected to files in that folder (no pipes to drain, no threads);
- a deadline: past it, ``dump_signal`` asks the child for its stacks (faulthandler), then after
  a grace period SIGKILL goes to the whole group.

Ctrl-C / SIGTERM: :meth:`Engine.stop` (safe to call from a signal handler) stops spawning, kills
the running groups and returns; runs that did not finish are not reported (a resume reruns them).
"""

from __future__ import annotations

import os
import resource
import selectors
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Job", "Exit", "Engine", "raise_core_limit"]

_CORE_USES_PID = Path("/proc/sys/kernel/core_uses_pid")


@dataclass(frozen=True, slots=True)
class Job:
    """One child process to run."""

    run_id: str
    argv: tuple[str, ...]
    timeout: float
    env: Mapping[str, str] | None = None
    dump_signal: int | None = signal.SIGUSR1
    cpus: frozenset[int] | None = None  # pin the child to these CPUs


@dataclass(slots=True)
class Exit:
    """What happened to a :class:`Job`. Paths stay valid until the callback returns."""

    job: Job
    pid: int
    returncode: int | None  # negative: killed by that signal; None: never started
    timed_out: bool
    duration_s: float
    started_at: float  # epoch seconds
    workdir: Path
    cpu_s: float = 0.0
    max_rss_kb: int = 0
    error: str | None = None  # why the child could not be started
    stdout_path: Path = field(init=False)
    stderr_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.stdout_path = self.workdir / "stdout"
        self.stderr_path = self.workdir / "stderr"

    @property
    def core_path(self) -> Path | None:
        for name in ("core", f"core.{self.pid}"):
            path = self.workdir / name
            if path.exists():
                return path
        return None


@dataclass(slots=True)
class _Running:
    job: Job
    popen: subprocess.Popen[bytes]
    slot: Path
    started: float
    started_at: float
    deadline: float
    timed_out: bool = False
    killed: bool = False


def raise_core_limit() -> tuple[int, int] | None:
    """Raise the soft core-size limit to the hard one; children inherit it.

    Returns the previous limits, or None when core dumps cannot be enabled (hard limit 0).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    if hard == 0:
        return None
    resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))
    return soft, hard


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _empty(folder: Path) -> None:
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                try:
                    os.unlink(entry.path)
                except FileNotFoundError:
                    pass


class Engine:
    """A pool of at most ``jobs`` concurrent children, slot folders under ``workroot``."""

    def __init__(self, workroot: Path, jobs: int, grace: float = 2.0) -> None:
        if jobs < 1:
            raise ValueError("jobs must be at least 1")
        self.workroot = workroot
        self.jobs = jobs
        self.grace = grace
        self.stopped = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)

    def stop(self) -> None:
        """Stop spawning and kill running children. Safe in a signal handler."""
        self.stopped = True
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def _spawn(self, job: Job, slot: Path) -> _Running | Exit:
        started_at = time.time()
        started = time.monotonic()
        try:
            with open(slot / "stdout", "wb") as out, open(slot / "stderr", "wb") as err:
                popen = subprocess.Popen(
                    job.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    cwd=slot,
                    env=job.env,
                    process_group=0,
                    close_fds=True,
                )
        except OSError as e:
            return Exit(job, 0, None, False, 0.0, started_at, slot, error=f"cannot start: {e}")
        if job.cpus:
            try:
                os.sched_setaffinity(popen.pid, job.cpus)
            except OSError:
                pass  # the child already exited: nothing to pin
        return _Running(job, popen, slot, started, started_at, started + job.timeout)

    def _reap(self, run: _Running) -> Exit:
        _, status, usage = os.wait4(run.popen.pid, 0)
        duration = time.monotonic() - run.started
        returncode = os.waitstatus_to_exitcode(status)
        run.popen.returncode = returncode  # so Popen never waits on it again
        _killpg(run.popen.pid)  # grandchildren die with the run
        return Exit(
            job=run.job,
            pid=run.popen.pid,
            returncode=returncode,
            timed_out=run.timed_out,
            duration_s=duration,
            started_at=run.started_at,
            workdir=run.slot,
            cpu_s=usage.ru_utime + usage.ru_stime,
            max_rss_kb=usage.ru_maxrss,
        )

    def _expire(self, run: _Running, now: float) -> None:
        if not run.timed_out:
            run.timed_out = True
            run.deadline = now + self.grace
            if run.job.dump_signal is not None:
                try:
                    os.kill(run.popen.pid, run.job.dump_signal)
                    return
                except ProcessLookupError:
                    return
        if not run.killed:
            run.killed = True
            run.deadline = now + 60.0  # reaped as soon as the kernel reports it
            _killpg(run.popen.pid)

    def run(self, jobs: Iterable[Job], on_exit: Callable[[Exit], None]) -> bool:
        """Run every job; ``on_exit`` is called for each in this thread. True if all ran."""
        pending = iter(jobs)
        exhausted = False
        free = []
        for i in range(self.jobs):
            slot = self.workroot / f"slot-{i}"
            slot.mkdir(parents=True, exist_ok=True)
            _empty(slot)
            free.append(slot)
        running: dict[int, _Running] = {}  # pidfd -> run
        selector = selectors.DefaultSelector()
        selector.register(self._wake_r, selectors.EVENT_READ)
        try:
            while True:
                while free and not exhausted and not self.stopped:
                    job = next(pending, None)
                    if job is None:
                        exhausted = True
                        break
                    slot = free.pop()
                    spawned = self._spawn(job, slot)
                    if isinstance(spawned, Exit):
                        self._finish(spawned, on_exit, free)
                        continue
                    pidfd = os.pidfd_open(spawned.popen.pid)
                    selector.register(pidfd, selectors.EVENT_READ)
                    running[pidfd] = spawned
                if self.stopped or not running:
                    break
                now = time.monotonic()
                wait = max(0.0, min(r.deadline for r in running.values()) - now)
                for key, _ in selector.select(wait):
                    if key.fd == self._wake_r:
                        os.read(self._wake_r, 512)
                        continue
                    run = running.pop(key.fd)
                    selector.unregister(key.fd)
                    os.close(key.fd)
                    self._finish(self._reap(run), on_exit, free)
                now = time.monotonic()
                for run in running.values():
                    if now >= run.deadline:
                        self._expire(run, now)
        finally:
            for pidfd, run in running.items():
                _killpg(run.popen.pid)
                os.wait4(run.popen.pid, 0)
                run.popen.returncode = -signal.SIGKILL
                selector.unregister(pidfd)
                os.close(pidfd)
                _empty(run.slot)
            selector.close()
        return exhausted and not self.stopped

    @staticmethod
    def _finish(exit_: Exit, on_exit: Callable[[Exit], None], free: list[Path]) -> None:
        try:
            on_exit(exit_)
        finally:
            _empty(exit_.workdir)
            free.append(exit_.workdir)
