"""``shutdown-harness`` and ``python -m shutdown_harness``: the command line (harness/cli.py).

The cyclic garbage collector is off while the command's modules load: ~290 M instructions of
imports whose objects all live to the end of the process, which its passes walk for nothing
(a one-run campaign: 427 -> 416 M instructions, callgrind). :func:`shutdown_harness.cli.main`
turns it back on before a command does its work.
"""

from __future__ import annotations

import gc
import sys


def main() -> int:
    gc.disable()
    from shutdown_harness import cli

    return cli.main()


if __name__ == "__main__":
    sys.exit(main())
