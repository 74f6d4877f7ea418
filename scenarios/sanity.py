"""Put one key, read it back, compare: the control scenario.

The smallest correct use of the client: connect, one put, one get, leave the `async with`.
It checks that the harness, the service and the client work at all before a campaign
measures anything; a failure rate above zero here means the client fails even in the
simplest use. Self-contained on purpose, to be copied as a template for new scenarios.
"""

from __future__ import annotations

import importlib.util
import os

SERVICES = ("etcd",)
RUNS = 20
TIMEOUT = 15.0
WARM_IMPORTS = ("etcd_client",)  # what `run --warm` imports once, before forking


def applicable() -> str | None:
    if importlib.util.find_spec("etcd_client") is None:
        return "etcd-client-py (module etcd_client) is not installed"
    return None


async def main() -> None:
    from etcd_client import Client

    endpoint = os.environ["SHUTDOWN_HARNESS_ETCD"]
    run_id = os.environ.get("SHUTDOWN_HARNESS_RUN_ID", str(os.getpid()))
    key = f"shutdown-harness/sanity/{run_id}".encode()
    value = os.urandom(8).hex().encode()
    async with Client([f"http://{endpoint}"]).connect() as client:
        await client.put(key, value)
        got = bytes(await client.get(key))  # a list of ints on 0.3.x, bytes later
    if got != value:
        raise AssertionError(f"read back {got!r} for {key!r}, expected {value!r}")
