"""The smallest possible connect-put-exit, for the highest spawn rate.

From etcd-client-py's stress suite (`test_shutdown_ultra_rapid_subprocess`): one connection,
one put, exit. Little work per child means many children per second, so this is the
cheapest way to sample the shutdown path many times.
"""

from __future__ import annotations

import _clients

SERVICES = ("etcd",)
RUNS = 500
TIMEOUT = 10.0
WARM_IMPORTS = ("etcd_client",)  # what `run --warm` imports once, before forking


def applicable() -> str | None:
    return _clients.require_etcd()


async def main() -> None:
    async with _clients.connect() as comm:
        await comm.put(b"shutdown-harness/ultra_rapid", b"value")
