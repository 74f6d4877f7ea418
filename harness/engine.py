"""The run engine: a bounded pool of short-lived child processes.

Each slot is a thread as direct as Go's ``stress`` or ``xargs -P``: start the next child, hand
the previous child's exit to the callback (classification, storage, progress) while the new
one runs, block in ``waitid`` until it exits, reap it, and start the next. The callback and
the job iterator run under one lock, one slot at a time, so neither needs to be thread-safe;
the thread that called :meth:`Engine.run` only keeps the deadlines and waits for the slots.
What keeps the CPUs as busy as with a bare ``xargs -P`` when the children saturate them
(measured with ``perf sched``; bench/run.py has the throughput):

- A slot waits in ``waitid``, not in ``epoll`` on a pidfd: the kernel wakes a parent waiting
  for its child *synchronously*, on the CPU the exiting child frees, so the next child starts
  there at once. A pidfd wake-up could leave the harness queued behind another child for a
  scheduler tick while the freed CPU idled (5% idle CPU, against 1% for xargs).
- A slot spawns before it records, and has its next job in hand (handed out one ahead), so a
  spawn never waits for any recording; and no exit crosses threads on its way to the callback
  (each hand-off cost a wake-up and a GIL switch per run).
- Output goes to in-memory files, not to files created and removed on disk per run.

Each child gets:

- its own working directory (``slot-N``, empty when it starts), so a core file lands there; each
  slot thread has a working directory of its own (``unshare(CLONE_FS)``), which the child
  inherits, so no ``chdir`` races between slots;
- its own process group, so a timeout or the end of a run can kill every process it started;
- stdout and stderr captured in fresh in-memory files (:class:`Capture`: no pipes to drain, no
  file system work, never a file an earlier child could still hold open);
- a deadline, kept by the calling thread: past it, ``dump_signal`` asks the child for its
  stacks (faulthandler), then after a grace period SIGKILL goes to the whole group.

At exit, a core file moves out of ``slot-N`` to ``cores/`` (a rename, no copy) and anything
else the child left there is removed, so the next child starts in an empty folder while the
callback still reads the previous one's files. The folder is listed only when inotify saw
something created in it (most runs leave nothing: one read instead of a listing).

Ctrl-C / SIGTERM: :meth:`Engine.stop` (safe to call from a signal handler or another thread)
stops spawning and kills the running groups; runs that finished are still reported, runs that
were killed are not (a resume reruns them).
"""

from __future__ import annotations

import ctypes
import itertools
import os
import queue
import resource
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from shutdown_harness import proctree

__all__ = ["Job", "Exit", "Engine", "raise_core_limit"]

#: Python ignores these; a child must get them back at their default, as subprocess does.
_DEFAULT_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)
_CLONE_FS = 0x200
_ASYNC_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGALRM,
                  signal.SIGUSR1, signal.SIGUSR2, signal.SIGCHLD, signal.SIGWINCH}
#: The longest the calling thread sleeps with nothing to do (it also wakes for every exit).
_IDLE_WAIT = 3600.0
#: How often the captures of running children are trimmed (see Capture).
_TRIM_EVERY = 1.0


@dataclass(frozen=True, slots=True)
class Job:
    """One child process to run."""

    run_id: str
    argv: tuple[str, ...]
    timeout: float
    env: Mapping[str, str] | None = None
    dump_signal: int | None = signal.SIGUSR1
    cpus: frozenset[int] | None = None  # pin the child to these CPUs
    #: Starts the child instead of posix_spawn: ``launcher(job, workdir, (stdin, stdout,
    #: stderr))`` returns the pid of a process that is (or, by the time it returns, has become)
    #: this process's child, in a process group of its own (harness/warm.py). OSError: not
    #: started.
    launcher: Callable[[Job, Path, tuple[int, int, int]], int] | None = None


