"""The Store contract, checked against every store.

Each test takes the ``store`` fixture, parametrized over every
implementation, so a new store passes exactly the same suite.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from asyncjob import JobNotFound, JobState
from asyncjob._models import Job
from asyncjob.stores import MemoryStore, Store, resolve_store
from asyncjob.stores.sql import SQLStore
from asyncjob.tg._tracker import TrackedStore

from .conftest import TIMEOUT


class DictTracker:
    """The seed's tracker interface, over a dict."""

    def __init__(self) -> None:
        self.progress: dict[str, Any] = {}

    def track(self, entryid: str) -> None:
        self.progress[entryid] = (-1, None)

    def remove(self, entryid: str) -> None:
        self.progress.pop(entryid, None)

    def set_progress(self, entryid: str, value: Any, message: Any) -> None:
        self.progress[entryid] = (value, message)

    def get_progress(self, entryid: str) -> Any:
        return self.progress.get(entryid)


STORES: dict[str, Callable[[pytest.FixtureRequest], Store]] = {
    "memory": lambda request: MemoryStore(),
    "memory+tracker": lambda request: TrackedStore(MemoryStore(), DictTracker()),
    "sqlite": lambda request: SQLStore(request.getfixturevalue("sqlite_db").async_url),
    "postgres": lambda request: SQLStore(request.getfixturevalue("postgres_db").async_url),
}


@pytest.fixture(params=sorted(STORES))
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    """An opened store of each kind, closed after the test."""
    made = STORES[request.param](request)
    await made.open()
    yield made
    await made.close()


def make_job(job_id: str = "j1") -> Job:
    """A job record as the runner would hand it to the store."""
    return Job(job_id, "tests.job", print, (1,), {"k": 2}, False, time.time())


async def test_enqueue_then_get(store: Store) -> None:
    """An enqueued job reads as queued, with no progress and no times but one."""
    await store.enqueue(make_job())
    status = await store.get("j1")
    assert status is not None
    assert (status.id, status.name, status.state) == ("j1", "tests.job", JobState.queued)
    assert (status.progress, status.data, status.result, status.error) == (None,) * 4
    assert status.enqueued_at is not None
    assert status.started_at is None
    assert status.finished_at is None


async def test_enqueue_many_records_each_in_order(store: Store) -> None:
    """Many jobs at once: each is queued, as one enqueue would have made it."""
    await store.enqueue_many([make_job(f"m{n}") for n in range(3)])
    for n in range(3):
        status = await store.get(f"m{n}")
        assert status is not None
        assert (status.state, status.progress) == (JobState.queued, None)


async def test_get_unknown(store: Store) -> None:
    """An unknown id is None, not an error."""
    assert await store.get("nope") is None


async def test_start_happens_once(store: Store) -> None:
    """queued → running once; a second start is refused."""
    await store.enqueue(make_job())
    assert await store.start("j1") is True
    assert await store.start("j1") is False
    assert await store.start("nope") is False
    status = await store.get("j1")
    assert status is not None
    assert status.state is JobState.running
    assert status.started_at is not None


async def test_finish_happens_once(store: Store) -> None:
    """running → final once, keeping progress; later finishes are refused."""
    await store.enqueue(make_job())
    await store.start("j1")
    store.report_progress("j1", 5, "five")
    assert await store.finish("j1", JobState.succeeded, result=[1, 2]) is True
    assert await store.finish("j1", JobState.failed, error="late") is False
    status = await store.get("j1")
    assert status is not None
    assert (status.state, status.result, status.error) == (JobState.succeeded, [1, 2], None)
    assert (status.progress, status.data) == (5, "five")
    assert status.finished_at is not None


async def test_finish_needs_a_running_job(store: Store) -> None:
    """A queued job cannot finish without starting."""
    await store.enqueue(make_job())
    assert await store.finish("j1", JobState.succeeded) is False
    assert await store.finish("nope", JobState.succeeded) is False


