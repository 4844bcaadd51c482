"""Registered jobs for the flow-control tests (concurrency limits, unique
keys, queues), imported by their worker processes and by the processes that
race to perform.

A job that must be seen while it runs checks in at the test's gate: a TCP
server on loopback whose port is in :data:`GATE_PORT`. It sends
``start <kind> <n> <pid>``, waits for the test to answer ``go``, then sends
``end``: between the two, the test knows it runs, without sleeping.
"""

from __future__ import annotations

import asyncio
import os
import sys

import asyncjob

#: The environment variable holding the gate's port (workers inherit it).
GATE_PORT = "ASYNCJOB_TEST_FLOW_GATE"

#: At most this many ``limited`` jobs run at once, across every worker.
LIMIT = 2


async def check_in(kind: str, n: int) -> None:
    """Tell the gate that job ``n`` of ``kind`` runs, wait for its ``go``,
    then tell it that the job ends."""
    reader, writer = await asyncio.open_connection("127.0.0.1", int(os.environ[GATE_PORT]))
    try:
        writer.write(f"start {kind} {n} {os.getpid()}\n".encode())
        await writer.drain()
        answer = await reader.readline()
        if answer != b"go\n":
            raise RuntimeError(f"the gate answered {answer!r}, not go")
        writer.write(b"end\n")
        await writer.drain()
    finally:
        writer.close()
        await writer.wait_closed()


@asyncjob.job(name="tests.flow.limited", concurrency=LIMIT)
async def limited(n: int) -> int:
    """A job of which at most :data:`LIMIT` run at once; held at the gate."""
    await check_in("limited", n)
    return n


@asyncjob.job(name="tests.flow.held")
async def held(n: int) -> int:
    """A job with no limit, held at the gate: it keeps a worker's slot busy."""
    await check_in("held", n)
    return os.getpid()


@asyncjob.job(name="tests.flow.where")
async def where() -> int:
    """Which process ran it."""
    return os.getpid()


@asyncjob.job(name="tests.flow.in_a", queue="a")
async def in_a() -> int:
    """A job registered in queue ``a``: which process ran it."""
    return os.getpid()


@asyncjob.job(name="tests.flow.keyed")
async def keyed(n: int) -> int:
    """The job performed with a unique key; held at the gate while it runs."""
    await check_in("keyed", n)
    return n


async def race(url: str, key: str, n: int) -> None:
    """One of the processes racing for a unique key: open a producer on
    ``url``, print ``ready``, wait for a byte on stdin (the starting gun,
    fired at every racer at once), perform ``keyed(n)`` with the key, and
    print the id that perform returned."""
    async with asyncjob.Runner(url, producer_only=True) as runner:
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.buffer.read, 1)
        job_id = await runner.perform(asyncjob.using(keyed, unique=key), n)
        print(job_id, flush=True)
