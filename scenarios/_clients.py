"""The thin adapter between scenarios and the client libraries (``import _clients``).

Scenarios are written once and run on every etcd-client-py release the harness compares; this
module absorbs what differs between them. Measured on 0.3.0, 0.4.1 and 0.5.1:

- keys and values: 0.3.0 (pyo3-asyncio) accepts ``bytes`` only, 0.4+ any sequence of bytes;
  scenarios always pass ``bytes`` (``key()``).
- ``get`` returns ``list[int]`` on 0.3.0 and ``bytes`` on 0.4+ (``keys_prefix`` likewise):
  ``to_bytes()`` makes them equal.
- ``with_lock``: 0.3.0 panics in a tokio worker when ``EtcdLockOption.timeout`` is None (fixed
  in 0.4.0), so ``lock_option()`` always sets one.
- ``lease_grant`` returns nothing in any version (the lease id is dropped), so ``grant_lease()``
  asks etcd's JSON gateway for a lease and the scenario keeps it alive with the client.
- ``cleanup_runtime()`` and ``active_context_count()`` exist from 0.5.0 on.
- a ``Watch`` opens its stream on the first ``__anext__``; ``open_watch()`` proves the stream is
  live with a put and returns a second ``__anext__`` that is still pending.
- valkey-glide (2.x) runs its own tokio runtime and has no module-level cleanup function.

Endpoints come from the environment the harness sets: ``SHUTDOWN_HARNESS_ETCD`` and
``SHUTDOWN_HARNESS_VALKEY`` (``host:port``). The client libraries are imported lazily, so that a
scenario's ``applicable()`` can say which one is missing instead of failing on import.
Standard library only: this file runs inside every strategy's virtualenv.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import urllib.request
from importlib import metadata
from typing import Any

__all__ = [
    "ETCD_DISTRIBUTION",
    "GLIDE_DISTRIBUTION",
    "etcd_endpoint",
    "valkey_endpoint",
    "run_id",
    "key",
    "rng",
    "version",
    "require_etcd",
    "require_glide",
    "etcd_client",
    "connect",
    "to_bytes",
    "lock_option",
    "grant_lease",
    "open_watch",
    "glide_client",
    "run_in_threads",
]

ETCD_DISTRIBUTION = "etcd-client-py"
GLIDE_DISTRIBUTION = "valkey-glide"
_DEFAULT_ETCD = "127.0.0.1:2379"
_DEFAULT_VALKEY = "127.0.0.1:6379"


# -- environment ---------------------------------------------------------------------------


def etcd_endpoint() -> str:
    """``host:port`` of the etcd the harness prepared (a local default when run by hand)."""
    return os.environ.get("SHUTDOWN_HARNESS_ETCD") or _DEFAULT_ETCD


def valkey_endpoint() -> tuple[str, int]:
    """(host, port) of the valkey the harness prepared."""
    host, _, port = (os.environ.get("SHUTDOWN_HARNESS_VALKEY") or _DEFAULT_VALKEY).rpartition(":")
    return host or "127.0.0.1", int(port)


def run_id() -> str:
    """This run's id (``scenario/strategy/index``), or ``manual`` outside the harness."""
    return os.environ.get("SHUTDOWN_HARNESS_RUN_ID") or "manual"


def key(*parts: object) -> bytes:
    """A key private to this process, so parallel runs never see each other's writes."""
    suffix = "/".join(str(p) for p in parts)
    return f"shutdown-harness/{run_id()}/{os.getpid()}/{suffix}".encode()


def rng() -> random.Random:
    """Randomness that replays: seeded with the campaign seed and the run id."""
    return random.Random(f"{os.environ.get('SHUTDOWN_HARNESS_SEED', '0')}:{run_id()}")


# -- versions and capabilities -------------------------------------------------------------


