"""Requests in flight, never awaited, when the client context closes and the process exits.

A fire-and-forget bug seen in real code: puts and gets are started (etcd-client-py starts the
request in tokio as soon as the method is called) but never awaited. The client context
closes and the event loop shuts down while tokio still has to deliver their results to
futures whose loop is gone.
"""

from __future__ import annotations

import asyncio

import _clients

SERVICES = ("etcd",)
RUNS = 200
TIMEOUT = 15.0
WARM_IMPORTS = ("etcd_client",)  # what `run --warm` imports once, before forking
REQUESTS = 50


def applicable() -> str | None:
    return _clients.require_etcd()


async def main() -> None:
    async with _clients.connect() as comm:
        await comm.put(_clients.key("ready"), b"1")
        forgotten = []
        for i in range(REQUESTS):
            forgotten.append(comm.put(_clients.key(i), f"value_{i}".encode()))
            forgotten.append(comm.get(_clients.key("ready")))
        await asyncio.sleep(0)
