"""Built-in scenarios: each module is the body of one short-lived child process.

A scenario connects, does its work and returns; the child wrapper (``harness/child.py``) then
prints the work-done marker and lets the interpreter finalize with whatever the client left
running. Modules whose name starts with ``_`` are helpers (``_clients.py``), not scenarios.
See docs/architecture.md for the module contract; copy any of these files to write your own.
"""
