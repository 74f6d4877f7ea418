"""Threads each running their own event loop with their own client.

From etcd-client-py's stress suite (`test_shutdown_multi_threaded`): four threads each run
`asyncio.run` with a client doing three puts; the main thread joins them and exits. The
client's tokio runtime serves several event loops at once, and its callbacks target loops
owned by threads that have already finished.
"""

from __future__ import annotations

import _clients

SERVICES = ("etcd",)
RUNS = 100
TIMEOUT = 20.0
WARM_IMPORTS = ("etcd_client",)  # what `run --warm` imports once, before forking
THREADS = 4
PUTS = 3


def applicable() -> str | None:
    return _clients.require_etcd()


async def _work(thread_id: int) -> None:
    async with _clients.connect() as comm:
        for i in range(PUTS):
            await comm.put(_clients.key(thread_id, i), f"value_{i}".encode())


def main() -> None:
    _clients.run_in_threads(_work, THREADS, join_timeout=15)
