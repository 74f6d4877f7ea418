"""Fifty async writes to a local folder with OpenDAL; the program exits once the first is done.

What a user's script does when it fires off uploads and returns as soon as it has what it needs:
asyncio.run cancels the pending tasks, but the writes go on in OpenDAL's tokio runtime, and
their completions come back while the interpreter is finalizing.
"""

from __future__ import annotations

import asyncio
import os

import opendal

SERVICES = ()
RUNS = 100
TIMEOUT = 30.0


async def main() -> None:
    op = opendal.AsyncOperator("fs", root=os.path.join(os.getcwd(), "data"))
    writes = [asyncio.ensure_future(op.write(f"key-{i}", b"value" * 1000)) for i in range(50)]
    await asyncio.wait(writes, return_when=asyncio.FIRST_COMPLETED)
