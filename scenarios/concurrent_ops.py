"""50 concurrent puts gathered, then exit.

From etcd-client-py's stress suite (`test_shutdown_with_concurrent_operations`): the most
reliable reproducer of the shutdown race. Fifty puts are started at once and gathered inside a
client context; the process exits right after, while the tokio worker threads that served
them are still winding down.
"""

from __future__ import annotations

import asyncio

import _clients

SERVICES = ("etcd",)
RUNS = 300
TIMEOUT = 15.0
WARM_IMPORTS = ("etcd_client",)  # what `run --warm` imports once, before forking
PUTS = 50


def applicable() -> str | None:
    return _clients.require_etcd()


async def main() -> None:
    async with _clients.connect() as comm:
        puts = [comm.put(_clients.key(i), f"value_{i}".encode()) for i in range(PUTS)]
        await asyncio.gather(*puts)
