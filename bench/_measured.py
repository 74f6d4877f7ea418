"""Run ``shutdown-harness ARGS...`` in this process and write its own resource use as JSON.

    python bench/_measured.py OUT.json ARGS...

The harness's own CPU and peak RSS come from ``getrusage(RUSAGE_SELF)``: this process only,
never its children (whose CPU and memory belong to the child command, not to the harness).
"""

from __future__ import annotations

import json
import resource
import sys
import time

__all__ = ["main"]


def main() -> int:
    out, argv = sys.argv[1], sys.argv[2:]
    started = time.monotonic()
    from shutdown_harness.cli import main as harness_main

    imported = time.monotonic()
    try:
        code = harness_main(argv)
    finally:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        with open(out, "w") as f:
            json.dump(
                {
                    "wall_s": time.monotonic() - started,
                    "import_s": imported - started,
                    "cpu_s": usage.ru_utime + usage.ru_stime,
                    "max_rss_kb": usage.ru_maxrss,
                },
                f,
            )
    return code


if __name__ == "__main__":
    sys.exit(main())
