"""A lease kept alive by a background task that is mid-request at exit.

The service-registration pattern: a lease is granted and a background asyncio task sends
keep-alives in a tight loop (`lease_keep_alive`) while the main work runs. The process exits
with that task pending, so a keep-alive stream request is in flight in tokio when the event
loop closes and the interpreter finalizes.
"""

from __future__ import annotations

import asyncio
from typing import Any

import _clients

SERVICES = ("etcd",)
RUNS = 200
TIMEOUT = 15.0
WARM_IMPORTS = ("etcd_client",)  # what `run --warm` imports once, before forking
LEASE_TTL = 5


def applicable() -> str | None:
    return _clients.require_etcd()


async def _keep_alive(comm: Any, lease_id: int, started: asyncio.Event) -> None:
    while True:
        await comm.lease_keep_alive(lease_id)
        started.set()
        await asyncio.sleep(0.005)


async def main() -> None:
    lease_id = _clients.grant_lease(LEASE_TTL)
    async with _clients.connect() as comm:
        started = asyncio.Event()
        keeper = asyncio.create_task(_keep_alive(comm, lease_id, started))
        await asyncio.wait_for(started.wait(), timeout=10)
        for i in range(10):
            await comm.put(_clients.key(i), b"registered")
        del keeper  # still running: asyncio.run cancels it after main returns
