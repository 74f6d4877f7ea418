"""An etcd lock held by one task and awaited by another when the process exits.

The leader-election pattern: one task holds a lock (`Client.with_lock`, with a lease ttl)
while a second task waits to acquire the same lock, a request blocked in the server. The
main work returns; asyncio.run cancels the holder (its `__aexit__` releases the lock while
the loop is shutting down) and the waiter (whose lock request is still in tokio).
On 0.5.x the cancelled waiter's `__aenter__` has counted a client context that no
`__aexit__` will ever uncount, so the automatic runtime cleanup never runs at exit.
"""

from __future__ import annotations

import asyncio

import _clients

SERVICES = ("etcd",)
RUNS = 200
TIMEOUT = 20.0
WARM_IMPORTS = ("etcd_client",)  # what `run --warm` imports once, before forking
LOCK_TTL = 5


def applicable() -> str | None:
    return _clients.require_etcd()


async def _hold(name: bytes, acquired: asyncio.Event) -> None:
    option = _clients.lock_option(name, timeout=10.0, ttl=LOCK_TTL)
    async with _clients.etcd_client().with_lock(option) as comm:
        await comm.put(_clients.key("owner"), b"holder")
        acquired.set()
        await asyncio.sleep(3600)


async def _wait_for_lock(name: bytes) -> None:
    option = _clients.lock_option(name, timeout=10.0, ttl=LOCK_TTL)
    async with _clients.etcd_client().with_lock(option) as comm:
        await comm.put(_clients.key("owner"), b"waiter")


async def main() -> None:
    name = _clients.key("lock")
    acquired = asyncio.Event()
    holder = asyncio.create_task(_hold(name, acquired))
    await asyncio.wait_for(acquired.wait(), timeout=10)
    waiter = asyncio.create_task(_wait_for_lock(name))
    await asyncio.sleep(0.05)  # the waiter's lock request reaches the server
    if waiter.done():
        raise RuntimeError("the second task acquired a lock that is held")
    del holder, waiter  # both still running: asyncio.run cancels them after main returns
