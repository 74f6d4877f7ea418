"""SIGTERM or SIGINT delivered at a random moment while requests are in flight.

The process is stopped from outside, as a service manager or Ctrl-C would: it sends itself
SIGTERM or SIGINT (chosen and timed by the run's seed) while puts and a watch keep the client
busy. SIGTERM is handled as asyncio services usually do, by cancelling the main task, which
then raises `Terminated`; SIGINT raises KeyboardInterrupt (asyncio.run cancels the main task,
and Python re-raises SIGINT on itself at exit, so the exit status is -SIGINT). Either way the
work is interrupted: expected outcome `Terminated` with exit code 1, or KeyboardInterrupt with
-2, without the work-done marker; never SIGSEGV/SIGABRT.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading

import _clients

SERVICES = ("etcd",)
RUNS = 200
TIMEOUT = 15.0
WARM_IMPORTS = ("etcd_client",)  # what `run --warm` imports once, before forking
MAX_DELAY_S = 0.3  # the signal arrives 0..MAX_DELAY_S after the watch is open
DEADLINE_S = 10.0


class Terminated(Exception):
    """The service was asked to stop (SIGTERM)."""


def applicable() -> str | None:
    return _clients.require_etcd()


def _send_later(signum: int, delay: float) -> None:
    timer = threading.Timer(delay, os.kill, args=(os.getpid(), signum))
    timer.daemon = True
    timer.start()


async def _work() -> None:
    async with _clients.connect() as comm:
        await _clients.open_watch(comm, _clients.key("watched"))
        rng = _clients.rng()
        _send_later(rng.choice([signal.SIGTERM, signal.SIGINT]), rng.uniform(0.0, MAX_DELAY_S))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DEADLINE_S
        i = 0
        while loop.time() < deadline:
            await asyncio.gather(*(comm.put(_clients.key(i, j), b"v") for j in range(10)))
            i += 1
    raise RuntimeError(f"no signal arrived in {DEADLINE_S} s")


async def main() -> None:
    work = asyncio.ensure_future(_work())
    sigterm = asyncio.Event()

    def stop() -> None:
        sigterm.set()
        work.cancel()

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop)
    try:
        await work
    except asyncio.CancelledError:
        if sigterm.is_set():
            raise Terminated("stopped by SIGTERM") from None
        raise  # SIGINT: asyncio.run cancelled main and raises KeyboardInterrupt
