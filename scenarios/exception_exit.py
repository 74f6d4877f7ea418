"""An uncaught exception escapes while a watch is active.

A crash in the application, not in the client: inside a client context, a watch is open
with a pending `__anext__` and requests have been served, then an exception propagates out of
`main`. The client context exits through the exception, the interpreter prints the traceback
and finalizes with the watch's tokio task still alive. Expected outcome: the traceback
(`RuntimeError`) and exit code 1, never a signal; no work-done marker.
"""

from __future__ import annotations

import _clients

SERVICES = ("etcd",)
RUNS = 200
TIMEOUT = 15.0
WARM_IMPORTS = ("etcd_client",)  # what `run --warm` imports once, before forking


class ScenarioError(RuntimeError):
    """The deliberate application error this scenario raises."""


def applicable() -> str | None:
    return _clients.require_etcd()


async def main() -> None:
    async with _clients.connect() as comm:
        await _clients.open_watch(comm, _clients.key("watched"))
        await comm.put(_clients.key("before-error"), b"value")
        raise ScenarioError("deliberate application error with an active watch")
