"""The warm-start fork server, run with a strategy's own Python (standard library only).

``python fork_server.py --fd N --mark VARIABLE [--unsafe MOD,MOD] -- SCENARIO.py [options]``

It imports what every cold child of the cell imports before its work (the child wrapper, the
scenario module, the modules the scenario lists in ``WARM_IMPORTS`` and the strategy's cleanup
function), then forks one child per request on the unix socket ``N`` (a SOCK_SEQPACKET end the
harness keeps). A forked child becomes an ordinary run: it takes the stdin, stdout and stderr
the request passes (SCM_RIGHTS), its working folder, environment and core limit, a process
group of its own, enables faulthandler as the wrapper does, and then *returns* from
:func:`serve` up to this module's top level, which runs the scenario through the wrapper's own
``child.run`` and ends the way a cold child ends: it falls off the end of the script and the
interpreter finalizes normally (never ``os._exit``, unless the strategy is ``hard-exit``).

Who waits for a warm child: the harness, as for a cold one. The server forks twice: the
intermediate process forks the run, gives it its process group, reports its pid and exits;
the server reaps the intermediate before it answers. The run is then an orphan, and the kernel
hands an orphan to its nearest ancestor that is a child subreaper (``PR_SET_CHILD_SUBREAPER``):
the harness, which set that flag before starting any server. So the
harness's engine waits for a warm child exactly as for a cold one (``waitid`` on its pid,
``wait4`` for its CPU time and peak RSS, the raw exit status with its signal and core flag,
and its process group killed after it), and the server never has to report an exit status.
(The alternatives: a pidfd can wait for any process but gives no exit status; a server that
waits and reports the status would have to stay single-threaded while multiplexing requests
and exits, and the harness could signal a pid the server had already reaped and the system
reused.)

Nothing of a warm run outlives it or the harness, as for a cold run (harness/proctree.py):

- The run mark. The engine's mark of the run (``SHUTDOWN_HARNESS_TREE=NONCE.SLOT.SERIAL``, the
  variable named by ``--mark``) comes in the request's environment, but a forked process's
  ``/proc/PID/environ``, where the engine's orphan sweep and the watchdog look for it, shows
  the environment block its process was *started* with (the server's), whatever ``putenv``
  does later. So the server is started with that variable holding its own mark padded to
  ``warm.MARK_ROOM`` characters, and the intermediate process writes the run's mark
  over that value in its own memory (``/proc/self/mem``) before it forks the run: the run,
  and every process it forks or starts, carries the run's mark like a cold run's processes
  (the engine kills them when the run ends, and its watchdog when the harness dies, SIGKILL
  included). A server that cannot write there refuses at start, and its cell runs cold.
- The server and its intermediate processes carry the server's mark, ``NONCE.server.K``, with
  a watchdog of its own (warm.py) from the first server's start to the last one's end; a
  server also ends at end of file on its socket.
- The run asks for SIGKILL when its parent dies (``PR_SET_PDEATHSIG``) once reparented (asked
  earlier, it would die with the intermediate process), then checks that its parent is the
  harness (the pid in the request) and exits at once if not: a harness that died before the
  ``prctl`` left it with init or another subreaper, and nothing of the run has started yet.

Before every fork the server refuses (and the harness runs the cell cold) when it is not a
single-threaded process (a thread started by an import: its locks and memory would be copied
half-way, and the thread itself would not exist in the child), or when a module listed as
unsafe to fork (``--unsafe``) was imported.

The protocol: the server's first message is a JSON object ``{"ok": bool, "reason": str|null,
"pid": int, "imports": [...]}``. Each request is a JSON object ``{"cwd", "env", "core": [soft,
hard], "argv", "parent"}`` (``parent``: the harness's pid; the run's mark is ``env``'s
``--mark`` variable) with three file descriptors (stdin, stdout, stderr); each answer is
``{"pid": N}`` or ``{"error": "..."}``. End of file on the socket ends the server.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import socket
import sys
import threading
from typing import Any

import child  # the wrapper, next to this file (a script's folder is first on sys.path)

__all__ = ["why_not_fork", "mark_room", "write_mark", "serve", "main"]

_MAX_MESSAGE = 1 << 20


def _os_threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def why_not_fork(unsafe: list[str]) -> str | None:
    """Why this process must not fork warm children now, or None when it may."""
    python_threads = threading.active_count()
    threads = _os_threads()
    if python_threads > 1 or threads > 1:
        return (f"the server has {threads} threads ({python_threads} Python threads) after its "
                "imports (a runtime started at import): a forked child would get a copy of "
                "their memory and locks without the threads")
    for name in unsafe:
        loaded = [m for m in sys.modules if m == name or m.startswith(name + ".")]
        if loaded:
            return f"the scenario imports {min(loaded, key=len)}, listed as unsafe to fork"
    return None


def mark_room(variable: str) -> tuple[int, int] | None:
    """Where the value of ``variable`` lies in this process's start-up environment block (the
    memory ``/proc/self/environ`` shows): (address, length), or None when it is not there."""
    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
        env_start = int(stat[stat.rfind(b")") + 2:].split()[47])  # field 50: env_start
        with open("/proc/self/environ", "rb") as f:
            block = b"\0" + f.read()
    except (OSError, IndexError, ValueError):
        return None
    key = b"\0" + variable.encode() + b"="
    at = block.find(key)
    if env_start == 0 or at < 0:
        return None
    start = at + len(key)
    end = block.find(b"\0", start)
    end = len(block) if end < 0 else end
    return env_start + start - 1, end - start


def write_mark(room: tuple[int, int], mark: str) -> bool:
    """Write ``mark`` over the value at ``room`` (NUL-padded: the rest reads as empty entries).

    The page is this process's own copy (fork copies on write): the server's stays as it is.
    """
    address, length = room
    value = mark.encode()
    if len(value) > length:
        return False
    try:
        with open("/proc/self/mem", "r+b", buffering=0) as mem:
            mem.seek(address)
            return mem.write(value.ljust(length, b"\0")) == length
    except OSError:
        return False


def _fork_orphan(room: tuple[int, int] | None = None, mark: str | None = None) -> int:
    """Fork a child whose parent exits at once; its pid in the server, 0 in the child.

    The orphan is reparented to the nearest child subreaper (the harness) by the time this
    returns in the server: the intermediate process has exited and been reaped. With ``mark``,
    the intermediate process writes it at ``room`` first, so the child carries it from its
    first instruction (see the module's docstring).
    """
    read_end, write_end = os.pipe()
    middle = os.fork()
    if middle == 0:
        os.close(read_end)
        intermediate = os.getpid()
        if mark is not None and (room is None or not write_mark(room, mark)):
            os.write(write_end, b"!cannot write the run mark over the server's")
            os._exit(1)  # never a run without its mark
        try:
            pid = os.fork()
        except OSError:
            os._exit(1)  # the intermediate process: never a run
        if pid == 0:
            os.close(write_end)
            os.setpgid(0, 0)
            while os.getppid() == intermediate:  # until the intermediate exits (microseconds)
                os.sched_yield()
            return 0
        try:
            os.setpgid(pid, pid)  # also here: the pgid is set before anyone learns the pid
        except OSError:
            pass  # the child set it first, or already exited
        os.write(write_end, b"%d" % pid)
        os._exit(0)
    os.close(write_end)
    try:
        data = os.read(read_end, 32)
    finally:
        os.close(read_end)
        os.waitpid(middle, 0)
    if data.startswith(b"!"):
        raise OSError(data[1:].decode())
    if not data:
        raise OSError("the intermediate process could not fork")
    return int(data)


def _become_run(request: dict[str, Any], fds: list[int]) -> None:
    """In the forked child: take the run's output, folder, environment and limits, and die
    with the harness as a cold child does (its parent now, see _fork_orphan)."""
    child._die_with_parent(request.get("parent"))
    for target, fd in enumerate(fds[:3]):
        os.dup2(fd, target)
    for fd in fds:
        if fd > 2:
            os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    soft, hard = request["core"]
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (soft, hard))
    except (ValueError, OSError):
        pass  # as a cold child: it keeps what it inherited
    sys.argv = list(request["argv"][1:])  # what a cold child's sys.argv holds


def serve(sock: socket.socket, unsafe: list[str], mark: str = "",
          room: tuple[int, int] | None = None) -> dict[str, Any] | None:
    """Answer fork requests until end of file (None); returns a request in a forked child.

    ``mark``: the variable of the run mark, written at ``room`` for each run that has one.
    """
    while True:
        try:
            data, fds, _flags, _address = socket.recv_fds(sock, _MAX_MESSAGE, 3)
        except ConnectionResetError:
            return None
        if not data:
            for fd in fds:
                os.close(fd)
            return None
        answer: dict[str, Any]
        reason = why_not_fork(unsafe) if len(fds) == 3 else "a request needs 3 descriptors"
        if reason is not None:
            answer = {"error": reason}
        else:
            request = json.loads(data)
            sys.stdout.flush()
            sys.stderr.flush()
            try:
                pid = _fork_orphan(room, request["env"].get(mark) if mark else None)
            except OSError as e:
                answer = {"error": f"fork failed: {e}"}
            else:
                if pid == 0:
                    sock.close()
                    _become_run(request, fds)
                    return request
                answer = {"pid": pid}
        for fd in fds:
            os.close(fd)
        sock.send(json.dumps(answer).encode())


def main(argv: list[str] | None = None) -> tuple[argparse.Namespace, Any, Any] | None:
    """Import, say whether forking is safe, serve; in a forked child: what ``child.run`` needs."""
    parser = argparse.ArgumentParser(prog="shutdown-harness-fork-server")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--mark", default="")
    parser.add_argument("--unsafe", default="")
    parser.add_argument("child", nargs=argparse.REMAINDER)
    ours = parser.parse_args(argv)
    tail = ours.child[1:] if ours.child[:1] == ["--"] else ours.child
    unsafe = [m for m in ours.unsafe.split(",") if m]
    sock = socket.socket(fileno=ours.fd)
    hello: dict[str, Any] = {"ok": False, "reason": None, "pid": os.getpid(), "imports": []}
    try:
        if not hasattr(socket, "recv_fds"):
            raise RuntimeError("this Python has no socket.recv_fds (3.9+)")
        args = child.parse(tail)
        module = child.load(args.scenario)
        for name in getattr(module, "WARM_IMPORTS", ()):
            importlib.import_module(name)
            hello["imports"].append(name)
        cleanup = child.cleanup_function(args)
    except BaseException as e:  # noqa: BLE001 - reported to the harness, which runs cold
        hello["reason"] = f"importing failed: {type(e).__name__}: {e}"
    else:
        hello["reason"] = why_not_fork(unsafe)
        hello["ok"] = hello["reason"] is None
    room = mark_room(ours.mark) if ours.mark else None
    if hello["ok"] and ours.mark and (room is None or not write_mark(room, os.environ[ours.mark])):
        hello["ok"] = False  # the same value: a check that the runs can be marked
        hello["reason"] = (f"cannot mark the runs: no room in ${ours.mark} of the server's "
                           "environment block, or /proc/self/mem is not writable")
    sock.send(json.dumps(hello).encode())
    if not hello["ok"]:
        return None
    request = serve(sock, unsafe, ours.mark, room)
    if request is None:
        return None
    child.enable_faulthandler(args)
    return args, module, cleanup


if __name__ == "__main__":
    started = main()
    if started is not None:
        # A warm child: the same run as a cold child's, then the interpreter finalizes.
        code = child.run(*started)
        if code:
            raise SystemExit(code)