async def test_failure_keeps_error_and_traceback(store: Store) -> None:
    """failed carries the error text and the traceback."""
    await store.enqueue(make_job())
    await store.start("j1")
    await store.finish("j1", JobState.failed, error="ValueError: x", traceback="Traceback…")
    status = await store.get("j1")
    assert status is not None
    assert (status.error, status.traceback) == ("ValueError: x", "Traceback…")


@pytest.mark.parametrize("started", [False, True])
async def test_cancel_reports_the_state_before(store: Store, started: bool) -> None:
    """cancel() returns the former state; a final job is left as it is."""
    await store.enqueue(make_job())
    if started:
        await store.start("j1")
    before = JobState.running if started else JobState.queued
    assert await store.cancel("j1") is before
    assert await store.cancel("j1") is JobState.cancelled
    assert await store.cancel("nope") is None
    assert await store.start("j1") is False
    assert await store.finish("j1", JobState.succeeded) is False
    status = await store.get("j1")
    assert status is not None
    assert status.state is JobState.cancelled


async def test_progress_only_while_running(store: Store) -> None:
    """Reports for a queued, final or unknown job change nothing."""
    await store.enqueue(make_job())
    store.report_progress("j1", 1, None)
    store.report_progress("nope", 1, None)
    status = await store.get("j1")
    assert status is not None
    assert status.progress is None


async def test_progress_from_another_thread(store: Store) -> None:
    """report_progress is thread-safe; reports arrive in order, the last one
    always (a store may coalesce the ones in between)."""
    await store.enqueue(make_job())
    await store.start("j1")
    watch = store.watch("j1")
    assert (await anext(watch)).state is JobState.running

    def report() -> None:
        for i in range(10):
            store.report_progress("j1", i, {"i": i})

    thread = threading.Thread(target=report)
    thread.start()
    thread.join(TIMEOUT)
    seen: list[float | None] = []
    async with asyncio.timeout(TIMEOUT):
        while not seen or seen[-1] != 9:
            seen.append((await anext(watch)).progress)
    values = [v for v in seen if v is not None]
    assert values == sorted(set(values))
    status = await store.get("j1")
    assert status is not None
    assert status.data == {"i": 9}
    await watch.aclose()  # type: ignore[attr-defined]


async def test_watch_tells_the_story_in_order(store: Store) -> None:
    """The current status, then changes in order, then the final one, and
    the end of iteration. A store may skip intermediate ones."""
    await store.enqueue(make_job())
    watch = store.watch("j1")
    assert (await anext(watch)).state is JobState.queued
    await store.start("j1")
    assert (await anext(watch)).state is JobState.running
    store.report_progress("j1", 1, "a")
    await store.finish("j1", JobState.succeeded, result=3)
    rest = [s async for s in watch]
    assert (rest[-1].state, rest[-1].progress, rest[-1].result) == ("succeeded", 1, 3)
    assert all(s.state is JobState.running for s in rest[:-1])


async def test_watch_unknown(store: Store) -> None:
    """Watching an unknown id raises JobNotFound."""
    with pytest.raises(JobNotFound):
        await anext(store.watch("nope"))


def test_resolve_store() -> None:
    """Names and objects become stores; anything else is refused."""
    memory = MemoryStore()
    assert resolve_store(memory) is memory
    assert isinstance(resolve_store("memory"), MemoryStore)
    with pytest.raises(ValueError, match="unknown store"):
        resolve_store("redis://localhost")
    with pytest.raises(TypeError, match="store must be"):
        resolve_store(None)  # type: ignore[arg-type]


async def test_a_tracker_follows_the_store() -> None:
    """A tracked store tells its tracker of each job, report and end."""
    tracker = DictTracker()
    store = TrackedStore(MemoryStore(), tracker)
    await store.open()
    await store.enqueue(make_job("a"))
    await store.enqueue(make_job("b"))
    assert tracker.get_progress("a") == (-1, None)
    await store.start("a")
    store.report_progress("a", 3, "three")
    assert tracker.get_progress("a") == (3, "three")
    await store.finish("a", JobState.succeeded)
    await store.cancel("b")
    assert tracker.progress == {}
    await store.close()
