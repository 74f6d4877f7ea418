"""A child that behaves as told: ``python behave.py ACTION [ARG]``.

Actions: ok, exit N, raise, abort, segv, hang-before, hang-after, flaky P (abort with
probability P), spawn-and-hang (starts a grandchild that sleeps, then hangs), big-stderr N.
The work-done marker is printed where a scenario would print it.
"""

import ctypes
import os
import random
import subprocess
import sys
import time

MARKER = "@@shutdown-harness: work done@@"


def done() -> None:
    print(MARKER, flush=True)


def main() -> None:
    action = sys.argv[1]
    arg = sys.argv[2] if len(sys.argv) > 2 else None
    if action == "ok":
        done()
    elif action == "exit":
        done()
        sys.exit(int(arg or 3))
    elif action == "raise":
        raise ValueError("boom from the child")
    elif action == "abort":
        done()
        os.abort()
    elif action == "segv":
        done()
        ctypes.string_at(0)
    elif action == "hang-before":
        time.sleep(3600)
    elif action == "hang-after":
        done()
        time.sleep(3600)
    elif action == "flaky":
        done()
        if random.random() < float(arg or 0.5):
            os.abort()
    elif action == "spawn-and-hang":
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)  # grandchild"])
        time.sleep(3600)
    elif action == "big-stderr":
        sys.stderr.write("x" * int(arg or 1_000_000))
        done()
    else:
        raise SystemExit(f"unknown action {action}")


main()
