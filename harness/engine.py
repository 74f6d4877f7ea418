"""The run engine: a bounded pool of short-lived child processes.

The hot loop is deliberately small, as in Go's ``stress``: spawn up to ``jobs`` children, wait
for any of them to exit (one ``epoll`` on their pidfds, no polling), start the next child in the
freed slot at once, and only then hand the exit to the callback. Slots never wait for the
callback's work (classification, storage, progress) nor for the file system, so the CPUs stay
as busy as with a bare ``xargs -P``. Each child gets:

- its own working directory (``slot-N``, empty when it starts), so a core file lands there;
- its own process group, so a timeout or the end of a run can kill every process it started;
- stdout and stderr redirected to fresh files (no pipes to drain, no threads; never a file an
  earlier child could still hold open), created ahead of time, off the path from one child's
  exit to the next one's start;
- a deadline: past it, ``dump_signal`` asks the child for its stacks (faulthandler), then after
  a grace period SIGKILL goes to the whole group.

At exit, a core file moves from ``slot-N`` to ``exited-N`` (a rename, no copy) and anything else
the child left there is removed, so the next child starts in an empty folder while the callback
still reads the previous one's files.

Ctrl-C / SIGTERM: :meth:`Engine.stop` (safe to call from a signal handler) stops spawning, kills
the running groups and returns; runs that did not finish are not reported (a resume reruns them).
"""

from __future__ import annotations

import itertools
import os
import resource
import selectors
import shutil
import signal
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Job", "Exit", "Engine", "raise_core_limit"]

_OUTPUT_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
#: Python ignores these; a child must get them back at their default, as subprocess does.
_DEFAULT_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)


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
    workdir: Path  # the slot folder the child ran in (its working directory)
    stdout_path: Path
    stderr_path: Path
    core_path: Path | None = None  # the core file it dumped, if any
    cpu_s: float = 0.0
    max_rss_kb: int = 0
    error: str | None = None  # why the child could not be started


@dataclass(slots=True)
class _Output:
    """A fresh (stdout, stderr) pair of files, open for the child to inherit."""

    stdout: str
    stderr: str
    fds: tuple[int, int]

    @classmethod
    def create(cls, folder: str, name: str) -> _Output:
        stdout, stderr = f"{folder}/{name}.stdout", f"{folder}/{name}.stderr"
        out = os.open(stdout, _OUTPUT_FLAGS, 0o644)
        try:
            err = os.open(stderr, _OUTPUT_FLAGS, 0o644)
        except OSError:
            os.close(out)
            raise
        return cls(stdout, stderr, (out, err))

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = (-1, -1)

    def remove(self) -> None:
        if self.fds[0] >= 0:
            self.close()
        for path in (self.stdout, self.stderr):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


class _Slot:
    """A working directory, the output files its next child gets, and a place for cores."""

    def __init__(self, root: Path, index: int) -> None:
        self.index = index
        self.workdir = root / f"slot-{index}"
        self.exited = root / f"exited-{index}"
        self.outputs = str(root / "output")
        self._serial = itertools.count()
        self.ready: _Output | None = None
        for folder in (self.workdir, self.exited):
            folder.mkdir(parents=True, exist_ok=True)
            _empty(str(folder))

    def prepare(self) -> None:
        """Create the next child's output files now, while no child is waiting for them."""
        if self.ready is None:
            self.ready = _Output.create(self.outputs, f"{self.index}-{next(self._serial)}")

    def take(self) -> _Output:
        self.prepare()
        assert self.ready is not None
        output, self.ready = self.ready, None
        return output

    def set_aside(self, pid: int) -> Path | None:
        """Empty the workdir for the next child; a core file moves to ``exited``."""
        core = None
        with os.scandir(self.workdir) as entries:
            for entry in entries:
                if entry.name in ("core", f"core.{pid}") and entry.is_file(follow_symlinks=False):
                    core = self.exited / entry.name
                    os.rename(entry.path, core)
                else:
                    _remove(entry)
        return core

    def discard(self) -> None:
        if self.ready is not None:
            self.ready.remove()
            self.ready = None


@dataclass(slots=True)
class _Running:
    job: Job
    pid: int
    slot: _Slot
    output: _Output
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


def _empty(folder: str) -> None:
    with os.scandir(folder) as entries:
        for entry in entries:
            _remove(entry)


