"""The warm-start fork server, run with a strategy's own Python (standard library only).

``python fork_server.py --fd N [--unsafe MOD,MOD] -- SCENARIO.py [child options]``

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
the harness, which set that flag before starting any server. Once reparented, the run asks
for SIGKILL when its parent dies (``PR_SET_PDEATHSIG``), as the cold wrapper does, so it dies
with the harness too (asked earlier, it would die with the intermediate process). So the
harness's engine waits for a warm child exactly as for a cold one (``waitid`` on its pid,
``wait4`` for its CPU time and peak RSS, the raw exit status with its signal and core flag,
and its process group killed after it), and the server never has to report an exit status.
(The alternatives: a pidfd can wait for any process but gives no exit status; a server that
waits and reports the status would have to stay single-threaded while multiplexing requests
and exits, and the harness could signal a pid the server had already reaped and the system
reused.)

Before every fork the server refuses (and the harness runs the cell cold) when it is not a
single-threaded process (a thread started by an import: its locks and memory would be copied
half-way, and the thread itself would not exist in the child), or when a module listed as
unsafe to fork (``--unsafe``) was imported.

The protocol: the server's first message is a JSON object ``{"ok": bool, "reason": str|null,
"pid": int, "imports": [...]}``. Each request is a JSON object ``{"cwd", "env", "core": [soft,
hard], "argv"}`` with three file descriptors (stdin, stdout, stderr); each answer is
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

__all__ = ["why_not_fork", "serve", "main"]

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


def _fork_orphan() -> int:
    """Fork a child whose parent exits at once; its pid in the server, 0 in the child.

    The orphan is reparented to the nearest child subreaper (the harness) by the time this
    returns in the server: the intermediate process has exited and been reaped.
    """
    read_end, write_end = os.pipe()
    middle = os.fork()
    if middle == 0:
        os.close(read_end)
        intermediate = os.getpid()
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
    if not data:
        raise OSError("the intermediate process could not fork")
    return int(data)


def _become_run(request: dict[str, Any], fds: list[int]) -> None:
    """In the forked child: take the run's output, folder, environment and limits, and die
    with the harness as a cold child does (its parent now, see _fork_orphan)."""
    child._die_with_parent()
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


def serve(sock: socket.socket, unsafe: list[str]) -> dict[str, Any] | None:
    """Answer fork requests until end of file (None); returns a request in a forked child."""
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
                pid = _fork_orphan()
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
    sock.send(json.dumps(hello).encode())
    if not hello["ok"]:
        return None
    request = serve(sock, unsafe)
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
