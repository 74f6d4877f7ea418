"""Process trees: a run's descendants die with it, and with the harness.

A child can leave its process group (``setpgid``, even into the harness's own group) or its
session (``setsid``, ``start_new_session=True``), so killing its group misses what it started.
What this module gives the engine instead:

- :func:`become_subreaper`: the harness is a child subreaper (``prctl``), so a descendant whose
  parent exits comes back to the harness instead of going to init; Linux hands it to the
  harness's main thread, whose children ``/proc/PID/task/PID/children`` lists.
- a mark: every run's environment carries :data:`MARK` = ``NONCE.SLOT.SERIAL``, inherited by
  everything it starts (a process that clears its whole environment loses it, see below). A
  warm run is forked, not started: the fork server writes the mark into the environment block
  it inherits (harness/fork_server.py), which is what :func:`marked` reads.
- :class:`Orphans`: after a run exits, the main thread's new children are looked at (one small
  ``/proc`` read when there is none, the common case): a marked one whose run is over is
  killed with everything under it, and reaped; a warm run (harness/warm.py), marked too and
  the main thread's child, is left to the engine, which waits for it. An unmarked one is left
  alone (a container engine's ``conmon`` daemonizes the same way and is not ours, and a zombie
  has no readable environment): zombies among them are reaped when the engine ends, when no
  run can be one of them.
- :func:`kill_tree`: SIGKILL to a run's process, its process group and every descendant still
  attached to it (at a timeout, or when the harness stops): the pid itself is killed even when
  its group is gone.
- the watchdog (:func:`start_watchdog`): a shell in a session of its own that waits for the
  harness to go away (its stdin pipe closes, also on SIGKILL of the harness), then runs this
  file, which kills every process that carries the harness's mark. It covers ``--command``
  runs, which have no wrapper to ask for ``PR_SET_PDEATHSIG`` (the scenario wrapper,
  harness/child.py, does).

This file runs as a script too (the watchdog: ``python -I -S proctree.py NONCE``), so it uses the
standard library only.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

__all__ = ["MARK", "Orphans", "Watchdog", "become_subreaper", "kill_tree", "new_nonce",
           "start_watchdog", "stop_watchdog", "marked"]

#: The environment variable that marks every process of a run (value ``NONCE.SLOT.SERIAL``).
MARK = "SHUTDOWN_HARNESS_TREE"
_MARK_BYTES = MARK.encode() + b"="
_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37
#: How long the watchdog keeps looking for marked processes after the harness went away (a
#: process being killed can still fork for a moment).
_WATCH_SWEEP_S = 2.0


def new_nonce() -> str:
    """A mark prefix of this harness process, unique on the machine."""
    return f"{os.getpid()}-{os.urandom(4).hex()}"  # secrets.token_hex, without its ~8 ms import


def _prctl(option: int, value: int) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.prctl(option, ctypes.c_ulong(value), 0, 0, 0))


def become_subreaper() -> bool | None:
    """Make this process a child subreaper; returns the previous setting (None: not possible)."""
    try:
        previous = ctypes.c_int(0)
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(previous), 0, 0, 0)
        if _prctl(_PR_SET_CHILD_SUBREAPER, 1) != 0:
            return None
        return bool(previous.value)
    except (OSError, AttributeError):
        return None


def restore_subreaper(previous: bool | None) -> None:
    if previous is False:
        _prctl(_PR_SET_CHILD_SUBREAPER, 0)


def _children(pid: int) -> list[int]:
    """The children of every thread of ``pid`` (empty when it is gone)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                found.extend(int(p) for p in f.read().split())
        except OSError:
            pass
    return found


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` that is still attached to it, parents first."""
    out: list[int] = []
    todo = [pid]
    seen = {pid}
    while todo:
        for child in _children(todo.pop()):
            if child not in seen:
                seen.add(child)
                out.append(child)
                todo.append(child)
    return out


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid``, its process group and its attached descendants (none may escape by
    leaving the group; the pid itself dies even when its group is gone)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    below = descendants(pid)
    _kill(pid)
    for child in below:
        _kill(child)


def marked(pid: int, prefix: bytes = b"") -> str | None:
    """The run mark in the environment ``pid`` started with (None: none, or unreadable)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read()
    except OSError:
        return None
    for entry in environ.split(b"\0"):
        if entry.startswith(_MARK_BYTES):
            value = entry[len(_MARK_BYTES):]
            return value.decode(errors="replace") if value.startswith(prefix) else None
    return None


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return True  # gone already: reaping it is harmless
    return stat[stat.rfind(b")") + 2:stat.rfind(b")") + 3] == b"Z"


class Orphans:
    """The main thread's children that came back from runs: killed and reaped when their run
    is over. ``collect`` is safe from any thread."""

    def __init__(self, nonce: str) -> None:
        self.prefix = nonce.encode() + b"."
        pid = os.getpid()
        self._path = f"/proc/{pid}/task/{pid}/children"
        self._fd = -1  # the children file, kept open while runs are running (see _read)
        self._lock = threading.Lock()
        self.live: set[str] = set()  # marks of runs still running
        self.runs: set[int] = set()  # pids of runs the engine waits for (warm ones are ours)
        #: Children from before (services) or not from the runs (the watchdog).
        self.before: set[int] = set(self._read())
        #: Children looked at and left alone: unmarked (not ours to kill), or zombies.
        self.settled: set[int] = set(self.before)
        self._waiting: dict[int, str] = {}  # marked orphans of runs still running
        self.killed = 0

    def _read(self) -> list[int]:
        # One pread on a file kept open: a read at offset 0 lists the children anew (seq_file),
        # 2 us against 20 us to open, read and close it on every exit, and one system call
        # (one GIL hand-over between the slot threads) instead of three.
        fd = self._fd
        if fd < 0:
            try:
                fd = self._fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return []
        try:
            return [int(p) for p in os.pread(fd, 1 << 16, 0).split()]
        except OSError:
            return []

    def settle(self, pid: int) -> None:
        """A child of the main thread that is not a run's (a watchdog, a service)."""
        self.before.add(pid)
        self.settled.add(pid)

    def collect(self, everything: bool = False) -> None:
        """Kill and reap the orphans of finished runs. ``everything``: the engine is done (no
        run is running): also those of every run, and reap the zombies that came back."""
        pids = self._read()
        if not everything and not self._waiting and self.settled.issuperset(pids):
            return  # the common case: nothing came back
        with self._lock:
            for _ in range(50):  # each kill can hand back its children: look again
                if not self._sweep(self._read(), everything):
                    break
            if everything:  # the engine is done: a later collect opens the file again
                fd, self._fd = self._fd, -1
                if fd >= 0:
                    os.close(fd)

    def _sweep(self, pids: list[int], everything: bool) -> bool:
        acted = False
        for pid in pids:
            if pid in self.before or pid in self.runs:
                # A warm run (marked) can be seen before the engine adds it to `runs`.
                self._waiting.pop(pid, None)
                continue
            if pid in self.settled and not everything:
                continue
            mark = self._waiting.get(pid) or marked(pid, self.prefix)
            if mark is None:
                if everything and _zombie(pid):
                    acted = self._reap(pid) or acted
                else:
                    self.settled.add(pid)
                continue
            if mark in self.live and not everything:
                self._waiting[pid] = mark
                continue
            self._waiting.pop(pid, None)
            kill_tree(pid)
            self.killed += 1
            self._reap(pid, block=True)
            acted = True
        return acted

    @staticmethod
    def _reap(pid: int, block: bool = False) -> bool:
        try:
            done, _ = os.waitpid(pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            return False
        return done == pid


# -- the watchdog ----------------------------------------------------------------------------
#: The watchdog waits in a shell, which starts the sweep (this file, run by Python) once its
#: stdin ends. A Python that waited from the start cost ~100 M instructions (callgrind: its
#: interpreter and this file's imports) at the start of every campaign, on the CPU the first
#: children run on; the shell costs ~0.3 M, and is gone at once when killed.
_WAIT_THEN_SWEEP = 'trap "" INT TERM HUP; while read -r _; do :; done; exec "$0" -I -S "$1" "$2"'


class Watchdog:
    """The watchdog process, and the pipe whose other end it waits on."""

    def __init__(self, pid: int, pipe: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._pipe = pipe  # the write end: closing it (or this process dying) ends its wait

    def kill(self) -> None:
        if self.returncode is None:
            _kill(self.pid)

    def close(self) -> None:
        """End of file on its stdin: it sweeps once, then exits."""
        pipe, self._pipe = self._pipe, -1
        if pipe >= 0:
            os.close(pipe)

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: gone all the same
                self.returncode = -signal.SIGKILL
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        """Its exit code, once it exited (None: still running after ``timeout`` seconds)."""
        end = None if timeout is None else time.monotonic() + timeout
        delay = 0.0005
        while self.poll() is None:
            if end is not None and time.monotonic() >= end:
                return None
            time.sleep(delay)
            delay = min(2 * delay, 0.05)
        return self.returncode


def start_watchdog(nonce: str) -> Watchdog | None:
    """A process that kills every process marked with ``nonce`` once this one is gone.

    Started with ``posix_spawn``, in a session of its own (a Ctrl-C or a group kill of the
    harness spares it); not with ``subprocess``, whose import is 10 M instructions (callgrind)
    that a campaign otherwise never needs before its first core."""
    try:
        read, write = os.pipe()  # both close-on-exec: no child but the watchdog holds them
    except OSError:
        return None
    try:
        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        try:
            pid = os.posix_spawn(
                "/bin/sh",
                ["/bin/sh", "-c", _WAIT_THEN_SWEEP, sys.executable, os.path.abspath(__file__),
                 nonce],
                os.environ,
                file_actions=[(os.POSIX_SPAWN_DUP2, read, 0), (os.POSIX_SPAWN_DUP2, null, 1),
                              (os.POSIX_SPAWN_DUP2, null, 2)],
                setsid=True, setsigmask=(), setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
            )
        finally:
            os.close(null)
    except OSError:
        os.close(write)
        return None
    finally:
        os.close(read)
    return Watchdog(pid, write)


def stop_watchdog(watchdog: Watchdog | None, *, swept: bool = False) -> None:
    """End the watchdog: the harness is ending on its own.

    ``swept``: this process is a subreaper and has swept every run's processes itself
    (``Orphans.collect(everything=True)``), so every marked process that was left came back to
    it and is gone: the watchdog is killed, with nothing left to do. Waiting for its own sweep
    (which reads every process's environment, after its interpreter starts) was 30 ms of a
    one-run campaign's 380 ms. Otherwise (not a subreaper: orphans went to init) it is told
    to sweep once, and waited for.
    """
    if watchdog is None:
        return
    if swept:
        watchdog.kill()  # SIGKILL: it ignores SIGTERM
    watchdog.close()
    if watchdog.wait(timeout=_WATCH_SWEEP_S + 3.0) is None:
        watchdog.kill()
        watchdog.wait()


def _sweep_marked(prefix: bytes) -> int:
    found = 0
    me = os.getpid()
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != me and marked(int(name), prefix) is not None:
            _kill(int(name))
            found += 1
    return found


def _watch(nonce: str) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    while sys.stdin.buffer.read(1 << 12):
        pass  # the harness never writes: EOF when it closes the pipe or dies
    prefix = nonce.encode() + b"."
    end = time.monotonic() + _WATCH_SWEEP_S
    while _sweep_marked(prefix) and time.monotonic() < end:
        time.sleep(0.05)


if __name__ == "__main__":
    _watch(sys.argv[1])