def _remove(entry: os.DirEntry[str]) -> None:
    if entry.is_dir(follow_symlinks=False):
        shutil.rmtree(entry.path, ignore_errors=True)
        return
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
        self._devnull = -1
        self._home = -1

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

    def _spawn(self, job: Job, slot: _Slot) -> _Running | Exit:
        started_at = time.time()
        started = time.monotonic()
        try:
            output = slot.take()
        except OSError as e:
            return Exit(job, 0, None, False, 0.0, started_at, slot.workdir, Path(os.devnull),
                        Path(os.devnull), error=f"cannot start: cannot create its output: {e}")
        actions = [
            (os.POSIX_SPAWN_DUP2, self._devnull, 0),
            (os.POSIX_SPAWN_DUP2, output.fds[0], 1),
            (os.POSIX_SPAWN_DUP2, output.fds[1], 2),
        ]
        env = os.environ if job.env is None else job.env
        # posix_spawn has no "cwd": the child inherits ours, so step into the slot and back.
        # Only this thread changes it, and every path the harness uses is absolute.
        os.chdir(slot.workdir)
        try:
            pid = os.posix_spawnp(
                job.argv[0], job.argv, env, file_actions=actions, setpgroup=0,
                setsigdef=_DEFAULT_SIGNALS,
            )
        except OSError as e:
            output.close()
            return Exit(job, 0, None, False, 0.0, started_at, slot.workdir, Path(output.stdout),
                        Path(output.stderr), error=f"cannot start: {e}")
        finally:
            os.fchdir(self._home)
        output.close()  # the child has its own copies
        if job.cpus:
            try:
                os.sched_setaffinity(pid, job.cpus)
            except OSError:
                pass  # the child already exited: nothing to pin
        return _Running(job, pid, slot, output, started, started_at, started + job.timeout)

    def _reap(self, run: _Running) -> Exit:
        pid = run.pid
        _, status, usage = os.wait4(pid, 0)
        duration = time.monotonic() - run.started
        returncode = os.waitstatus_to_exitcode(status)
        _killpg(pid)  # grandchildren die with the run
        return Exit(
            job=run.job,
            pid=pid,
            returncode=returncode,
            timed_out=run.timed_out,
            duration_s=duration,
            started_at=run.started_at,
            workdir=run.slot.workdir,
            stdout_path=Path(run.output.stdout),
            stderr_path=Path(run.output.stderr),
            core_path=run.slot.set_aside(pid),
            cpu_s=usage.ru_utime + usage.ru_stime,
            max_rss_kb=usage.ru_maxrss,
        )

    def _expire(self, run: _Running, now: float) -> None:
        if not run.timed_out:
            run.timed_out = True
            run.deadline = now + self.grace
            if run.job.dump_signal is not None:
                try:
                    os.kill(run.pid, run.job.dump_signal)
                    return
                except ProcessLookupError:
                    return
        if not run.killed:
            run.killed = True
            run.deadline = now + 60.0  # reaped as soon as the kernel reports it
            _killpg(run.pid)

    def run(self, jobs: Iterable[Job], on_exit: Callable[[Exit], None]) -> bool:
        """Run every job; ``on_exit`` is called for each in this thread. True if all ran."""
        pending: Iterator[Job] = iter(jobs)
        (self.workroot / "output").mkdir(parents=True, exist_ok=True)
        _empty(str(self.workroot / "output"))
        slots = [_Slot(self.workroot, i) for i in range(self.jobs)]
        free = slots[::-1]  # slot-0 first
        running: dict[int, _Running] = {}  # pidfd -> run
        selector = selectors.DefaultSelector()
        selector.register(self._wake_r, selectors.EVENT_READ)
        self._devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self._home = os.open(".", os.O_RDONLY | os.O_CLOEXEC)
        exhausted = False

        def fill() -> None:
            nonlocal exhausted
            while free and not exhausted and not self.stopped:
                job = next(pending, None)
                if job is None:
                    exhausted = True
                    return
                slot = free.pop()
                spawned = self._spawn(job, slot)
                if isinstance(spawned, Exit):
                    try:
                        on_exit(spawned)
                    finally:
                        _forget(spawned)
                        free.append(slot)
                    continue
                pidfd = os.pidfd_open(spawned.pid)
                selector.register(pidfd, selectors.EVENT_READ)
                running[pidfd] = spawned

        try:
            while True:
                fill()
                if self.stopped or not running:
                    break
                now = time.monotonic()
                wait = max(0.0, min(r.deadline for r in running.values()) - now)
                exited: list[Exit] = []
                for key, _ in selector.select(wait):
                    if key.fd == self._wake_r:
                        os.read(self._wake_r, 512)
                        continue
                    run = running.pop(key.fd)
                    selector.unregister(key.fd)
                    os.close(key.fd)
                    exited.append(self._reap(run))
                    free.append(run.slot)
                # The next children start before this batch's callbacks run: the files those
                # read are not in any running child's way.
                fill()
                for exit_ in exited:
                    try:
                        on_exit(exit_)
                    finally:
                        _forget(exit_)
                for slot in slots:  # the next outputs, now that nobody waits for them
                    try:
                        slot.prepare()
                    except OSError:
                        pass  # _spawn tries again and reports the error with the run
                now = time.monotonic()
                for run in running.values():
                    if now >= run.deadline:
                        self._expire(run, now)
        finally:
            for pidfd, run in running.items():
                _killpg(run.pid)
                os.wait4(run.pid, 0)
                selector.unregister(pidfd)
                os.close(pidfd)
                run.output.remove()
                run.slot.set_aside(run.pid)
            for slot in slots:
                slot.discard()
                _empty(str(slot.exited))
            selector.close()
            os.close(self._devnull)
            self._devnull = -1
            os.close(self._home)
            self._home = -1
        return exhausted and not self.stopped


def _forget(exit_: Exit) -> None:
    """Remove what an exit left once its callback returned (the callback may have moved some)."""
    for path in (exit_.stdout_path, exit_.stderr_path, exit_.core_path):
        if path is not None and str(path) != os.devnull:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
