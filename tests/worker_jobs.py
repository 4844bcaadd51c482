"""Registered jobs that the worker processes of the tests import."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import asyncjob
from asyncjob._engine.context import current


@asyncjob.job
async def whoami(n: int) -> dict[str, int]:
    """Say which process ran job ``n``."""
    asyncjob.set_progress(50)
    await asyncio.sleep(0)
    return {"n": n, "pid": os.getpid()}


@asyncjob.job(name="tests.slow")
async def slow(n: int, seconds: float) -> dict[str, int]:
    """A job that takes a while: long enough to be caught mid-way by a kill."""
    await asyncio.sleep(seconds)  # the work
    return {"n": n, "pid": os.getpid()}


@asyncjob.job
async def stalls_on_its_first_attempt(n: int) -> dict[str, int]:
    """Job ``n``, whose first attempt never ends (a test kills its worker
    meanwhile) and whose next one ends at once: caught mid-way however
    slowly the test sees it start."""
    running = current.get()
    assert running is not None
    if running.job.attempt == 1:
        await asyncio.Event().wait()  # until the worker is killed
    return {"n": n, "pid": os.getpid()}


#: unwinds_slowly's first run sets the first event when it is cancelled,
#: then waits for the test to set the second; by key, with the runs so far.
UNWINDING: dict[str, tuple[asyncio.Event, asyncio.Event]] = {}
UNWINDING_RUNS: dict[str, int] = {}


@asyncjob.job
async def unwinds_slowly(key: str) -> int:
    """Runs until cancelled the first time, then takes its time to clean
    up: until the test lets it (in the test's own process). Its next run
    (a job handed back keeps its attempt's number) returns its count."""
    UNWINDING_RUNS[key] = run = UNWINDING_RUNS.get(key, 0) + 1
    if run == 1:
        cancelled, cleaned_up = UNWINDING[key]
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()
            await cleaned_up.wait()
    return run


@asyncjob.job
def sync_whoami(n: int) -> dict[str, int]:
    """The same as whoami, in a worker thread."""
    asyncjob.set_progress(50)
    return {"n": n, "pid": os.getpid(), "thread": threading.get_ident()}


@asyncjob.job
async def blocks_loop(seconds: float) -> str:
    """Computes without awaiting, which blocks the worker's event loop."""
    time.sleep(seconds)  # noqa: ASYNC251 - CPU-bound work done on the loop by mistake
    return "done"


#: Gates that a test in this process opens to let waiting jobs end.
GATES: dict[str, asyncio.Event] = {}


@asyncjob.job
async def wait_for_gate(name: str) -> str:
    """Wait until the test opens the gate ``name`` (a job run in the test's
    own process, on its loop)."""
    await GATES.setdefault(name, asyncio.Event()).wait()
    return name


#: For each name, the runs of counts_its_runs: ``[under way, most at once, in all]``.
RUNS: dict[str, list[int]] = {}
#: Set when a run of counts_its_runs has started.
STARTED: dict[str, asyncio.Event] = {}


@asyncjob.job
async def counts_its_runs(name: str) -> int:
    """wait_for_gate, counting its runs (RUNS); returns how many started."""
    runs = RUNS.setdefault(name, [0, 0, 0])
    runs[0] += 1
    runs[1] = max(runs[1], runs[0])
    runs[2] += 1
    STARTED.setdefault(name, asyncio.Event()).set()
    try:
        await GATES.setdefault(name, asyncio.Event()).wait()
    finally:
        runs[0] -= 1
    return runs[2]


@asyncjob.job(timeout=0.05)
def writes_too_late(note: str) -> str:
    """A sync job that writes through its session, then takes longer than
    its timeout (the work), and returns as if it had succeeded."""
    from sqlalchemy import text

    asyncjob.session().execute(text("INSERT INTO orders (note) VALUES (:note)"), {"note": note})
    time.sleep(0.2)  # the work, past the timeout
    return note


#: What :func:`record` ran, in this process.
RAN: list[int] = []


@asyncjob.job
async def record(n: int) -> int:
    """Note that job ``n`` ran here."""
    RAN.append(n)
    return n


@asyncjob.job
async def reports_then_waits(seconds: float) -> str:
    """Report some progress, then work for a long while."""
    asyncjob.set_progress(42, "partway")
    await asyncio.sleep(seconds)  # the work
    return "done"


@asyncjob.job
def fails_once(marker: str) -> str:
    """Fail the first time (leaving the file ``marker``), succeed after."""
    if not os.path.exists(marker):
        with open(marker, "w"):
            pass
        raise OSError(f"first attempt: {marker} was missing")
    return "second time lucky"
