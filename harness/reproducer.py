#!/usr/bin/env python3
"""Standalone reproducer of a crash at interpreter shutdown, from a shutdown-harness campaign.

It runs the scenario (the file named in CONFIG, beside this script in the evidence bundle) in
fresh child processes of this script, each in a fresh, empty folder of its own. Every child
runs the scenario's ``main()``, prints the work-done marker, applies the campaign's cleanup mode
and then returns, so that the interpreter finalizes as it does for any user's program. The
script counts the children that died (a signal such as SIGABRT or SIGSEGV, an error exit, or a
hang), tells whether each died during the work or after it (at shutdown), and ends with the
line ``N/M runs died (...)``; it exits 1 when any did.

It needs the standard library, the packages the bundle's ISSUE.md names, and an endpoint for
each service the scenario uses (``--NAME HOST:PORT``); run ``python reproduce.py --help``.

shutdown-harness ships this file as package data (``shutdown_harness/reproducer.py``) and its
``evidence`` command writes it into a bundle with the CONFIG block filled in; the rest of the
file is the same in every bundle.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import faulthandler
import importlib
import importlib.util
import inspect
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

# Kept equal to shutdown_harness.MARKER (a test checks it): this file imports nothing of it.
MARKER = "@@shutdown-harness: work done@@"

# -- CONFIG: shutdown-harness evidence replaces the block below (a Python literal) ----------
CONFIG: dict[str, Any] = {
    "title": "example: a scenario that aborts at exit",
    "scenario": "abort_at_exit",
    "scenario_file": "scenario/abort_at_exit.py",
    "command": None,
    "services": [],
    "requirements": [],
    "mode": "none",
    "cleanup": None,
    "sleep": 0.5,
    "jobs": 4,
    "timeout": 30.0,
    "measured": [],
}
# -- end of CONFIG ---------------------------------------------------------------------------

_HERE = os.path.dirname(os.path.abspath(__file__))


def _load_scenario(path: str) -> Any:
    """Import the scenario file as the harness's child does: its folder first on sys.path."""
    sys.path[0:1] = [os.path.dirname(path)]  # replaces this script's own folder
    spec = importlib.util.spec_from_file_location("__scenario__", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"reproduce.py: cannot load the scenario {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["__scenario__"] = module
    spec.loader.exec_module(module)
    return module


def _cleanup_function() -> Any:
    module_name, _, attr = str(CONFIG["cleanup"]).partition(":")
    return getattr(importlib.import_module(module_name), attr)


def child(scenario_file: str) -> int:
    """One run: the scenario's main(), the marker, the cleanup mode, then a normal exit."""
    faulthandler.enable(all_threads=True)
    module = _load_scenario(scenario_file)
    mode = CONFIG["mode"]
    cleanup = _cleanup_function() if mode in ("explicit", "atexit") else lambda: None
    if mode == "atexit":
        import atexit

        atexit.register(cleanup)
    if inspect.iscoroutinefunction(module.main):
        asyncio.run(module.main())
    else:
        module.main()
    sys.stdout.write(MARKER + "\n")
    sys.stdout.flush()
    if mode == "explicit":
        cleanup()
    elif mode == "sleep":
        time.sleep(float(CONFIG["sleep"]))
    elif mode == "hard-exit":
        sys.stderr.flush()
        os._exit(0)
    return 0  # the interpreter finalizes now, with whatever the client left running


def _option(name: str) -> str:
    return "--" + name.lower().replace("_", "-")


def _parser() -> argparse.ArgumentParser:
    measured = "".join(f"\n  {line}" for line in CONFIG["measured"])
    parser = argparse.ArgumentParser(
        description=f"Reproduce: {CONFIG['title']}",
        epilog="Needs: " + (" ".join(CONFIG["requirements"]) or "the client package")
        + (f"\nWhat shutdown-harness measured:{measured}" if measured else ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for service in CONFIG["services"]:
        parser.add_argument(_option(service["name"]), required=True, metavar="HOST:PORT",
                            dest=f"service_{service['name']}",
                            help=f"the {service['name']} endpoint (exported to the children"
                                 f" as ${service['env']})")
    parser.add_argument("--runs", type=int, default=100, help="children to run (default 100)")
    parser.add_argument("--jobs", type=int, default=int(CONFIG["jobs"]),
                        help="children at once (default %(default)s: the campaign's load)")
    parser.add_argument("--timeout", type=float, default=float(CONFIG["timeout"]),
                        help="seconds per child before it counts as a hang")
    parser.add_argument("--show", type=int, default=1, help="print stderr of the first N deaths")
    parser.add_argument("--scenario-file", default=None, help=argparse.SUPPRESS)
    return parser


def _scenario_path(given: str | None) -> str | None:
    if given:
        return os.path.abspath(given)
    if CONFIG["scenario_file"] is None:
        return None
    return os.path.join(_HERE, CONFIG["scenario_file"])


def run_one(index: int, args: argparse.Namespace, scenario: str | None,
            env: dict[str, str]) -> tuple[int, int | None, str, bool, float]:
    """Run child `index` in a fresh folder of its own; (index, returncode, stderr, work done,
    seconds). A returncode of None is a hang (killed after the timeout)."""
    env = dict(env, SHUTDOWN_HARNESS_RUN_ID=f"reproduce/{index}",
               SHUTDOWN_HARNESS_SEED=str(index))
    if CONFIG["command"]:
        argv = list(CONFIG["command"])
        env["PYTHONFAULTHANDLER"] = "1"
    else:
        argv = [sys.executable, os.path.abspath(__file__), "--child",
                "--scenario-file", str(scenario)]
    folder = tempfile.mkdtemp(prefix=f"reproduce-{index}-")
    started = time.monotonic()
    try:
        proc = subprocess.run(argv, env=env, cwd=folder, capture_output=True,
                              timeout=args.timeout)
    except subprocess.TimeoutExpired as e:
        stderr = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else ""
        work_done = isinstance(e.stdout, bytes) and MARKER.encode() in e.stdout
        return index, None, stderr, work_done, args.timeout
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    out = proc.stdout.decode(errors="replace")
    err = proc.stderr.decode(errors="replace")
    return index, proc.returncode, err, MARKER in out, time.monotonic() - started


def describe(returncode: int | None) -> str:
    if returncode is None:
        return "hang"
    if returncode < 0:
        try:
            return signal.Signals(-returncode).name
        except ValueError:
            return f"signal {-returncode}"
    return f"exit {returncode}" if returncode else "clean"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:2] == ["--child", "--scenario-file"] and len(argv) == 3:
        return child(argv[2])
    args = _parser().parse_args(argv)
    scenario = _scenario_path(args.scenario_file)
    if scenario is not None and not os.path.isfile(scenario):
        print(f"reproduce.py: the scenario file {scenario} is missing: run this script from"
              " the evidence bundle it came with (it carries the scenario)", file=sys.stderr)
        return 2
    if args.runs < 1 or args.jobs < 1 or args.timeout <= 0:
        print("reproduce.py: --runs and --jobs must be at least 1, --timeout positive",
              file=sys.stderr)
        return 2
    env = dict(os.environ, SHUTDOWN_HARNESS_CWD=os.getcwd())
    endpoints = []
    for service in CONFIG["services"]:
        endpoint = getattr(args, f"service_{service['name']}")
        env[service["env"]] = endpoint
        endpoints.append(f"{service['name']} at {endpoint}")
    print(f"{CONFIG['scenario']}: {args.runs} runs, {args.jobs} at a time, each in a fresh"
          f" folder; {', '.join(endpoints) or 'no services'}; {sys.executable}", flush=True)
    outcomes: collections.Counter[str] = collections.Counter()
    shown = deaths = during_work = 0
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = pool.map(lambda i: run_one(i, args, scenario, env), range(args.runs))
        for index, returncode, err, work_done, seconds in results:
            what = describe(returncode)
            outcomes[what] += 1
            if what == "clean":
                continue
            deaths += 1
            when = "after the work was done (at shutdown)" if work_done else "during the work"
            during_work += not work_done
            print(f"run {index}: {what} {when}, {seconds:.2f} s", flush=True)
            if shown < args.show:
                shown += 1
                print(f"---- stderr of run {index} ----\n{err.strip()[-4000:]}\n----", flush=True)
    summary = ", ".join(f"{k} {n}" for k, n in sorted(outcomes.items(), key=lambda kv: -kv[1]))
    if during_work:
        summary += f"; {during_work} of the deaths during the work, not at shutdown"
    print(f"{deaths}/{args.runs} runs died ({summary})")
    return 1 if deaths else 0


if __name__ == "__main__":
    sys.exit(main())
