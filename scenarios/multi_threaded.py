"""Threads each running their own event loop with their own client.

From etcd-client-py's stress suite (`test_shutdown_multi_threaded`): four threads each run
`asyncio.run` with a client doing three puts; the main thread joins them and exits. The
client's tokio runtime serves several event loops at once, and its callbacks target loops
owned by threads that have already finished.
"""

from __future__ import annotations

import asyncio
import threading

import _clients

SERVICES = ("etcd",)
RUNS = 100
TIMEOUT = 20.0
THREADS = 4
PUTS = 3


def applicable() -> str | None:
    return _clients.require_etcd()


async def _work(thread_id: int) -> None:
    async with _clients.connect() as comm:
        for i in range(PUTS):
            await comm.put(_clients.key(thread_id, i), f"value_{i}".encode())


def _thread(thread_id: int, errors: list[BaseException]) -> None:
    try:
        asyncio.run(_work(thread_id))
    except BaseException as e:  # reported by the main thread
        errors.append(e)


def main() -> None:
    errors: list[BaseException] = []
    threads = [threading.Thread(target=_thread, args=(i, errors)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=15)
    if errors:
        raise RuntimeError(f"thread errors: {errors!r}")
    if any(t.is_alive() for t in threads):
        raise RuntimeError("a worker thread did not finish in 15 s")
