"""A daemon thread blocked in a request when the main thread exits.

A background worker on a daemon thread runs its own event loop and client and keeps issuing
puts; the main thread returns as soon as the worker's first request has completed. The
interpreter finalizes while the daemon thread's loop waits on a request served by tokio, and
the thread is frozen (or exits) when it next tries to take the GIL. Its client context never
closes, so reference-counted cleanup (0.5.x) cannot run either.
"""

from __future__ import annotations

import asyncio
import threading

import _clients

SERVICES = ("etcd",)
RUNS = 200
TIMEOUT = 15.0
WARM_IMPORTS = ("etcd_client",)  # what `run --warm` imports once, before forking


def applicable() -> str | None:
    return _clients.require_etcd()


async def _worker(first_done: threading.Event) -> None:
    async with _clients.connect() as comm:
        i = 0
        while True:
            await comm.put(_clients.key("daemon", i % 10), f"value_{i}".encode())
            first_done.set()
            i += 1


def main() -> None:
    first_done = threading.Event()
    thread = threading.Thread(target=asyncio.run, args=(_worker(first_done),), daemon=True)
    thread.start()
    if not first_done.wait(timeout=10):
        raise RuntimeError("the daemon thread's first put did not complete in 10 s")
