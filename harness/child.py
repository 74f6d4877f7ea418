"""The wrapper that runs inside every scenario child, with the strategy's own Python.

It is run as a script (``python child.py SCENARIO.py ...``), never imported by the harness's
children through the harness package, so it uses the standard library only and works on any
Python the strategy names.

What it does, in order:
1. enables faulthandler for all threads (fatal signals print every thread's Python stack) and
   registers SIGUSR1 so that the harness can ask for the stacks of a hung child;
2. puts the scenario's folder first on ``sys.path`` (scenarios share helpers, ``import _clients``)
   and the built-in scenarios' folder last, so that a scenario copied elsewhere still finds
   ``_clients`` (a ``_clients.py`` beside the copy, or an installed one, comes first);
3. with ``--mode atexit``, registers the cleanup function before the work;
4. runs the scenario's ``main`` (under ``asyncio.run`` when it is a coroutine function);
5. prints the work-done marker on stdout;
6. applies the cleanup mode (``explicit``, ``hard-exit``, ``sleep``) and the random exit delay;
7. returns, so that the interpreter finalizes exactly as it would for a user's program.

Exceptions from the scenario are never caught: the interpreter reports them as usual.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import faulthandler
import importlib
import importlib.util
import inspect
import json
import os
import random
import signal
import sys
import time
from types import ModuleType
from typing import Any

__all__ = ["MARKER", "MODES", "parse", "load", "enable_faulthandler", "cleanup_function",
           "run", "main"]

# Kept equal to harness.MARKER (a test checks it); not imported, see the module docstring.
MARKER = "@@shutdown-harness: work done@@"
MODES = ("none", "explicit", "atexit", "hard-exit", "sleep")
_HERE = os.path.dirname(os.path.abspath(__file__))
#: The built-in scenarios' folder: inside the installed package (shutdown_harness/scenarios), or
#: beside harness/ in a source checkout (pyproject.toml maps the folders).
_BUILTIN_CANDIDATES = (os.path.join(_HERE, "scenarios"),
                       os.path.join(os.path.dirname(_HERE), "scenarios"))


def _builtin_scenarios() -> str | None:
    for folder in _BUILTIN_CANDIDATES:
        if os.path.isfile(os.path.join(folder, "_clients.py")):
            return folder
    return None


def load(path: str) -> ModuleType:
    """Import the scenario file as ``__scenario__``, its folder first on ``sys.path``, the
    built-in scenarios' folder last (for ``import _clients`` in a copied scenario)."""
    folder = os.path.dirname(os.path.abspath(path))
    sys.path[0:1] = [folder]  # replaces this wrapper's own folder
    builtin = _builtin_scenarios()
    if builtin is not None and builtin not in sys.path:
        sys.path.append(builtin)
    spec = importlib.util.spec_from_file_location("__scenario__", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"shutdown-harness child: cannot load scenario {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["__scenario__"] = module
    spec.loader.exec_module(module)
    return module


def _cleanup_function(target: str | None) -> object:
    if not target:
        raise SystemExit("shutdown-harness child: this mode needs --cleanup module:function")
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def _probe(module: ModuleType) -> int:
    applicable = getattr(module, "applicable", None)
    reason = applicable() if callable(applicable) else None
    print(json.dumps({"applicable": reason is None, "reason": reason}))
    return 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The wrapper's options (the fork server parses a cold child's argv with this too)."""
    parser = argparse.ArgumentParser(prog="shutdown-harness-child")
    parser.add_argument("scenario")
    parser.add_argument("--mode", choices=MODES, default="none")
    parser.add_argument("--cleanup", help="module:function that shuts the client's runtime down")
    parser.add_argument("--sleep", type=float, default=0.5, help="seconds, for --mode sleep")
    parser.add_argument("--exit-delay", type=float, default=0.0, help="random delay, 0..MAX s")
    parser.add_argument("--no-faulthandler", action="store_true")
    parser.add_argument("--probe", action="store_true", help="print applicability as JSON")
    return parser.parse_args(argv)


def enable_faulthandler(args: argparse.Namespace) -> None:
    """All threads' stacks on a fatal signal, and on SIGUSR1 (the harness's timeout)."""
    if not args.no_faulthandler:
        faulthandler.enable(all_threads=True)
        faulthandler.register(signal.SIGUSR1, all_threads=True)


def cleanup_function(args: argparse.Namespace) -> Any:
    """The strategy's cleanup function (imported), or None for modes without one."""
    if args.mode in ("explicit", "atexit"):
        return _cleanup_function(args.cleanup)
    return None


def run(args: argparse.Namespace, module: ModuleType, cleanup: Any) -> int:
    """One run: the scenario's work, the marker, the cleanup mode; then the caller returns.

    Shared by the cold wrapper (``main``) and the warm children of the fork server
    (fork_server.py), so that both do exactly the same after their imports.
    """
    if args.mode == "atexit":
        atexit.register(cleanup)

    body = module.main
    if inspect.iscoroutinefunction(body):
        asyncio.run(body())
    else:
        body()
    sys.stdout.write(MARKER + "\n")
    sys.stdout.flush()

    if args.mode == "explicit":
        cleanup()
    elif args.mode == "sleep":
        time.sleep(args.sleep)
    if args.exit_delay > 0:
        seed = os.environ.get("SHUTDOWN_HARNESS_SEED")
        rng = random.Random(f"{seed}/{os.environ.get('SHUTDOWN_HARNESS_RUN_ID')}")
        time.sleep(rng.uniform(0, args.exit_delay))
    if args.mode == "hard-exit":
        sys.stderr.flush()
        os._exit(0)
    return 0


def _die_with_parent(parent: int | None = None) -> None:
    """SIGKILL this child when the harness dies (PR_SET_PDEATHSIG; Linux only, best effort).

    ``parent``: the harness's pid, when known (a warm run): any other parent after the prctl
    means the harness died before it (the run went to init or another subreaper).
    """
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    orphaned = os.getppid() == 1 if parent is None else os.getppid() != parent
    if orphaned:  # the harness died before the prctl
        os._exit(1)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    _die_with_parent()
    enable_faulthandler(args)
    module = load(args.scenario)
    if args.probe:
        return _probe(module)
    return run(args, module, cleanup_function(args))


if __name__ == "__main__":
    # Plain exit code, no sys.exit() traceback machinery; the interpreter then finalizes.
    code = main()
    if code:
        raise SystemExit(code)
