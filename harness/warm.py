"""Warm start (``run --warm``): children forked from a server that has already imported the client.

A cold child pays for its interpreter start and its imports in every run (for ``ultra_rapid``
on etcd-client-py, 70 of its 110 ms of CPU). A warm child is forked from a fork server
(harness/fork_server.py, run with the strategy's own Python) that imported the child wrapper,
the scenario module, the modules the scenario lists in ``WARM_IMPORTS`` and the strategy's
cleanup function once; the child then runs the scenario's ``main()`` and ends exactly as a cold
child does (work-done marker, cleanup mode, normal interpreter finalization), in its own
working folder and process group, with the core limit, timeout and kill of a cold run.

A server, and so every child it forks, stays in the harness's session, as cold children do
(a process group of its own, not a session: ``process_group=0``, not ``start_new_session``).
With the kernel's autogroup scheduling (``/proc/sys/kernel/sched_autogroup_enabled``), a
session is a scheduling group with its own share of the CPUs; warm children in a session of
their own got a different share than the cold ones on a loaded machine, and crashed less:
etcd-client-py 0.4.1, ``concurrent_ops``, 80 runs each, interleaved: cold 15, warm in their
own session 4, warm in the harness's session 12 (and 4/195 warm against 4/22 cold in a
campaign, Fisher p < 0.01, before this was found).

One server per cell (scenario x strategy), not per strategy: a server's state is the scenario's
imports, and a thread that one scenario starts at import would otherwise make every cell of
the strategy unsafe to fork.

How the harness waits for a process it did not fork: the server forks twice (see
fork_server.py) and the run is reparented to the harness, which is a child subreaper
(``PR_SET_CHILD_SUBREAPER``, set by :func:`become_subreaper`). The engine then waits for it,
reads its exit status, CPU time and peak RSS, and kills its process group exactly as for a
child it spawned; the only difference is the spawn, a launcher on the :class:`Job`.

Nothing a warm run starts outlives it or the harness, as for a cold run: the engine's run mark
(harness/proctree.py) is written into the run's start-up environment block by the
server's intermediate process (see fork_server.py), so the engine's orphan sweep kills what the
run left when it ends, and the engine's watchdog kills the run and everything it started when
the harness dies, SIGKILL included. The servers and their intermediate processes carry a mark
of their own, ``NONCE.server.K`` (padded to :data:`MARK_ROOM` characters: the room the runs'
marks are written in), and one watchdog (:class:`_ServerWatch`) kills them if the harness
dies from the first server's start to the last one's :meth:`ForkServer.close`.

Fidelity: warm start is only worth something if it changes nothing. Every warm cell also runs
cold controls, interleaved by run index (:func:`is_control`: 10% of the runs, at least 20),
every record says ``start: warm|cold``, and the aggregate compares the two per cell with
Fisher's exact test (harness/aggregate.py ``fidelity``).

What cannot be forked safely runs cold, and the records and the output say why: a server with
more than one thread after its imports (``threading.active_count()`` and
``/proc/self/task``), a module from harness/data/warm_unsafe.txt among its imports, a failed
import, or a harness that cannot become a subreaper.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import resource
import select
import socket
import subprocess
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from shutdown_harness import proctree

__all__ = [
    "FORK_SERVER",
    "MARK_ROOM",
    "CONTROL_FRACTION",
    "MIN_CONTROLS",
    "ForkServer",
    "controls",
    "is_control",
    "unsafe_modules",
    "become_subreaper",
]

FORK_SERVER = Path(__file__).resolve().with_name("fork_server.py")
UNSAFE_FILE = Path(__file__).resolve().parent / "data" / "warm_unsafe.txt"
#: Cold controls in a warm cell: this fraction of its runs, and at least MIN_CONTROLS.
CONTROL_FRACTION = 0.10
MIN_CONTROLS = 20
#: How long a server may take for its imports before the cell runs cold.
_READY_TIMEOUT_S = 120.0
_PR_SET_CHILD_SUBREAPER = 36
#: Characters of a server's mark value: the room a run's mark is written over in place
#: (NONCE.SLOT.SERIAL: a pid, 8 hex digits, a slot and a serial: under 40 in practice).
MARK_ROOM = 64


def controls(runs: int) -> int:
    """How many of a warm cell's ``runs`` start cold: 10%, at least 20, at most all."""
    return min(runs, max(MIN_CONTROLS, math.ceil(runs * CONTROL_FRACTION)))


def is_control(index: int, runs: int) -> bool:
    """Whether run ``index`` of a warm cell of ``runs`` runs is a cold control.

    Spread evenly over the indices (the plan issues indices in order, round-robin across
    cells), starting with index 0, so the controls run interleaved with the warm runs, under the
    same load, and a resumed or sharded campaign picks the same ones.
    """
    k = controls(runs)
    return (index * k) % runs < k


def unsafe_modules(path: Path = UNSAFE_FILE) -> list[str]:
    """Module names (one per line, ``#`` comments) that a warm server must not have imported."""
    names = []
    for line in path.read_text(encoding="utf-8").splitlines():
        name = line.split("#", 1)[0].strip()
        if name:
            names.append(name)
    return names


