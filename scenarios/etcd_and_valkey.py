"""etcd-client-py and valkey-glide in one process, both with work in flight at exit.

From etcd-client-py's cross-library test (`test_shutdown_with_both_etcd_and_valkey`): two
Rust libraries, each with its own tokio runtime, in one interpreter. Both clients do some
interleaved work, then a batch of etcd puts and valkey SETs is started and left in flight;
the glide client is not closed. Needs `valkey-glide` in the strategy's requirements.
"""

from __future__ import annotations

import asyncio

import _clients

SERVICES = ("etcd", "valkey")
RUNS = 200
TIMEOUT = 20.0
WARM_IMPORTS = ("etcd_client", "glide")  # what `run --warm` imports once, before forking
IN_FLIGHT = 20


def applicable() -> str | None:
    return _clients.require_etcd() or _clients.require_glide()


async def main() -> None:
    glide = await _clients.glide_client()
    async with _clients.connect() as comm:
        await comm.put(_clients.key("etcd_key"), b"etcd_value")
        if _clients.to_bytes(await comm.get(_clients.key("etcd_key"))) != b"etcd_value":
            raise RuntimeError("etcd read back a different value")
        glide_key = _clients.key("glide_key").decode()
        await glide.set(glide_key, "glide_value")
        if await glide.get(glide_key) != b"glide_value":
            raise RuntimeError("valkey read back a different value")

        await asyncio.gather(
            comm.put(_clients.key("key1"), b"value1"),
            glide.set(_clients.key("key2").decode(), "value2"),
            comm.put(_clients.key("key3"), b"value3"),
            glide.set(_clients.key("key4").decode(), "value4"),
        )
        # Left in flight, never awaited: etcd requests run in tokio as soon as they are made;
        # the glide calls are scheduled as tasks (asyncio.run cancels them after main returns).
        in_flight = []
        for i in range(IN_FLIGHT):
            in_flight.append(comm.put(_clients.key("etcd", i), b"v"))
            in_flight.append(asyncio.ensure_future(glide.set(f"{glide_key}/{i}", "v")))
        await asyncio.sleep(0)
