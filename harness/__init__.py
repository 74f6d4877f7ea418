"""shutdown-harness: reproduce, measure and explain interpreter-shutdown crashes.

The pipeline, one module per stage:

    plan -> prepare (services, virtualenvs) -> run (engine) -> classify -> store
         -> aggregate -> report

See docs/architecture.md for the contracts between the stages.
"""

from __future__ import annotations

__all__ = ["MARKER", "__version__"]

__version__ = "0.1.0"

#: The line a scenario child prints on stdout once its work is complete. Everything
#: after it is interpreter finalization; a crash after it is a shutdown crash.
MARKER = "@@shutdown-harness: work done@@"