def version(distribution: str) -> str | None:
    """The installed version of a distribution, or None."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _as_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits or digits != piece:
            break  # stop at pre-release/local parts: "0.5.1rc1" -> (0, 5)
        parts.append(int(digits))
    return tuple(parts)


def require_etcd(min_version: str | None = None) -> str | None:
    """None when etcd-client-py (at least ``min_version``) is installed, else why not."""
    installed = version(ETCD_DISTRIBUTION)
    if installed is None:
        return f"{ETCD_DISTRIBUTION} is not installed"
    if min_version is not None and _as_tuple(installed) < _as_tuple(min_version):
        return f"needs {ETCD_DISTRIBUTION}>={min_version}, found {installed}"
    return None


def require_glide() -> str | None:
    """None when valkey-glide is installed, else why not."""
    if version(GLIDE_DISTRIBUTION) is None:
        return f"{GLIDE_DISTRIBUTION} is not installed (add it to the strategy's requirements)"
    return None


# -- etcd-client-py ------------------------------------------------------------------------


def etcd_client() -> Any:
    """A new ``etcd_client.Client`` for the harness's etcd (not connected yet)."""
    import etcd_client

    return etcd_client.Client([f"http://{etcd_endpoint()}"])


def connect() -> Any:
    """``async with _clients.connect() as comm:``, a fresh client's connection context."""
    return etcd_client().connect()


def to_bytes(value: Any) -> bytes:
    """A value or key as returned by any version (bytes, or list[int] on 0.3.0) as bytes."""
    return bytes(value)


def lock_option(name: bytes, *, timeout: float = 10.0, ttl: int = 5) -> Any:
    """An ``EtcdLockOption`` valid on every version: 0.3.0 panics without a timeout.

    Keep a ttl: a lock taken without a lease outlives a crashed process and blocks later runs.
    """
    import etcd_client

    return etcd_client.EtcdLockOption(lock_name=name, timeout=timeout, ttl=ttl)


def grant_lease(ttl: int) -> int:
    """A new lease id from etcd's JSON gateway (the client's ``lease_grant`` returns none)."""
    request = urllib.request.Request(
        f"http://{etcd_endpoint()}/v3/lease/grant",
        data=json.dumps({"TTL": ttl}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return int(json.load(response)["ID"])


async def open_watch(comm: Any, watch_key: bytes, *, prefix: bool = False) -> asyncio.Future:
    """Open a watch on ``watch_key`` and return its next ``__anext__``, still pending.

    The stream opens lazily on the first ``__anext__``; a put on the key proves it is live
    (repeated if the put overtook the watch's registration), then buffered events are drained
    so that the returned future really waits on the server.
    """
    watch = comm.watch_prefix(watch_key) if prefix else comm.watch(watch_key)
    put_key = watch_key + b"/ready" if prefix else watch_key
    first = asyncio.ensure_future(watch.__anext__())
    for _ in range(20):
        await comm.put(put_key, b"ready")
        done, _ = await asyncio.wait([first], timeout=0.5)
        if done:
            break
    if not first.done():
        raise TimeoutError(f"watch on {watch_key!r} delivered no event in 10 s")
    first.result()
    while True:
        pending = asyncio.ensure_future(watch.__anext__())
        done, _ = await asyncio.wait([pending], timeout=0.02)
        if not done:
            return pending


# -- valkey-glide --------------------------------------------------------------------------


async def glide_client() -> Any:
    """A connected ``glide.GlideClient`` for the harness's valkey."""
    from glide import GlideClient, GlideClientConfiguration, NodeAddress

    host, port = valkey_endpoint()
    return await GlideClient.create(GlideClientConfiguration([NodeAddress(host, port)]))


def run_in_threads(work: Any, threads: int, join_timeout: float) -> None:
    """Run ``work(i)`` (a coroutine function) for i in range(threads), each under its own
    ``asyncio.run`` in its own thread; raise when a thread failed or did not finish in time.

    The threads are not daemons: one that never ends keeps the interpreter from finalizing,
    and the harness reports a hang.
    """
    import threading

    errors: list[BaseException] = []

    def body(i: int) -> None:
        try:
            asyncio.run(work(i))
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    started = [threading.Thread(target=body, args=(i,)) for i in range(threads)]
    for t in started:
        t.start()
    for t in started:
        t.join(timeout=join_timeout)
    if errors:
        raise RuntimeError(f"thread errors: {errors!r}")
    if any(t.is_alive() for t in started):
        raise RuntimeError(f"a worker thread did not finish in {join_timeout:g} s")