class Capture:
    """A child's stdout or stderr: an in-memory file (memfd), readable until the callback returns.

    No file system work per run (creating and unlinking two files on ext4 costs more than
    the rest of a spawn). Memory stays bounded: while the child runs, the engine punches out
    the middle of a capture past :data:`CAPTURE_LIMIT`, keeping its first :data:`KEEP_HEAD`
    and last :data:`KEEP_TAIL` bytes (more than any reader asks for).
    """

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def size(self) -> int:
        return os.fstat(self.fd).st_size if self.fd >= 0 else 0

    def read(self, head: int | None = None, tail: int = 0) -> bytes:
        """All of it, or its first ``head`` and last ``tail`` bytes with a note of the cut."""
        if self.fd < 0:
            return b""
        first = os.pread(self.fd, _SMALL, 0)  # most captures: all of it, in one system call
        size = len(first) if len(first) < _SMALL else self.size()
        if head is None or size <= head + tail:
            return first if size == len(first) else os.pread(self.fd, size, 0)
        first = os.pread(self.fd, head, 0) if head else b""
        last = os.pread(self.fd, tail, size - tail) if tail else b""
        return first + b"\n[... %d bytes cut ...]\n" % (size - head - tail) + last

    def text(self, head: int | None = None, tail: int = 0) -> str:
        return self.read(head, tail).decode("utf-8", errors="replace")

    def trim(self) -> None:
        """Free the middle of a capture grown past CAPTURE_LIMIT (its size does not change)."""
        size = self.size()
        if size > CAPTURE_LIMIT:
            start = KEEP_HEAD
            end = (size - KEEP_TAIL) // _PAGE * _PAGE
            if end > start:
                _punch_hole(self.fd, start, end - start)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


#: Bytes a capture may hold before its middle is freed; what is always kept of its two ends.
CAPTURE_LIMIT = 64 << 20
KEEP_HEAD = 1 << 20
KEEP_TAIL = 16 << 20
_PAGE = os.sysconf("SC_PAGE_SIZE")
_SMALL = 64 << 10
_FALLOC_FL_KEEP_SIZE_PUNCH_HOLE = 0x01 | 0x02


