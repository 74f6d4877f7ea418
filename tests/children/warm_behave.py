"""A scenario for warm-start tests (no service): ``main()`` does what $WARM_BEHAVE says.

ok, abort, segv, raise, hang, flaky P (abort with probability P after the work). Each run prints
what the harness must set up for it: its pid, process group, parent, folder, run id and
whether an interpreter finalizer ran (``atexit``: a warm child must finalize normally).
"""

import atexit
import ctypes
import json
import os
import random
import sys
import time

SERVICES = ()
RUNS = 10
TIMEOUT = 20.0
WARM_IMPORTS = ("json",)


def _finalized() -> None:
    sys.stdout.write("finalized\n")
    sys.stdout.flush()


def main() -> None:
    action = os.environ.get("WARM_BEHAVE", "ok")
    atexit.register(_finalized)
    print(json.dumps({"pid": os.getpid(), "pgid": os.getpgid(0), "cwd": os.getcwd(),
                      "run_id": os.environ.get("SHUTDOWN_HARNESS_RUN_ID"),
                      "modules": "json" in sys.modules}), flush=True)
    if action == "abort":
        os.abort()
    elif action == "segv":
        ctypes.string_at(0)
    elif action == "raise":
        raise ValueError("boom from a warm child")
    elif action == "hang":
        time.sleep(3600)
    elif action.startswith("flaky"):
        if random.random() < float(action.split()[1]):
            atexit.register(os.abort)  # after the work, during finalization
