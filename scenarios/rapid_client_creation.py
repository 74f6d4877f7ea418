"""Many clients opened and closed in a row within one process.

From etcd-client-py's stress suite (`test_shutdown_with_rapid_client_creation`): clients are
created, used for one put and closed one after another. With reference-counted cleanup
(0.5+) every close shuts the tokio runtime down and the next client starts it again, so this
exercises the runtime's stop/restart path as well as the final shutdown.
"""

from __future__ import annotations

import _clients

SERVICES = ("etcd",)
RUNS = 200
TIMEOUT = 20.0
WARM_IMPORTS = ("etcd_client",)  # what `run --warm` imports once, before forking
CLIENTS = 10


def applicable() -> str | None:
    return _clients.require_etcd()


async def main() -> None:
    for i in range(CLIENTS):
        async with _clients.connect() as comm:
            await comm.put(_clients.key(i), f"value_{i}".encode())