def become_subreaper() -> str | None:
    """Make this process the parent of its orphaned descendants; why not, or None."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            return f"cannot become a child subreaper: {os.strerror(ctypes.get_errno())}"
    except (OSError, AttributeError) as e:
        return f"cannot become a child subreaper: {e}"
    return None


class _ServerWatch:
    """One watchdog (proctree.start_watchdog) for this process's fork servers, while any runs:
    started by the first :meth:`ForkServer.spawn`, stopped by the last close (its last sweep
    kills what still carries a server's mark: nothing, unless a server was killed mid-fork)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._serial = 0
        self._nonce = ""
        self._process: proctree.Watchdog | None = None

    def acquire(self) -> str:
        """A new server's mark, padded to the room of a run's mark."""
        with self._lock:
            if self._users == 0:
                self._nonce = proctree.new_nonce()
                self._process = proctree.start_watchdog(self._nonce)
            self._users += 1
            self._serial += 1
            return f"{self._nonce}.server.{self._serial}.".ljust(MARK_ROOM, "_")

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0:
                process, self._process = self._process, None
                proctree.stop_watchdog(process)


_SERVER_WATCH = _ServerWatch()


class ForkServer:
    """A fork server for one cell: started with :meth:`spawn`, usable once :meth:`ready`."""

    def __init__(self, python: Path | str, child_argv: Sequence[str], env: Mapping[str, str],
                 log: Path, unsafe: Sequence[str] = ()) -> None:
        """``child_argv``: a cold child's argv (python, child.py, scenario, options)."""
        self.python = str(python)
        self.child_argv = list(child_argv)
        self.env = dict(env)
        self.log = log
        self.unsafe = list(unsafe)
        self.imports: list[str] = []
        self.refused: str | None = None
        self._sock: socket.socket | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()  # one request at a time (slot threads share a server)
        self._watched = False  # holds a use of _SERVER_WATCH

    def spawn(self) -> None:
        """Start the server process (its imports run while other servers start)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        mark = _SERVER_WATCH.acquire()
        self._watched = True
        log: IO[bytes]
        with open(self.log, "ab") as log:
            try:
                self._process = subprocess.Popen(
                    [self.python, str(FORK_SERVER), "--fd", str(theirs.fileno()),
                     "--mark", proctree.MARK, "--unsafe", ",".join(self.unsafe), "--",
                     *self.child_argv[2:]],
                    env={**self.env, proctree.MARK: mark}, stdin=subprocess.DEVNULL,
                    stdout=log, stderr=log, pass_fds=(theirs.fileno(),), process_group=0,
                )
            except OSError as e:
                self.refused = f"cannot start the fork server: {e}"
                ours.close()
            else:
                self._sock = ours
            finally:
                theirs.close()

    def ready(self, timeout: float = _READY_TIMEOUT_S) -> str | None:
        """Wait for the server's imports; why it cannot fork children, or None."""
        if self.refused is not None or self._sock is None:
            return self.refused or "not started"
        readable, _, _ = select.select([self._sock], [], [], timeout)
        hello: dict[str, Any] = {}
        if readable:
            data = self._sock.recv(1 << 16)
            hello = json.loads(data) if data else {}
        if hello.get("ok"):
            self.imports = list(hello.get("imports") or [])
            return None
        if not readable:
            self.refused = f"the fork server did not finish its imports in {timeout:g} s"
        else:
            self.refused = hello.get("reason") or f"the fork server failed (see {self.log})"
        self.close()
        return self.refused

    def launch(self, job: Any, workdir: Path, fds: tuple[int, int, int]) -> int:
        """Fork one warm run (the engine's launcher); its pid. OSError when it cannot.

        The run carries the mark in ``job.env`` (the engine's, see fork_server.py); it dies
        at once unless this process is its parent once reparented (a child subreaper).
        """
        env = dict(os.environ if job.env is None else job.env)
        if len(env.get(proctree.MARK, "")) > MARK_ROOM:
            raise OSError(f"the run mark is longer than {MARK_ROOM} characters")
        request = json.dumps({
            "cwd": str(workdir),
            "env": env,
            "core": list(resource.getrlimit(resource.RLIMIT_CORE)),
            "argv": list(job.argv),
            "parent": os.getpid(),
        }).encode()
        with self._lock:
            if self._sock is None:
                raise OSError("the fork server is closed")
            try:
                socket.send_fds(self._sock, [request], list(fds))
                data = self._sock.recv(1 << 16)
            except OSError as e:
                data = b""
                self.refused = f"the fork server failed: {e}"
        if not data:
            # The cell's later runs start cold (the recorder looks at `refused`).
            self.refused = self.refused or f"the fork server exited (see {self.log})"
            raise OSError(self.refused)
        answer = json.loads(data)
        if "pid" not in answer:
            self.refused = f"the fork server refused: {answer.get('error')}"
            raise OSError(self.refused)
        return int(answer["pid"])

    def close(self) -> None:
        """End the server (end of file on its socket), killing it if it does not go."""
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
        process, self._process = self._process, None
        if process is not None:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._watched:
            self._watched = False
            _SERVER_WATCH.release()
