"""Shutdown stress in a client project's own test suite: copy this file into your tests/.

Installing shutdown-harness registers its pytest plugin (the ``shutdown_stress`` fixture and
marker). Each test below runs its body in 90 short-lived child processes (a fresh interpreter
each, exiting right after the work, so that the interpreter finalizes as in production) and
fails unless the 95% upper bound of the failure rate (crashes, errors, hangs) is below 5%.

By default the children use the Python running the tests, i.e. the client build this project
has installed. To test a released version instead, name a strategy (a virtualenv is built once
and cached under ~/.cache/shutdown-harness/venvs)::

    pytest examples/test_shutdown_example.py --shutdown-strategy etcd-client-py==0.4.1  # fails
    pytest examples/test_shutdown_example.py --shutdown-strategy etcd-client-py==0.5.1  # passes

The etcd is embedded (started once per session) unless ``--shutdown-etcd HOST:PORT`` names
one. Why 90 runs and 5%: with no failure in 90 runs the upper bound is 4.1% (a pass), with one
it is 6.0% (a fail); a client crashing at exit in 10% of the runs passes with probability
0.9**90 < 1e-4. The campaign stops at the first failure, once passing is out of reach.
"""

from __future__ import annotations

import pytest

RUNS = 90
MAX_RATE = 0.05


async def concurrent_puts() -> None:
    """One child's work: 50 puts gathered in one client context, then the process exits.

    It runs in a fresh interpreter, so it is self-contained: imports go inside.
    """
    import asyncio
    import os

    from etcd_client import Client

    endpoint = os.environ["SHUTDOWN_HARNESS_ETCD"]  # set by the harness
    async with Client([f"http://{endpoint}"]).connect() as client:
        await asyncio.gather(*[client.put(f"key_{i}".encode(), b"value") for i in range(50)])


def test_concurrent_puts_survive_exit(shutdown_stress):
    """The fixture form: any function, built-in scenario name or scenario file."""
    shutdown_stress.run(concurrent_puts, runs=RUNS, max_rate=MAX_RATE, services=("etcd",))


@pytest.mark.shutdown_stress(runs=RUNS, max_rate=MAX_RATE, services=("etcd",))
async def test_put_get_survive_exit():
    """The marker form: the test's own body runs in the children (a put, a get, then exit)."""
    import os

    from etcd_client import Client

    endpoint = os.environ["SHUTDOWN_HARNESS_ETCD"]
    async with Client([f"http://{endpoint}"]).connect() as client:
        await client.put(b"watched", b"1")
        assert bytes(await client.get(b"watched")) == b"1"
