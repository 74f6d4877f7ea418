"""Several asyncio tasks, each with its own client, sharing one event loop.

From etcd-client-py's stress suite (`test_shutdown_multi_async_tasks`): five tasks each open
a client and do five puts with a short sleep between them, so client contexts open and close
at interleaved moments on one loop before the process exits.
"""

from __future__ import annotations

import asyncio

import _clients

SERVICES = ("etcd",)
RUNS = 200
TIMEOUT = 15.0
WARM_IMPORTS = ("etcd_client",)  # what `run --warm` imports once, before forking
TASKS = 5
PUTS = 5


def applicable() -> str | None:
    return _clients.require_etcd()


async def _worker(worker_id: int) -> None:
    async with _clients.connect() as comm:
        for i in range(PUTS):
            await comm.put(_clients.key(worker_id, i), f"value_{i}".encode())
            await asyncio.sleep(0.01)


async def main() -> None:
    await asyncio.gather(*(asyncio.create_task(_worker(i)) for i in range(TASKS)))
