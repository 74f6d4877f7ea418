"""Several watches with pending `__anext__` plus concurrent puts, some still in flight at exit.

From etcd-client-py's stress suite (`test_shutdown_with_watch_and_concurrent_ops`), its most
aggressive case: two key watches and one prefix watch are open and waiting, thirty puts and a
`get_prefix` every third put are started at once, only the first ten are awaited, the watches
are triggered, and the process exits with the rest of the requests still in flight.
"""

from __future__ import annotations

import asyncio

import _clients

SERVICES = ("etcd",)
RUNS = 200
TIMEOUT = 15.0
WARM_IMPORTS = ("etcd_client",)  # what `run --warm` imports once, before forking


def applicable() -> str | None:
    return _clients.require_etcd()


async def main() -> None:
    async with _clients.connect() as comm:
        watched = [_clients.key("watch_key1"), _clients.key("watch_key2")]
        prefix = _clients.key("watch_prefix")
        pending = [await _clients.open_watch(comm, k) for k in watched]
        pending.append(await _clients.open_watch(comm, prefix, prefix=True))

        ops = []
        for i in range(30):
            ops.append(comm.put(_clients.key("key", i), f"value_{i}".encode()))
            if i % 3 == 0:
                ops.append(comm.get_prefix(_clients.key("key")))
        await asyncio.gather(*ops[:10])

        await comm.put(watched[0], b"event1")
        await comm.put(watched[1], b"event2")
        await comm.put(prefix + b"/child", b"event3")
        # Exit with the watches open and ops[10:] never awaited (they run in tokio regardless).
