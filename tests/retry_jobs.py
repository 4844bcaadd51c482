"""Registered jobs for the retry and timeout tests."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

from sqlalchemy import text

import asyncjob
from asyncjob._engine.context import current

#: How many times each key's job has run, across attempts.
runs: dict[str, int] = {}
_lock = threading.Lock()


def _count(key: str) -> int:
    with _lock:
        runs[key] = runs.get(key, 0) + 1
        return runs[key]


@asyncjob.job(retries=2, backoff=0.01)
async def flaky(key: str, failures: int) -> str:
    """Fails ``failures`` times, then succeeds."""
    attempt = _count(key)
    if attempt <= failures:
        raise ConnectionError(f"attempt {attempt} failed")
    return f"ok on attempt {attempt}"


@asyncjob.job(retries=2, backoff=0.01)
def flaky_sync(key: str, failures: int) -> str:
    """The same, in a thread."""
    attempt = _count(key)
    if attempt <= failures:
        raise ConnectionError(f"attempt {attempt} failed")
    return f"ok on attempt {attempt}"


@asyncjob.job(timeout=0.05, retries=1, backoff=0.01)
async def hangs(key: str) -> None:
    """Never ends on its own."""
    _count(key)
    await asyncio.Event().wait()


@asyncjob.job(timeout=0.05)
def loops(key: str) -> None:
    """A sync job that reports progress until it is told to stop."""
    _count(key)
    stop = threading.Event()
    while not stop.wait(0.005):
        asyncjob.set_progress(1)


@asyncjob.job(timeout=0.05, retries=2, backoff=0.01)
def writes_past_its_timeout(key: str) -> str:
    """Writes a row through its session, then returns once past its timeout
    (a thread cannot be stopped; it never reports progress, where it would
    learn of it)."""
    attempt = _count(key)
    asyncjob.session().execute(text("INSERT INTO items (name) VALUES (:name)"), {"name": key})
    running = current.get()
    assert running is not None
    deadline = time.monotonic() + 10
    while not running.timed_out and time.monotonic() < deadline:
        threading.Event().wait(0.005)  # the job's own pace, as loops's
    return f"returned on attempt {attempt}"


@asyncjob.job(timeout=0.05)
async def swallows_its_timeout(key: str) -> str:
    """Catches the cancellation its timeout is, and returns all the same."""
    _count(key)
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.Event().wait()
    return "returned after its timeout"


@asyncjob.job(timeout=10)
async def raises_its_own_timeout() -> None:
    """A TimeoutError of the job's own is not the runner's timeout."""
    raise TimeoutError("the upstream service timed out")


@asyncjob.job(retries=3, backoff=30)
async def fails_slowly() -> None:
    """Fails, then waits 15 to 30 s for its retry."""
    raise ValueError("not yet")
