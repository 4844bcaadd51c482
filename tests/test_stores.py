"""The Store contract, checked against every store of the package.

The suite itself is ``asyncjob.testing``, shipped for stores of other
packages: here each store of ours gets the fixtures it asks for.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

import asyncjob
from asyncjob.stores import DurableStore, ImmediateStore, MemoryStore, Store, resolve_store
from asyncjob.stores.sql import SQLStore
from asyncjob.testing import DurableStoreContract, ImmediateStoreContract, make_job
from asyncjob.tg._tracker import TrackerHooks

from .conftest import TIMEOUT, RunnerFactory


class _AskedThroughItsOutcome(MemoryStore):
    """An ImmediateStore that answers queued_nowait() as the seam's
    default does, through outcome_nowait(): a store of another package that
    leaves it out."""

    queued_nowait = ImmediateStore.queued_nowait


class TestMemoryStore(ImmediateStoreContract):
    """The memory store keeps the contract; so does what ImmediateStore
    gives a store by default."""

    @pytest.fixture(params=[MemoryStore, _AskedThroughItsOutcome])
    async def store(self, request: pytest.FixtureRequest) -> AsyncIterator[Store]:
        made: MemoryStore = request.param()
        await made.open()
        yield made
        await made.close()


class TestSQLStore(DurableStoreContract):
    """The SQL store keeps the contract, on SQLite and on PostgreSQL."""

    @pytest.fixture(params=["sqlite", "postgres"])
    def url(self, request: pytest.FixtureRequest) -> str:
        url: str = request.getfixturevalue(f"{request.param}_db").async_url
        return url

    @pytest.fixture
    async def make_store(self, url: str) -> AsyncIterator[Callable[[], Awaitable[DurableStore]]]:
        made: list[SQLStore] = []

        async def make() -> DurableStore:
            store = SQLStore(url, lease=0.6, poll_interval=0.05)
            await store.open()
            made.append(store)
            return store

        yield make
        for store in made:
            await store.close()

    @pytest.fixture
    async def store(self, make_store: Callable[[], Awaitable[DurableStore]]) -> DurableStore:
        return await make_store()


def test_resolve_store() -> None:
    """Names and objects become stores; anything else is refused."""
    memory = MemoryStore()
    assert resolve_store(memory) is memory
    assert isinstance(resolve_store("memory"), MemoryStore)
    assert resolve_store("memory", max_finished=3).max_finished == 3  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="unknown store 'redis://localhost'"):
        resolve_store("redis://localhost")
    with pytest.raises(ValueError, match="unknown store 'nowhere'"):
        resolve_store("nowhere")
    with pytest.raises(TypeError, match="store must be"):
        resolve_store(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="store options go with"):
        resolve_store(memory, max_finished=3)


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


async def test_a_tracker_follows_the_runner(make_runner: RunnerFactory) -> None:
    """A tracker, through its hooks, is told of each job performed, each
    report and each end: a job that ran, and a queued job cancelled."""
    tracker = DictTracker()
    runner = await make_runner(concurrency=1, hooks=[TrackerHooks(tracker)])
    reported = threading.Event()
    release = threading.Event()

    def job() -> str:
        asyncjob.set_progress(3, "three")
        reported.set()
        assert release.wait(TIMEOUT)
        return "done"

    a = await runner.perform(job)
    b = await runner.perform(job)
    assert tracker.get_progress(b) == (-1, None)
    assert await asyncio.to_thread(reported.wait, TIMEOUT)
    assert tracker.get_progress(a) == (3, "three")
    await runner.cancel(b)
    assert tracker.get_progress(b) is None
    release.set()
    assert await runner.wait(a, timeout=TIMEOUT) == "done"
    assert tracker.progress == {}


def test_hooks_must_be_hooks() -> None:
    """Anything but JobHooks given as hooks is refused at construction."""
    with pytest.raises(TypeError, match=r"hooks must be asyncjob\.JobHooks"):
        asyncjob.Runner(hooks=[DictTracker()])  # type: ignore[list-item]


def test_an_immediate_store_refuses_an_override_the_runner_would_skip() -> None:
    """A subclass of an ImmediateStore (the memory store) that overrides a
    coroutine method of the hot path is refused when its class is made: the
    runner calls the *_nowait one, and the override would silently not run."""
    with pytest.raises(TypeError, match=r"overrides finish\(\).*finish_nowait\(\)"):

        class Audited(MemoryStore):
            async def finish(self, job_id: str, state: asyncjob.JobState, **kw: Any) -> bool:
                return await super().finish(job_id, state, **kw)


async def test_the_runner_calls_an_immediate_stores_nowait_methods(
    make_runner: RunnerFactory,
) -> None:
    """What an ImmediateStore's *_nowait methods do is what a runner
    records: a subclass that counts in them sees every step of a job."""
    steps: list[str] = []

    class Counting(MemoryStore):
        def enqueue_nowait(self, job: asyncjob.stores.Job) -> str:
            steps.append("enqueue")
            return super().enqueue_nowait(job)

        def start_nowait(self, job_id: str) -> bool:
            steps.append("start")
            return super().start_nowait(job_id)

        def finish_nowait(self, job_id: str, state: asyncjob.JobState, **kw: Any) -> bool:
            steps.append(f"finish {state.value}")
            return super().finish_nowait(job_id, state, **kw)

        def outcome_nowait(self, job_id: str) -> asyncjob.stores.Outcome | None:
            steps.append("outcome")
            return super().outcome_nowait(job_id)

    async def twice(n: int) -> int:
        return 2 * n

    runner = await make_runner(Counting())
    job_id = await runner.perform(twice, 21)
    assert await runner.wait(job_id, timeout=TIMEOUT) == 42
    assert steps[0] == "enqueue"
    assert sorted(steps[1:]) == ["finish succeeded", "outcome", "start"]


class _FinishedSoonByDefault(SQLStore):
    """An SQL store that leaves finish_soon to the seam's default (a task
    that awaits finish), as a store of another package may."""

    finish_soon = DurableStore.finish_soon


async def test_the_seams_finish_soon_keeps_the_contract(sqlite_db: Any) -> None:
    """DurableStore's default finish_soon passes the contract's test of it."""
    made: list[SQLStore] = []

    async def make() -> DurableStore:
        store = _FinishedSoonByDefault(sqlite_db.async_url, lease=0.6, poll_interval=0.05)
        await store.open()
        made.append(store)
        return store

    try:
        contract = DurableStoreContract()
        await contract.test_finish_soon_writes_the_end_then_says_so(await make(), make)
    finally:
        for store in made:
            await store.close()


async def test_a_memory_watch_leaves_no_mailbox_behind() -> None:
    """The memory store's watch is an async generator of the kit's ``follow``:
    a watcher that leaves before the job ends, and one that saw it end,
    leave no mailbox in the store (a closed browser tab, a thousand times)."""
    store = MemoryStore()
    await store.open()
    await store.enqueue(make_job("left"))
    await store.enqueue(make_job("seen"))
    await store.start("left")
    await store.start("seen")
    left, seen = store.watch("left"), store.watch("seen")
    assert (await anext(left)).state is asyncjob.JobState.running
    assert (await anext(seen)).state is asyncjob.JobState.running
    assert sorted(store._watchers.job_ids()) == ["left", "seen"]
    await left.aclose()  # type: ignore[attr-defined]
    assert store._watchers.job_ids() == ["seen"]
    await store.finish("seen", asyncjob.JobState.succeeded)
    async with asyncio.timeout(TIMEOUT):
        assert [status.state async for status in seen] == [asyncjob.JobState.succeeded]
    assert store._watchers.job_ids() == []
    await store.close()
