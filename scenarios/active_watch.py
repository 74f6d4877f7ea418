"""A watch stream open at exit, after a put.

From etcd-client-py's stress suite (`test_shutdown_with_active_watch`): inside a client
context, a watch is opened on a key, a put on that key proves the stream is live, and the
process exits with the watch's next `__anext__` still waiting on the server. The watch keeps
a long-lived tokio task (and a gRPC stream) alive while the interpreter finalizes.
"""

from __future__ import annotations

import _clients

SERVICES = ("etcd",)
RUNS = 200
TIMEOUT = 15.0
WARM_IMPORTS = ("etcd_client",)  # what `run --warm` imports once, before forking


def applicable() -> str | None:
    return _clients.require_etcd()


async def main() -> None:
    async with _clients.connect() as comm:
        await _clients.open_watch(comm, _clients.key("watched"))
        await comm.put(_clients.key("after"), b"value1")