def _punch_hole(fd: int, offset: int, length: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate(fd, _FALLOC_FL_KEEP_SIZE_PUNCH_HOLE, ctypes.c_int64(offset),
                   ctypes.c_int64(length))  # best effort: a failure only costs memory


@dataclass(slots=True)
class Exit:
    """What happened to a :class:`Job`. Captures and paths stay valid until the callback returns."""

    job: Job
    pid: int
    returncode: int | None  # negative: killed by that signal; None: never started
    timed_out: bool
    duration_s: float
    started_at: float  # epoch seconds
    workdir: Path  # the slot folder the child ran in (its working directory)
    stdout: Capture
    stderr: Capture
    core_path: Path | None = None  # the core file it dumped, if any
    cpu_s: float = 0.0
    max_rss_kb: int = 0
    error: str | None = None  # why the child could not be started


class _Slot:
    """A working directory, and the serial numbers of the runs it started."""

    def __init__(self, root: Path, index: int) -> None:
        self.index = index
        self.workdir = root / f"slot-{index}"
        self.cores = root / "cores"
        self._serial = itertools.count()
        self.runs = itertools.count()
        self._changes = -1  # inotify: something was created in the workdir (see watch)
        self.workdir.mkdir(parents=True, exist_ok=True)
        _empty(str(self.workdir))

    def watch(self) -> None:
        """Note from now on what is created in the workdir, so that an exit that left nothing
        there costs one read instead of a listing (opendir, readdir, closedir: 30-45 us of the
        slot's CPU per run of ``true`` under --jobs 8, each call a GIL hand-over)."""
        self._changes = _watch_creations(self.workdir)

    def unwatch(self) -> int:
        """Stop noting creations; returns the inotify descriptor for the caller to close."""
        fd, self._changes = self._changes, -1
        return fd

    def set_aside(self, pid: int) -> Path | None:
        """Empty the workdir for the next child; a core file moves out, under a name of its own."""
        if self._changes >= 0 and not _drain(self._changes):
            return None  # nothing was created or moved in since it was last emptied
        core = None
        with os.scandir(self.workdir) as entries:
            for entry in entries:
                if entry.name in ("core", f"core.{pid}") and entry.is_file(follow_symlinks=False):
                    core = self.cores / f"{self.index}-{next(self._serial)}.core"
                    os.rename(entry.path, core)
                else:
                    _remove(entry)
        return core


@dataclass(slots=True)
class _Running:
    job: Job
    pid: int
    slot: _Slot
    stdout: Capture
    stderr: Capture
    started: float
    started_at: float
    deadline: float
    mark: str = ""  # proctree.MARK of its processes
    timed_out: bool = False
    killed: bool = False
    stopped: bool = False  # killed by Engine.stop: not reported


@dataclass(slots=True)
class _SlotDone:
    """A slot thread ended (``error``: the exception that ended it)."""

    error: BaseException | None = None


_WAKE = object()  # on the exit queue: look at the deadlines and the stop flag now


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


def _unlink(path: Path | str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _empty(folder: str) -> None:
    with os.scandir(folder) as entries:
        for entry in entries:
            _remove(entry)


def _remove(entry: os.DirEntry[str]) -> None:
    if entry.is_dir(follow_symlinks=False):
        shutil.rmtree(entry.path, ignore_errors=True)
        return
    _unlink(entry.path)


_IN_MOVED_TO = 0x80
_IN_CREATE = 0x100


def _watch_creations(folder: Path) -> int:
    """An inotify descriptor that has events once anything is created in ``folder`` or moved
    into it (-1: inotify is not to be had, e.g. the per-user instance limit: then every exit
    lists the folder). The kernel queues the event in the call that creates the entry, core
    dumps included, so it is there by the time the child is reaped; the engine's own unlinks
    and renames out of the folder queue none."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = int(libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC))
        if fd < 0:
            return -1
        if libc.inotify_add_watch(fd, os.fsencode(folder), _IN_CREATE | _IN_MOVED_TO) < 0:
            os.close(fd)
            return -1
        return fd
    except (OSError, AttributeError):
        return -1


def _close_in_background(fds: list[int]) -> None:
    """Close inotify descriptors without waiting: a close waits for the kernel to free the
    watch (an RCU grace period after a delayed work item: 0.2-18 ms each, measured at the end
    of campaigns; removing the watch first does not help), time the reports can use instead.
    The thread holds no lock and no GIL while it waits, and the process's exit waits for it."""
    fds = [fd for fd in fds if fd >= 0]
    if fds:
        threading.Thread(target=_close_all, args=(fds,), name="close-inotify", daemon=True).start()


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def _drain(fd: int) -> bool:
    """Whether events (or an overflow) were queued on ``fd``; reads them all."""
    seen = False
    while True:
        try:
            if not os.read(fd, 1 << 16):
                return True
        except BlockingIOError:
            return seen
        except OSError:
            return True  # cannot tell: look
        seen = True


def _block_async_signals() -> None:
    """Leave asynchronous signals (Ctrl-C, SIGTERM, alarms) to the main thread.

    Python runs signal handlers in the main thread only; a signal the kernel delivers to a slot
    thread would wait for the main thread's next wake-up. Children get the mask the process
    had when :meth:`Engine.run` started (``setsigmask``).

    SIGCHLD stays unblocked unless a handler is installed: a child's SIGCHLD goes to the slot
    thread that started it, and the kernel drops a signal that its target ignores (the
    default) only when that thread does not block it; blocked, it went to the main thread and
    woke it once per run, for nothing (strace: a restart_syscall per exit).
    """
    blocked = _ASYNC_SIGNALS
    if signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL:
        blocked = blocked - {signal.SIGCHLD}
    signal.pthread_sigmask(signal.SIG_BLOCK, blocked)


def _own_working_directory(folder: Path) -> bool:
    """Give the calling thread a working directory of its own, set to ``folder``.

    Linux's ``unshare(CLONE_FS)`` stops the thread sharing its cwd with the rest of the
    process; the children it spawns inherit it. False when that is not possible (then spawns
    step into the folder and back under a process-wide lock).
    """
    try:
        unshare = getattr(os, "unshare", None)  # Python 3.12+
        if unshare is not None:
            unshare(_CLONE_FS)
        else:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.unshare(_CLONE_FS) != 0:
                return False
        os.chdir(folder)
    except (OSError, AttributeError):
        return False
    return True


class Engine:
    """A pool of at most ``jobs`` concurrent children, slot folders under ``workroot``."""

    def __init__(self, workroot: Path, jobs: int, grace: float = 2.0) -> None:
        if jobs < 1:
            raise ValueError("jobs must be at least 1")
        self.workroot = workroot.absolute()  # slot threads run in folders of their own
        self.jobs = jobs
        self.grace = grace
        self.stopped = False
        self._events: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._lock = threading.Lock()  # guards _running and every signal sent to a run
        self._running: dict[int, _Running] = {}  # slot index -> its child
        self._wake_at = 0.0  # when the calling thread next looks at the deadlines
        self._next_trim = 0.0
        self._chdir_lock = threading.Lock()  # spawns without a thread-own cwd
        self._devnull = -1
        self._home = -1
        self._sigmask: set[int | signal.Signals] = set()
        #: Jobs handed out ahead, taken by whichever slot is free first (None: no more).
        self._ahead: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._nonce = ""
        self._orphans: proctree.Orphans | None = None
        #: Called in the slot thread just before a job starts; returns the job to start (it may
        #: wait: the recorder holds starts while a service restarts, and sets its endpoint).
        self.before_spawn: Callable[[Job], Job] | None = None
        #: Called once, in the slot thread that started the first child, right after it did.
        self.started: Callable[[], None] | None = None

    def stop(self) -> None:
        """Stop spawning and kill running children. Safe in a signal handler or any thread."""
        self.stopped = True
        self._events.put(_WAKE)  # SimpleQueue.put is reentrant

    # -- one slot ----------------------------------------------------------------------------
    def _slot_main(self, slot: _Slot, record: Callable[[_Slot, Exit | None], None]) -> None:
        error: BaseException | None = None
        try:
            own_cwd = _own_working_directory(slot.workdir)
            _block_async_signals()
            slot.watch()
            previous: Exit | None = None
            while True:
                job = self._ahead.get()
                if job is None or self.stopped:
                    break
                if self.before_spawn is not None:
                    job = self.before_spawn(job)
                spawned = self._spawn(job, slot, own_cwd)
                if self.started is not None:
                    self._call_started()
                record(slot, previous)  # while the new child runs
                previous = spawned if isinstance(spawned, Exit) else self._wait(spawned)
            record(slot, previous)
        except BaseException as e:  # noqa: BLE001 - handed to the calling thread
            error = e
        finally:
            self._events.put(_SlotDone(error))

    def _call_started(self) -> None:
        with self._lock:
            started, self.started = self.started, None
        if started is not None:
            started()

    def _wait(self, run: _Running) -> Exit | None:
        """Wait for ``run`` to exit and reap it (None: killed by :meth:`stop`, not reported)."""
        slot = run.slot
        with self._lock:
            self._running[slot.index] = run
            if self.stopped:
                run.stopped = run.killed = True
                proctree.kill_tree(run.pid)
            elif run.deadline < self._wake_at:
                self._events.put(_WAKE)
        # Blocks without the GIL; WNOWAIT leaves a zombie, so the pid (and its process group)
        # cannot be reused while the calling thread might still signal it.
        os.waitid(os.P_PID, run.pid, os.WEXITED | os.WNOWAIT)
        with self._lock:
            del self._running[slot.index]
        _killpg(run.pid)  # what it started dies with the run, and what came back to us:
        orphans = self._orphans
        assert orphans is not None
        orphans.live.discard(run.mark)
        orphans.collect()
        _, status, usage = os.wait4(run.pid, 0)
        orphans.runs.discard(run.pid)
        duration = time.monotonic() - run.started
        returncode = os.waitstatus_to_exitcode(status)
        core = slot.set_aside(run.pid)
        if run.stopped and returncode == -signal.SIGKILL:
            run.stdout.close()
            run.stderr.close()
            if core is not None:
                _unlink(core)
            return None
        return Exit(
            job=run.job,
            pid=run.pid,
            returncode=returncode,
            timed_out=run.timed_out,
            duration_s=duration,
            started_at=run.started_at,
            workdir=slot.workdir,
            stdout=run.stdout,
            stderr=run.stderr,
            core_path=core,
            cpu_s=usage.ru_utime + usage.ru_stime,
            max_rss_kb=usage.ru_maxrss,
        )

    def _spawn(self, job: Job, slot: _Slot, own_cwd: bool) -> _Running | Exit:
        started_at = time.time()
        started = time.monotonic()
        stdout, stderr = Capture(-1), Capture(-1)
        try:
            stdout.fd = os.memfd_create("stdout", os.MFD_CLOEXEC)
            stderr.fd = os.memfd_create("stderr", os.MFD_CLOEXEC)
        except OSError as e:
            return Exit(job, 0, None, False, 0.0, started_at, slot.workdir, stdout, stderr,
                        error=f"cannot start: cannot capture its output: {e}")
        actions = [
            (os.POSIX_SPAWN_DUP2, self._devnull, 0),
            (os.POSIX_SPAWN_DUP2, stdout.fd, 1),
            (os.POSIX_SPAWN_DUP2, stderr.fd, 2),
        ]
        mark = f"{self._nonce}.{slot.index}.{next(slot.runs)}"
        env = {**(os.environ if job.env is None else job.env), proctree.MARK: mark}
        assert self._orphans is not None
        self._orphans.live.add(mark)  # before its first process can come back orphaned

        def spawn() -> int:
            return os.posix_spawnp(job.argv[0], job.argv, env, file_actions=actions, setpgroup=0,
                                   setsigdef=_DEFAULT_SIGNALS, setsigmask=self._sigmask)

        try:
            if job.launcher is not None:
                pid = job.launcher(replace(job, env=env), slot.workdir,
                                   (self._devnull, stdout.fd, stderr.fd))
            elif own_cwd:
                pid = spawn()
            else:
                # posix_spawn has no "cwd": step into the slot and back, one spawn at a time.
                with self._chdir_lock:
                    os.chdir(slot.workdir)
                    try:
                        pid = spawn()
                    finally:
                        os.fchdir(self._home)
        except OSError as e:
            self._orphans.live.discard(mark)
            return Exit(job, 0, None, False, 0.0, started_at, slot.workdir, stdout, stderr,
                        error=f"cannot start: {e}")
        self._orphans.runs.add(pid)  # a warm run is the main thread's child: not an orphan
        if job.cpus:
            try:
                os.sched_setaffinity(pid, job.cpus)
            except OSError:
                pass  # the child already exited: nothing to pin
        return _Running(job, pid, slot, stdout, stderr, started, started_at,
                        started + job.timeout, mark)

    # -- the calling thread ------------------------------------------------------------------
    def _signal_deadlines(self) -> float:
        """Signal the runs past their deadline; seconds until the next deadline."""
        now = time.monotonic()
        with self._lock:
            for run in self._running.values():
                if now >= run.deadline:
                    self._expire(run, now)
            if now >= self._next_trim:
                self._next_trim = now + _TRIM_EVERY
                for run in self._running.values():
                    run.stdout.trim()
                    run.stderr.trim()
            nearest = min((run.deadline for run in self._running.values()), default=None)
            if nearest is None:
                wait = _IDLE_WAIT
            else:
                wait = max(0.0, min(nearest, self._next_trim) - now)
            self._wake_at = now + wait
        return wait

    def _expire(self, run: _Running, now: float) -> None:
        # Called with the lock held: the run is not reaped yet, so its pid is still its own.
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
            run.deadline = now + 60.0  # reaped as soon as it dies
            proctree.kill_tree(run.pid)

    def _kill_all(self) -> None:
        with self._lock:
            for run in self._running.values():
                run.stopped = True
                if not run.killed:
                    run.killed = True
                    proctree.kill_tree(run.pid)

    def run(self, jobs: Iterable[Job], on_exit: Callable[[Exit], None]) -> bool:
        """Run every job and hand each exit to ``on_exit``. True if all ran.

        ``on_exit`` is called from the slot threads, never two at once, and ``jobs`` is
        iterated under the same lock: neither needs to be thread-safe. An exception from
        either stops the run and is raised here.
        """
        pending: Iterator[Job] = iter(jobs)
        cores = self.workroot / "cores"
        cores.mkdir(parents=True, exist_ok=True)
        _empty(str(cores))
        slots = [_Slot(self.workroot, i) for i in range(self.jobs)]
        self._devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self._home = os.open(".", os.O_RDONLY | os.O_CLOEXEC)
        self._sigmask = signal.pthread_sigmask(signal.SIG_BLOCK, ())  # the children's
        callbacks = threading.Lock()  # one callback or pull from `jobs` at a time
        exhausted = failed = closed = False
        self._ahead = ahead = queue.SimpleQueue[Job | None]()
        # Every run's processes carry a mark; orphans come back to this process (subreaper);
        # a watchdog kills what is left if this process dies without cleaning up.
        self._nonce = proctree.new_nonce()
        subreaper = proctree.become_subreaper()
        self._orphans = proctree.Orphans(self._nonce)
        watchdog = proctree.start_watchdog(self._nonce)
        if watchdog is not None:
            self._orphans.settle(watchdog.pid)

        def feed() -> None:
            """One more job ahead, for whichever slot is free first (None per slot: no more)."""
            nonlocal exhausted, closed
            if closed:
                return
            job = None
            if not self.stopped:
                job = next(pending, None)
                exhausted = job is None
            if job is None:
                closed = True
                for _ in slots:
                    ahead.put(None)
            else:
                ahead.put(job)

        def record(slot: _Slot, exit_: Exit | None) -> None:
            if exit_ is None:
                return
            try:
                with callbacks:
                    if failed:  # another callback failed: the run is over
                        return
                    on_exit(exit_)
                    feed()  # after: a record can end the plan (adaptive stopping)
            finally:
                _forget(exit_)

        threads = [threading.Thread(target=self._slot_main, args=(slot, record), daemon=True,
                                    name=f"slot-{slot.index}") for slot in slots]
        live = len(threads)
        try:
            with callbacks:
                # A job for each slot to run first, and one more each, ahead: any slot can
                # take any of them, so none waits while another holds work.
                for _ in range(2 * len(slots)):
                    feed()
            for thread in threads:
                thread.start()
            stopping = False
            while live:
                try:
                    item = self._events.get(timeout=self._signal_deadlines())
                except queue.Empty:
                    continue
                if self.stopped and not stopping:
                    stopping = True
                    for _ in slots:
                        ahead.put(None)
                    self._kill_all()
                if isinstance(item, _SlotDone):
                    live -= 1
                    if item.error is not None:
                        failed = True
                        raise item.error
        finally:
            completed = exhausted and not self.stopped and not live
            failed = failed or live > 0
            self.stopped = True
            for _ in slots:
                ahead.put(None)
            self._kill_all()
            for thread in threads:
                if thread.ident is not None:
                    thread.join()
            _close_in_background([slot.unwatch() for slot in slots])
            self._orphans.collect(everything=True)
            proctree.stop_watchdog(watchdog, swept=subreaper is not None)
            proctree.restore_subreaper(subreaper)
            os.close(self._devnull)
            self._devnull = -1
            os.close(self._home)
            self._home = -1
        return completed


def _forget(exit_: Exit) -> None:
    """Release what an exit held once its callback returned (it may have moved the core)."""
    exit_.stdout.close()
    exit_.stderr.close()
    if exit_.core_path is not None:
        _unlink(exit_.core_path)
