"""Threads x tasks: several threads, each running several asyncio tasks with their own clients.

From etcd-client-py's stress suite (`test_shutdown_mixed_concurrency`), its most complex
case: three threads each run an event loop with three tasks, every task opening its own
client for one put. Nine client contexts on three loops open and close concurrently.
"""

from __future__ import annotations

import asyncio

import _clients

SERVICES = ("etcd",)
RUNS = 100
TIMEOUT = 30.0
WARM_IMPORTS = ("etcd_client",)  # what `run --warm` imports once, before forking
THREADS = 3
TASKS = 3


def applicable() -> str | None:
    return _clients.require_etcd()


async def _task(thread_id: int, task_id: int) -> None:
    async with _clients.connect() as comm:
        await comm.put(_clients.key(thread_id, task_id), f"value_{thread_id}_{task_id}".encode())


async def _tasks(thread_id: int) -> None:
    await asyncio.gather(*(asyncio.create_task(_task(thread_id, i)) for i in range(TASKS)))


def main() -> None:
    _clients.run_in_threads(_tasks, THREADS, join_timeout=20)
