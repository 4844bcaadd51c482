"""The store contract suite: the tests every store passes, for yours too.

asyncjob runs these against its own stores; a store of yours runs them the
same way. Subclass :class:`StoreContract` (or :class:`ImmediateStoreContract`
for a store that never waits, :class:`DurableStoreContract` for a store that
worker processes share) in a test module, and give it the fixtures it asks
for::

    import pytest_asyncio
    from asyncjob.testing import DurableStoreContract

    class TestMyStore(DurableStoreContract):
        @pytest_asyncio.fixture
        async def make_store(self):
            made = []

            async def make():
                store = MyStore("redis://localhost/9", lease=0.6)
                await store.open()
                made.append(store)
                return store

            yield make
            for store in made:
                await store.close()

        @pytest_asyncio.fixture
        async def store(self, make_store):
            return await make_store()

Every test is a coroutine: it needs pytest and pytest-asyncio. A durable
store's ``lease`` sets how long its lease tests take (they wait for a lease
to run out): give it one well under a second.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from asyncjob._core.errors import JobNotFound
from asyncjob._core.models import (
    Job,
    JobQuery,
    JobState,
    JobStatus,
    ScheduleStatus,
    new_job_id,
    timestamp_to_datetime,
)
from asyncjob._core.spec import JobOptions
from asyncjob.stores import DurableStore, ImmediateStore, Store

__all__ = (
    "TIMEOUT",
    "DurableStoreContract",
    "ImmediateStoreContract",
    "StoreContract",
    "make_job",
    "make_tick",
)

#: Every wait of the suite gives up after this many seconds, so that a
#: store that never answers fails fast instead of hanging the run.
TIMEOUT = 10.0


def make_job(
    job_id: str = "j1",
    *,
    registered: bool = False,
    at: float | None = None,
    name: str = "",
    **options: Any,
) -> Job:
    """A job as the runner hands it to a store: ``tests.job(1, k=2)``,
    performed at ``at`` (default: now) with the :class:`JobOptions` given
    (``queue=``, ``priority=``, ``delay=``, ``unique=``...)."""
    return Job(
        job_id,
        name or ("tests.registered" if registered else "tests.job"),
        print,
        (1,),
        {"k": 2},
        False,
        time.time() if at is None else at,
        registered,
        options=JobOptions(**options) if options else None,
    )


def make_tick(tick: int, name: str = "tests.periodic", cron: str = "* * * * *") -> ScheduleStatus:
    """A schedule at its tick ``tick`` (a minute counted from 2026-01-01
    UTC; the next tick one minute later), as the scheduler gives it to
    :meth:`Store.tick`."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    return ScheduleStatus(
        name, cron, start + timedelta(minutes=tick), start + timedelta(minutes=tick + 1)
    )


async def _status(store: Store, job_id: str) -> JobStatus:
    status = await store.get(job_id)
    assert status is not None, f"the store forgot {job_id}"
    return status


class StoreContract:
    """The contract of :class:`~asyncjob.stores.Store`.

    Needs a ``store`` fixture: an opened store, closed after the test.
    """

    pytestmark = pytest.mark.asyncio

    async def test_enqueue_then_get(self, store: Store) -> None:
        """An enqueued job reads as queued, with no progress and no times but one."""
        await store.enqueue(make_job())
        status = await _status(store, "j1")
        assert (status.id, status.name, status.state) == ("j1", "tests.job", JobState.queued)
        assert (status.progress, status.data, status.result, status.error) == (None,) * 4
        assert (status.attempts, status.errors, status.cancel_requested) == (0, (), False)
        assert status.enqueued_at is not None
        assert status.started_at is None
        assert status.finished_at is None

    async def test_enqueue_refuses_an_id_taken(self, store: Store) -> None:
        """A second job with the same id is a ValueError; the first is untouched."""
        await store.enqueue(make_job())
        await store.start("j1")
        with pytest.raises(ValueError, match="j1"):
            await store.enqueue(make_job())
        assert (await _status(store, "j1")).state is JobState.running

    async def test_enqueue_many_records_each_in_order(self, store: Store) -> None:
        """Many jobs at once: each is queued, as one enqueue would have made it."""
        await store.enqueue_many([make_job(f"m{n}") for n in range(3)])
        for n in range(3):
            status = await _status(store, f"m{n}")
            assert (status.state, status.progress) == (JobState.queued, None)

    async def test_jobs_performed_together_are_listed_in_their_order(self, store: Store) -> None:
        """Jobs of one ``perform_many`` share their time: listed newest
        first, the last performed comes first, on every store (ids made by
        :func:`asyncjob.new_job_id` increase within a millisecond)."""
        now = time.time()
        ids = [new_job_id() for _ in range(20)]
        await store.enqueue_many([make_job(job_id, at=now) for job_id in ids])
        assert [s.id for s in await store.list_jobs(JobQuery())] == ids[::-1]

    async def test_get_unknown(self, store: Store) -> None:
        """An unknown id is None, not an error."""
        assert await store.get("nope") is None
        assert await store.outcome("nope") is None

    @pytest.mark.parametrize("odd", ["a\x00b", "\x00", "\ud800", "é\udfff"])
    async def test_an_id_no_database_keeps_is_unknown(self, store: Store, odd: str) -> None:
        """An id or a name with NUL or a lone surrogate (which no job has:
        PostgreSQL refuses them in any text) is unknown, as any other is,
        not the database's error."""
        assert await store.get(odd) is None
        assert await store.outcome(odd) is None
        assert await store.cancel(odd) is None
        with pytest.raises(JobNotFound):
            await anext(store.watch(odd))
        with pytest.raises(JobNotFound):
            await store.list_jobs(JobQuery(before=odd))
        assert await store.list_jobs(JobQuery(name=odd)) == []

    async def test_start_happens_once(self, store: Store) -> None:
        """queued → running once, counting an attempt; a second start is refused."""
        await store.enqueue(make_job())
        assert await store.start("j1") is True
        assert await store.start("j1") is False
        assert await store.start("nope") is False
        status = await _status(store, "j1")
        assert (status.state, status.attempts) == (JobState.running, 1)
        assert status.started_at is not None

    async def test_finish_happens_once(self, store: Store) -> None:
        """running → final once, keeping progress; later finishes are refused."""
        await store.enqueue(make_job())
        await store.start("j1")
        store.report_progress("j1", 5, "five")
        assert await store.finish("j1", JobState.succeeded, result=[1, 2]) is True
        assert await store.finish("j1", JobState.failed, error="late") is False
        status = await _status(store, "j1")
        assert (status.state, status.result, status.error) == (JobState.succeeded, [1, 2], None)
        assert (status.progress, status.data) == (5, "five")
        assert status.finished_at is not None
        outcome = await store.outcome("j1")
        assert outcome is not None
        assert (outcome.state, outcome.result) == (JobState.succeeded, [1, 2])

    async def test_finish_as_says_which_state_it_recorded(self, store: Store) -> None:
        """``finish_as`` ends a job as ``finish`` does, and says in which
        state: the one asked; ``cancelled`` when a cancel was requested
        while the job ran; ``None`` when it changed nothing."""
        await store.enqueue(make_job("a"))
        await store.start("a")
        assert await store.finish_as("a", JobState.succeeded, result=1) is JobState.succeeded
        assert await store.finish_as("a", JobState.failed, error="late") is None
        await store.enqueue(make_job("b"))
        await store.start("b")
        await store.cancel("b")  # requested: it runs on until its code stops
        assert await store.finish_as("b", JobState.succeeded, result=2) is JobState.cancelled
        assert (await _status(store, "b")).state is JobState.cancelled
        assert await store.finish_as("nope", JobState.succeeded) is None

    async def test_finish_needs_a_running_job(self, store: Store) -> None:
        """A queued job cannot finish without starting."""
        await store.enqueue(make_job())
        assert await store.finish("j1", JobState.succeeded) is False
        assert await store.finish("nope", JobState.succeeded) is False

    async def test_failure_keeps_error_and_traceback(self, store: Store) -> None:
        """failed carries the error text and the traceback."""
        await store.enqueue(make_job())
        await store.start("j1")
        await store.finish("j1", JobState.failed, error="ValueError: x", traceback="Traceback…")
        status = await _status(store, "j1")
        assert (status.error, status.traceback) == ("ValueError: x", "Traceback…")

    async def test_retry_queues_the_job_again(self, store: Store) -> None:
        """A failed attempt goes back to the queue with its error kept; the
        next start counts a second attempt."""
        await store.enqueue(make_job())
        await store.start("j1")
        assert await store.retry("j1", error="OSError: flaky", delay=0) is True
        status = await _status(store, "j1")
        assert (status.state, status.errors) == (JobState.queued, ("OSError: flaky",))
        assert await store.retry("j1", error="again", delay=0) is False  # not running
        assert await store.start("j1") is True
        assert (await _status(store, "j1")).attempts == 2

    async def test_cancel_a_queued_job(self, store: Store) -> None:
        """A queued job is cancelled at once, and never starts."""
        await store.enqueue(make_job())
        assert await store.cancel("j1") is JobState.queued
        assert await store.cancel("j1") is JobState.cancelled
        assert await store.cancel("nope") is None
        assert await store.start("j1") is False
        status = await _status(store, "j1")
        assert (status.state, status.cancel_requested) == (JobState.cancelled, False)
        assert status.finished_at is not None

    async def test_cancel_a_running_job_is_requested(self, store: Store) -> None:
        """A running job's cancel is requested: it stays running until its
        runner finishes it, then ends cancelled whatever it was finished as,
        with no result but its progress."""
        await store.enqueue(make_job())
        await store.start("j1")
        store.report_progress("j1", 3, None)
        assert await store.cancel("j1") is JobState.running
        assert await store.cancel("j1") is JobState.running  # still
        status = await _status(store, "j1")
        assert (status.state, status.cancel_requested) == (JobState.running, True)
        assert await store.finish("j1", JobState.succeeded, result="kept?") is True
        status = await _status(store, "j1")
        assert (status.state, status.result, status.cancel_requested) == (
            JobState.cancelled,
            None,
            False,
        )
        assert status.progress == 3
        assert await store.cancel("j1") is JobState.cancelled

    async def test_a_retry_after_a_cancel_ends_cancelled(self, store: Store) -> None:
        """A failed attempt of a job whose cancel was requested is not tried
        again: it ends cancelled."""
        await store.enqueue(make_job())
        await store.start("j1")
        await store.cancel("j1")
        assert await store.retry("j1", error="ValueError: x", delay=0) is False
        assert (await _status(store, "j1")).state is JobState.cancelled

    async def test_progress_only_while_running(self, store: Store) -> None:
        """Reports for a queued, final or unknown job change nothing."""
        await store.enqueue(make_job())
        store.report_progress("j1", 1, None)
        store.report_progress("nope", 1, None)
        assert (await _status(store, "j1")).progress is None

    async def test_progress_from_another_thread(self, store: Store) -> None:
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
        assert (await _status(store, "j1")).data == {"i": 9}
        await watch.aclose()  # type: ignore[attr-defined]

    async def test_watch_tells_the_story_in_order(self, store: Store) -> None:
        """The current status, then changes in order, then the final one, and
        the end of iteration. A store may skip intermediate ones."""
        await store.enqueue(make_job())
        watch = store.watch("j1")
        assert (await anext(watch)).state is JobState.queued
        await store.start("j1")
        assert (await anext(watch)).state is JobState.running
        store.report_progress("j1", 1, "a")
        await store.finish("j1", JobState.succeeded, result=3)
        async with asyncio.timeout(TIMEOUT):
            rest = [s async for s in watch]
        assert (rest[-1].state, rest[-1].progress, rest[-1].result) == ("succeeded", 1, 3)
        assert all(s.state is JobState.running for s in rest[:-1])

    async def test_watch_sees_a_cancel_requested(self, store: Store) -> None:
        """A watcher sees the request (still running), then the cancelled end."""
        await store.enqueue(make_job())
        await store.start("j1")
        watch = store.watch("j1")
        assert (await anext(watch)).cancel_requested is False
        await store.cancel("j1")
        async with asyncio.timeout(TIMEOUT):
            requested = await anext(watch)
        assert (requested.state, requested.cancel_requested) == (JobState.running, True)
        await store.finish("j1", JobState.cancelled)
        async with asyncio.timeout(TIMEOUT):
            assert [s.state async for s in watch] == [JobState.cancelled]

    async def test_watch_unknown(self, store: Store) -> None:
        """Watching an unknown id raises JobNotFound."""
        with pytest.raises(JobNotFound):
            await anext(store.watch("nope"))

    async def test_list_jobs_newest_first_filtered_and_paged(self, store: Store) -> None:
        """Listings are newest first, filtered by state and name, and paged by
        the last job of the previous page; a page ends where the jobs do."""
        now = time.time()
        for n in range(5):
            await store.enqueue(make_job(f"l{n}", at=now + n, name=f"tests.kind{n % 2}"))
        await store.start("l4")
        ids = [s.id for s in await store.list_jobs(JobQuery())]
        assert ids == ["l4", "l3", "l2", "l1", "l0"]
        first = await store.list_jobs(JobQuery(limit=2))
        assert [s.id for s in first] == ["l4", "l3"]
        second = await store.list_jobs(JobQuery(limit=2, before=first[-1].id))
        assert [s.id for s in second] == ["l2", "l1"]
        last = await store.list_jobs(JobQuery(limit=2, before="l1"))
        assert [s.id for s in last] == ["l0"]
        assert await store.list_jobs(JobQuery(before="l0")) == []
        queued = await store.list_jobs(JobQuery(states=frozenset({JobState.queued})))
        assert [s.id for s in queued] == ["l3", "l2", "l1", "l0"]
        running = await store.list_jobs(JobQuery(states=frozenset({JobState.running})))
        assert [(s.id, s.state) for s in running] == [("l4", JobState.running)]
        kind0 = await store.list_jobs(JobQuery(name="tests.kind0", before="l4"))
        assert [s.id for s in kind0] == ["l2", "l0"]
        with pytest.raises(JobNotFound):
            await store.list_jobs(JobQuery(before="nope"))

    # -- scheduling and flow control ---------------------------------------------

    async def test_status_says_where_and_when(self, store: Store) -> None:
        """A job's status has its queue, priority and unique key; ``run_after``
        while it waits for its time, and ``None`` for a job due at once."""
        await store.enqueue(make_job("now"))
        await store.enqueue(make_job("later", queue="mail", priority=-7, delay=3600, unique="k"))
        now = await _status(store, "now")
        assert (now.queue, now.priority, now.run_after, now.unique) == ("default", 0, None, None)
        later = await _status(store, "later")
        assert (later.state, later.queue, later.priority, later.unique) == (
            JobState.queued, "mail", -7, "k"
        )  # fmt: skip
        assert later.run_after is not None
        assert later.enqueued_at is not None
        waits = (later.run_after - later.enqueued_at).total_seconds()
        assert 3000 < waits < 4000  # an hour, by the store's clock

    async def test_a_retry_waits_for_its_time(self, store: Store) -> None:
        """A retry with a delay is queued, its ``run_after`` the end of the delay."""
        await store.enqueue(make_job())
        await store.start("j1")
        assert await store.retry("j1", error="OSError: flaky", delay=3600) is True
        status = await _status(store, "j1")
        assert status.state is JobState.queued
        assert status.run_after is not None

    async def test_a_unique_key_gives_the_job_that_holds_it(self, store: Store) -> None:
        """While a job with the key is queued, waiting for a retry or
        running, enqueueing another with it records nothing and returns the
        holder's id; once the holder ends, the key is free again."""
        assert await store.enqueue(make_job("a", unique="k")) == "a"
        assert await store.enqueue(make_job("b", unique="k")) == "a"
        assert await store.get("b") is None
        assert await store.enqueue(make_job("other", unique="k2")) == "other"
        await store.start("a")
        assert await store.enqueue(make_job("c", unique="k")) == "a"
        await store.retry("a", error="OSError: flaky", delay=3600)
        assert await store.enqueue(make_job("d", unique="k")) == "a"
        await store.start("a")
        await store.finish("a", JobState.succeeded, result=1)
        assert await store.enqueue(make_job("e", unique="k")) == "e"
        assert await store.cancel("e") is JobState.queued
        assert await store.enqueue(make_job("f", unique="k")) == "f"
        for gone in ("b", "c", "d"):
            assert await store.get(gone) is None

    async def test_enqueue_many_with_unique_keys(self, store: Store) -> None:
        """In one batch, a key held before, or by a job earlier in the batch,
        gives that job's id; the others are recorded."""
        await store.enqueue(make_job("held", unique="k1"))
        ids = await store.enqueue_many(
            [
                make_job("m0", unique="k1"),
                make_job("m1", unique="k2"),
                make_job("m2", unique="k2"),
                make_job("m3"),
            ]
        )
        assert ids == ["held", "m1", "m1", "m3"]
        assert await store.get("m0") is None
        assert await store.get("m2") is None

    async def test_list_jobs_by_queue(self, store: Store) -> None:
        """Listings filter by queue too; a job waiting for its time is queued."""
        now = time.time()
        await store.enqueue(make_job("a", at=now, queue="mail"))
        await store.enqueue(make_job("b", at=now + 1, queue="video", delay=3600))
        await store.enqueue(make_job("c", at=now + 2, queue="mail"))
        mail = await store.list_jobs(JobQuery(queue="mail"))
        assert [s.id for s in mail] == ["c", "a"]
        queued = await store.list_jobs(JobQuery(states=frozenset({JobState.queued})))
        assert [s.id for s in queued] == ["c", "b", "a"]

    async def test_a_tick_is_performed_once(self, store: Store) -> None:
        """A new schedule is recorded, its tick not performed (its first run
        is its next tick); then each newer tick is performed once, and an
        older or repeated one never."""
        job = make_job("t0", registered=True)
        assert await store.tick(make_tick(0), job) is False
        assert await store.get("t0") is None
        assert await store.tick(make_tick(1), make_job("t1", registered=True)) is True
        assert (await _status(store, "t1")).state is JobState.queued
        assert await store.tick(make_tick(1), make_job("t1b", registered=True)) is False
        assert await store.tick(make_tick(0), make_job("t0b", registered=True)) is False
        # A runner that was away for three ticks performs the last, once.
        assert await store.tick(make_tick(5), make_job("t5", registered=True)) is True
        assert {s.id for s in await store.list_jobs(JobQuery())} == {"t1", "t5"}

    async def test_schedules_are_readable(self, store: Store) -> None:
        """Each schedule, by name, with its cron, last tick performed and
        next tick, as the last tick left them."""
        assert await store.schedules() == []
        await store.tick(make_tick(0, "tests.b", "*/5 * * * *"), make_job("b0", registered=True))
        await store.tick(make_tick(0, "tests.a"), make_job("a0", registered=True))
        await store.tick(make_tick(1, "tests.a"), make_job("a1", registered=True))
        assert await store.schedules() == [
            make_tick(1, "tests.a"),
            make_tick(0, "tests.b", "*/5 * * * *"),
        ]

    async def test_changes_are_announced(self, store: Store) -> None:
        """A follower of :meth:`Store.changes` wakes at each change (from
        the call on), and once for many that came while it was busy."""
        changes = store.changes()  # it follows from now on
        await store.enqueue(make_job("a"))
        async with asyncio.timeout(TIMEOUT):
            await anext(changes)
        for n in range(5):
            await store.enqueue(make_job(f"b{n}"))
        await store.start("a")
        async with asyncio.timeout(TIMEOUT):
            await anext(changes)

    async def test_list_jobs_between_two_times(self, store: Store) -> None:
        """``since`` (included) and ``until`` (excluded) bound when the jobs
        listed were performed."""
        for n in range(4):
            await store.enqueue(make_job(f"t{n}", at=1_000_000 + n * 60))
        found = await store.list_jobs(JobQuery(since=1_000_060, until=1_000_180))
        assert [s.id for s in found] == ["t2", "t1"]
        found = await store.list_jobs(JobQuery(since=1_000_120, limit=1))
        assert [s.id for s in found] == ["t3"]
        after = await store.list_jobs(JobQuery(since=1_000_120, before="t3"))
        assert [s.id for s in after] == ["t2"]

    async def test_pages_of_a_listing_find_every_job_once(self, store: Store) -> None:
        """Following ``list_page``'s ``next`` from page to page finds the jobs
        ``list_jobs`` finds, in its order, each once, whatever the pages'
        sizes (a store may return short pages while it looks on)."""
        now = time.time()
        for n in range(12):
            name = "tests.rare" if n in (1, 6, 10) else "tests.common"
            await store.enqueue(make_job(f"p{n:02}", at=now + n, name=name))
        for query in (JobQuery(name="tests.rare", limit=2), JobQuery(limit=5)):
            expected = [s.id for s in await store.list_jobs(dataclasses.replace(query, limit=100))]
            found: list[str] = []
            page = await store.list_page(query)
            for _ in range(20):
                assert len(page.jobs) <= query.limit
                found += [s.id for s in page.jobs]
                if page.next is None:
                    break
                page = await store.list_page(dataclasses.replace(query, before=page.next))
            assert found == expected
            assert len(expected) == (3 if query.name else 12)

    async def test_a_page_goes_on_from_a_job_no_longer_there(self, store: Store) -> None:
        """The last job of a page may be deleted (or forgotten) before the
        next page is read: with its ``enqueued_at`` (``before_at``), the
        next page starts where it stood, the jobs of its microsecond that
        came before it in the order left out; without it, the store does
        not know where that was."""
        now = time.time()
        for n in range(5):
            await store.enqueue(make_job(f"a{n}", at=now + n))
        for job_id in ("b5x", "b5z"):  # one time, told apart by their ids
            await store.enqueue(make_job(job_id, at=now + 5))
        first = await store.list_page(JobQuery(limit=2))
        assert ([s.id for s in first.jobs], first.next) == (["b5z", "b5x"], "b5x")
        assert first.next_at == first.jobs[-1].enqueued_at
        at = timestamp_to_datetime(now + 5)
        assert at is not None
        gone = JobQuery(before="b5y", before_at=at.timestamp())  # b5y is deleted since
        found = [s.id for s in await store.list_jobs(gone)]
        assert found == ["b5x", "a4", "a3", "a2", "a1", "a0"], found
        page = await store.list_page(dataclasses.replace(gone, limit=3))
        assert [s.id for s in page.jobs] == ["b5x", "a4", "a3"]
        # A job still there is where the page starts, whatever before_at says.
        there = JobQuery(before="a3", before_at=at.timestamp())
        assert [s.id for s in await store.list_jobs(there)] == ["a2", "a1", "a0"]
        with pytest.raises(JobNotFound):
            await store.list_jobs(JobQuery(before="b5y"))

    async def test_overview_counts_by_queue_and_minute(self, store: Store) -> None:
        """Waiting, delayed and running jobs by queue; since when the oldest
        due job waits; what ended in the last hour, by minute."""
        empty = await store.overview()
        assert (empty.waiting, empty.running, empty.oldest_due) == ({}, {}, None)
        now = time.time()
        await store.enqueue(make_job("old", at=now))
        await store.enqueue(make_job("new", at=now, queue="mail"))
        await store.enqueue(make_job("later", delay=3600))
        for job_id, state in (("ok", JobState.succeeded), ("bad", JobState.failed), ("run", None)):
            await store.enqueue(make_job(job_id, queue="video"))
            await store.start(job_id)
            if state is not None:
                await store.finish(job_id, state)
        seen = await store.overview()
        assert (seen.waiting, seen.scheduled, seen.running, seen.capped) == (
            {"default": 1, "mail": 1}, {"default": 1}, {"video": 1}, False,
        )  # fmt: skip
        assert seen.oldest_due is not None
        assert now - 5 < seen.oldest_due.timestamp() < time.time() + 5  # the store's clock
        assert len(seen.ended) == 60
        assert sum(minute[1] for minute in seen.ended) == 1
        assert sum(minute[2] for minute in seen.ended) == 1
        assert seen.ended[-1][0] <= datetime.now(UTC) < seen.ended[-1][0] + timedelta(minutes=1)

    async def test_a_status_gives_the_arguments(self, store: Store) -> None:
        """The arguments a job was performed with, for a job's page."""
        await store.enqueue(make_job("args"))
        status = await store.get("args")
        assert status is not None
        assert (status.args, dict(status.kwargs)) == ((1,), {"k": 2})

    async def test_overview_says_since_when_each_queue_waits(self, store: Store) -> None:
        """``due_since`` is by queue, and finds the longest-waiting job
        behind jobs of a higher priority that came due after it."""
        await store.enqueue(make_job("low", registered=True))
        await store.enqueue(make_job("mail", registered=True, queue="mail"))
        await store.enqueue(make_job("later", registered=True, queue="later", delay=3600))
        before = await store.overview()
        assert sorted(before.due_since) == ["default", "mail"]
        assert before.due_since["default"] <= before.due_since["mail"]
        await store.enqueue(make_job("high", registered=True, priority=50))
        seen = await store.overview()
        assert seen.due_since == before.due_since
        assert seen.oldest_due == seen.due_since["default"]


class ImmediateStoreContract(StoreContract):
    """The contract of :class:`~asyncjob.stores.ImmediateStore`, with the
    :class:`StoreContract` too: its synchronous calls are the store's.

    Needs the ``store`` fixture, as :class:`StoreContract` does.
    """

    async def test_the_nowait_calls_are_the_store(self, store: ImmediateStore) -> None:
        """A job recorded, started and ended through the *_nowait calls
        reads as the coroutine calls would have left it."""
        assert store.enqueue_nowait(make_job()) == "j1"
        assert store.outcome_nowait("j1") == (JobState.queued, None, None, None)
        assert store.start_nowait("j1")
        assert not store.start_nowait("j1")
        assert store.finish_nowait("j1", JobState.succeeded, result=[1])
        assert not store.finish_nowait("j1", JobState.failed)
        assert store.outcome_nowait("j1") == (JobState.succeeded, [1], None, None)
        status = await _status(store, "j1")
        assert (status.state, status.result, status.attempts) == (JobState.succeeded, [1], 1)
        assert store.outcome_nowait("nope") is None

    async def test_queued_nowait_is_true_only_while_a_job_waits(
        self, store: ImmediateStore
    ) -> None:
        """queued_nowait(): true for a job recorded and not started; false
        once it started, for one cancelled while queued, and for an
        unknown id."""
        store.enqueue_nowait(make_job("started"))
        store.enqueue_nowait(make_job("cancelled"))
        assert store.queued_nowait("started")
        assert store.queued_nowait("cancelled")
        assert store.start_nowait("started")
        assert await store.cancel("cancelled") is JobState.queued
        assert not store.queued_nowait("started")
        assert not store.queued_nowait("cancelled")
        assert not store.queued_nowait("nope")

    async def test_ending_gives_a_jobs_outcome_when_it_ends(self, store: ImmediateStore) -> None:
        """ending(): a future set with the outcome when the job ends, set
        already for a job that has ended, ``None`` for an unknown id; a
        future its caller cancelled is dropped, and the others still set."""
        assert store.ending("nope") is None
        store.enqueue_nowait(make_job())
        store.start_nowait("j1")
        ending, given_up = store.ending("j1"), store.ending("j1")
        assert ending is not None
        assert given_up is not None
        assert not ending.done()
        given_up.cancel()
        assert store.finish_nowait("j1", JobState.failed, error="E", traceback="T")
        async with asyncio.timeout(TIMEOUT):
            assert await ending == (JobState.failed, None, "E", "T")
        again = store.ending("j1")
        assert again is not None
        assert again.done()
        assert again.result() == (JobState.failed, None, "E", "T")


class DurableStoreContract(StoreContract):
    """The contract of :class:`~asyncjob.stores.DurableStore`, with the
    :class:`StoreContract` too.

    Needs, besides ``store``, a ``make_store`` fixture: an async callable
    that opens one more store on the same database (another worker), each
    closed after the test. Its stores' ``lease`` sets how long the lease
    tests wait: give them one well under a second.
    """

    async def test_claim_takes_registered_jobs_once(
        self, store: DurableStore, make_store: Callable[[], Awaitable[DurableStore]]
    ) -> None:
        """A claim takes the queued registered jobs, oldest first, running
        and counting an attempt; another worker then finds none, and jobs
        that are not registered are never claimed."""
        now = time.time()
        for n in range(3):
            await store.enqueue(make_job(f"r{n}", registered=True, at=now + n))
        await store.enqueue(make_job("mine"))
        other = await make_store()
        claimed = await store.claim(10)
        assert [c.id for c in claimed] == ["r0", "r1", "r2"]
        assert [(c.name, c.args, dict(c.kwargs), c.attempts) for c in claimed[:1]] == [
            ("tests.registered", (1,), {"k": 2}, 1)
        ]
        assert all(c.problem is None for c in claimed)
        assert await other.claim(10) == []
        assert await store.claim(10) == []
        status = await _status(store, "r0")
        assert (status.state, status.attempts) == (JobState.running, 1)
        assert (await _status(store, "mine")).state is JobState.queued

    async def test_a_status_names_the_worker_of_the_last_attempt(self, store: DurableStore) -> None:
        """``worker`` is the store's worker id (as its heartbeat says it) from
        the job's start, and stays once it has ended."""
        await store.enqueue(make_job("w", registered=True))
        assert (await _status(store, "w")).worker is None
        assert [c.id for c in await store.claim(1)] == ["w"]
        await store.heartbeat(queues=None, concurrency=1, running=1)
        me = [worker.id for worker in await store.workers()]
        assert [(await _status(store, "w")).worker] == me
        await store.finish("w", JobState.succeeded, result=1)
        assert [(await _status(store, "w")).worker] == me

    async def test_finish_soon_writes_the_end_then_says_so(
        self, store: DurableStore, make_store: Callable[[], Awaitable[DurableStore]]
    ) -> None:
        """``finish_soon`` records the end as ``finish`` does, and calls
        ``then()`` once it is written (readable from another worker), each
        end with its own result, however many are pending at once."""
        for n in range(3):
            await store.enqueue(make_job(f"s{n}", registered=True, at=time.time() + n))
        assert len(await store.claim(3)) == 3
        written: list[str] = []
        all_written = asyncio.Event()

        def then(job_id: str) -> Callable[[], None]:
            def written_one() -> None:
                written.append(job_id)
                if len(written) == 3:
                    all_written.set()

            return written_one

        for n in range(3):
            store.finish_soon(f"s{n}", JobState.succeeded, then(f"s{n}"), result=n)
        async with asyncio.timeout(TIMEOUT):
            await all_written.wait()
        assert sorted(written) == ["s0", "s1", "s2"]
        other = await make_store()
        for n in range(3):
            outcome = await other.outcome(f"s{n}")
            assert outcome is not None
            assert (outcome.state, outcome.result) == (JobState.succeeded, n)

    async def test_claim_takes_no_more_than_asked(self, store: DurableStore) -> None:
        """``limit`` bounds a claim; the rest wait for the next one."""
        now = time.time()
        for n in range(3):
            await store.enqueue(make_job(f"r{n}", registered=True, at=now + n))
        assert [c.id for c in await store.claim(2)] == ["r0", "r1"]
        assert [c.id for c in await store.claim(2)] == ["r2"]

    async def test_release_hands_a_job_back(
        self, store: DurableStore, make_store: Callable[[], Awaitable[DurableStore]]
    ) -> None:
        """A released job is queued again, its attempt not counted, and
        another worker claims it."""
        await store.enqueue(make_job("r", registered=True))
        await store.claim(1)
        await store.release(["r", "nope"])
        status = await _status(store, "r")
        assert (status.state, status.attempts, status.started_at) == (JobState.queued, 0, None)
        other = await make_store()
        (again,) = await other.claim(1)
        assert (again.id, again.attempts) == ("r", 1)

    async def test_a_retry_is_claimed_again(self, store: DurableStore) -> None:
        """A claimed job's failed attempt, sent back with no delay, is claimed
        again for its second attempt."""
        await store.enqueue(make_job("r", registered=True))
        await store.claim(1)
        assert await store.retry("r", error="OSError: flaky", delay=0) is True
        async with asyncio.timeout(TIMEOUT):
            while not (claimed := await store.claim(1)):  # noqa: ASYNC110 - due by the store's clock
                await asyncio.sleep(0.01)
        assert (claimed[0].id, claimed[0].attempts) == ("r", 2)

    async def test_a_cancel_from_elsewhere_reaches_the_holder(
        self, store: DurableStore, make_store: Callable[[], Awaitable[DurableStore]]
    ) -> None:
        """A job cancelled by another process is still held by its worker,
        whose renew() reports it once; its end is then cancelled."""
        await store.enqueue(make_job("r", registered=True))
        await store.claim(1)
        other = await make_store()
        assert await other.cancel("r") is JobState.running
        assert (await _status(other, "r")).cancel_requested is True
        async with asyncio.timeout(TIMEOUT):
            while "r" not in await store.renew():  # noqa: ASYNC110 - the store renews on its own
                await asyncio.sleep(store.lease / 10)
        # Not a wait for something: time for a few more renewals, to show
        # that none reports the job again.
        await asyncio.sleep(store.lease)
        assert "r" not in await store.renew()
        assert await store.finish("r", JobState.succeeded, result=1) is True
        assert (await _status(other, "r")).state is JobState.cancelled

    async def test_a_dead_workers_jobs_are_recovered(
        self, store: DurableStore, make_store: Callable[[], Awaitable[DurableStore]]
    ) -> None:
        """Once a holder stops renewing (it closed, as a dead worker does),
        its registered job goes back to the queue, and runs again elsewhere;
        the first holder has lost it."""
        holder = await make_store()
        await holder.enqueue(make_job("r", registered=True))
        await holder.claim(1)
        await holder.close()
        async with asyncio.timeout(TIMEOUT):
            while not await store.recover():  # noqa: ASYNC110 - waits for the lease to run out
                await asyncio.sleep(store.lease / 10)
        (again,) = await store.claim(1)
        assert (again.id, again.attempts) == ("r", 2)

    async def test_a_dead_processs_own_jobs_fail(
        self, store: DurableStore, make_store: Callable[[], Awaitable[DurableStore]]
    ) -> None:
        """Jobs that are not registered could run only where they were
        performed: when that process stops renewing, they end failed,
        queued or running, saying their worker was lost."""
        holder = await make_store()
        await holder.enqueue(make_job("running"))
        await holder.enqueue(make_job("queued"))
        await holder.start("running")
        await holder.close()
        recovered = 0
        async with asyncio.timeout(TIMEOUT):
            while recovered < 2:
                recovered += await store.recover()
                await asyncio.sleep(store.lease / 10)  # until the lease runs out
        for job_id in ("running", "queued"):
            status = await _status(store, job_id)
            assert status.state is JobState.failed
            assert (status.error or "").startswith("worker lost")

    async def test_retention_keeps_what_has_not_ended(self, store: DurableStore) -> None:
        """forget_finished() never deletes a job that is queued or running."""
        await store.enqueue(make_job("queued"))
        await store.enqueue(make_job("running"))
        await store.start("running")
        assert await store.forget_finished() >= 0
        for job_id in ("queued", "running"):
            assert await store.get(job_id) is not None

    # -- scheduling and flow control ---------------------------------------------

    async def test_claim_takes_higher_priorities_first(self, store: DurableStore) -> None:
        """Higher priority first; within a priority, in the order performed."""
        now = time.time()
        for n, priority in enumerate((0, 5, -5, 5, 0, 100, -100)):
            job = make_job(f"p{n}", registered=True, at=now + n, priority=priority)
            await store.enqueue(job)
        claimed = [c.id for c in await store.claim(4)]
        assert claimed == ["p5", "p1", "p3", "p0"]
        assert [c.id for c in await store.claim(10)] == ["p4", "p2", "p6"]

    async def test_a_job_waits_for_its_time(self, store: DurableStore) -> None:
        """A delayed job is not claimed before its time; next_due() says how
        long until it is, and 0 once one is due."""
        assert await store.next_due() is None
        await store.enqueue(make_job("later", registered=True, delay=3600))
        await store.enqueue(make_job("now", registered=True))
        assert [c.id for c in await store.claim(10)] == ["now"]
        wait = await store.next_due()
        assert wait is not None
        assert 3000 < wait <= 3600
        await store.enqueue(make_job("soon", registered=True, delay=0.05))
        async with asyncio.timeout(TIMEOUT):
            while not (claimed := await store.claim(10)):  # noqa: ASYNC110 - due by the store's clock
                await asyncio.sleep(0.01)
        assert [c.id for c in claimed] == ["soon"]
        await store.enqueue(make_job("due", registered=True))
        assert await store.next_due() == 0

    async def test_claim_takes_only_its_queues(self, store: DurableStore) -> None:
        """A claim for some queues leaves the others' jobs queued."""
        now = time.time()
        for n, queue in enumerate(("a", "b", "c", "a", "default")):
            await store.enqueue(make_job(f"{queue}{n}", registered=True, at=now + n, queue=queue))
        assert [c.id for c in await store.claim(10, frozenset({"a"}))] == ["a0", "a3"]
        assert await store.next_due(frozenset({"a"})) is None
        assert await store.next_due(frozenset({"b", "c"})) == 0
        taken = await store.claim(10, frozenset({"b", "c"}))
        assert [(c.id, c.queue) for c in taken] == [("b1", "b"), ("c2", "c")]
        assert [c.id for c in await store.claim(10)] == ["default4"]

    async def test_claims_of_several_queues_take_each_job_once(
        self, store: DurableStore, make_store: Callable[[], Awaitable[DurableStore]]
    ) -> None:
        """A claim of several queues takes the first jobs of them all, by
        priority then time, whichever queue holds them; workers of the same
        queues claiming at once take each job once, and none of another
        queue."""
        now = time.time()
        taken = frozenset({"a", "b"})
        firsts = (("a", 0), ("b", 5), ("a", 5), ("c", 50), ("b", 0), ("a", -5))
        for n, (queue, priority) in enumerate(firsts):
            job = make_job(
                f"{queue}{n}", registered=True, at=now + n, queue=queue, priority=priority
            )
            await store.enqueue(job)
        assert [c.id for c in await store.claim(2, taken)] == ["b1", "a2"]
        assert [c.id for c in await store.claim(2, taken)] == ["a0", "b4"]
        assert [c.id for c in await store.claim(2, taken)] == ["a5"]
        queues = {f"w{n}": "abc"[n % 3] for n in range(90)}
        for n, (job_id, queue) in enumerate(queues.items()):
            job = make_job(job_id, registered=True, at=now + 10 + n, queue=queue, priority=n % 4)
            await store.enqueue(job)
        workers = [store, *[await make_store() for _ in range(2)]]

        async def drain(worker: DurableStore) -> list[str]:
            claimed: list[str] = []
            while batch := await worker.claim(7, taken):
                claimed += [c.id for c in batch]
            return claimed

        async with asyncio.timeout(TIMEOUT):
            drained = await asyncio.gather(*(drain(worker) for worker in workers))
        claimed = [job_id for each in drained for job_id in each]
        assert sorted(claimed) == sorted(job_id for job_id, q in queues.items() if q != "c")
        assert await store.claim(100, taken) == []
        left = {c.id for c in await store.claim(100, frozenset({"c"}))}
        assert left == {"c3"} | {job_id for job_id, q in queues.items() if q == "c"}

    async def test_claim_keeps_to_concurrency_limits(
        self, store: DurableStore, make_store: Callable[[], Awaitable[DurableStore]]
    ) -> None:
        """No more jobs of a limited name run than its limit, counted across
        every worker of the store; the jobs over it stay queued, and the
        jobs behind them are claimed all the same."""
        limits = {"tests.limited": 2}
        now = time.time()
        for n in range(5):
            await store.enqueue(
                make_job(f"l{n}", registered=True, at=now + n, name="tests.limited")
            )
        await store.enqueue(make_job("free", registered=True, at=now + 9))
        first = [c.id for c in await store.claim(1, limits=limits)]
        assert first == ["l0"]
        other = await make_store()
        assert [c.id for c in await other.claim(10, limits=limits)] == ["l1", "free"]
        assert await store.claim(10, limits=limits) == []
        assert await store.finish("l0", JobState.succeeded, result=None) is True
        assert [c.id for c in await store.claim(10, limits=limits)] == ["l2"]
        assert [c.id for c in await store.claim(10, limits={"tests.limited": 3})] == ["l3"]

    async def test_jobs_held_back_by_a_limit_are_not_due(self, store: DurableStore) -> None:
        """After a claim that left jobs at their name's limit, next_due()
        does not call them due (a worker would claim again at once, over
        and over): only the other jobs, and the ones to come."""
        limits = {"tests.limited": 1}
        for n in range(3):
            await store.enqueue(make_job(f"l{n}", registered=True, name="tests.limited"))
        assert [c.id for c in await store.claim(10, limits=limits)] == ["l0"]
        assert await store.next_due() == 0
        assert await store.next_due(limits=limits) is None
        await store.enqueue(make_job("later", registered=True, delay=3600))
        wait = await store.next_due(limits=limits)
        assert wait is not None
        assert wait > 3000
        await store.enqueue(make_job("free", registered=True))
        assert await store.next_due(limits=limits) == 0

    async def test_workers_racing_on_one_key_record_one_job(
        self, store: DurableStore, make_store: Callable[[], Awaitable[DurableStore]]
    ) -> None:
        """Two workers enqueueing with one key at the same moment record one
        job, and both get its id."""
        other = await make_store()
        ids = await asyncio.gather(
            *((store, other)[n % 2].enqueue(make_job(f"race{n}", unique="race")) for n in range(10))
        )
        assert len(set(ids)) == 1
        listed = await store.list_jobs(JobQuery())
        assert [s.id for s in listed] == [ids[0]]

    async def test_workers_at_one_tick_perform_it_once(
        self, store: DurableStore, make_store: Callable[[], Awaitable[DurableStore]]
    ) -> None:
        """Three workers reaching the same ticks at the same moment: each
        tick is performed by one of them, and its job is written once."""
        others = [await make_store(), await make_store()]
        stores = [store, *others]
        await store.tick(make_tick(0), make_job("first", registered=True))
        for tick in (1, 2, 3):
            performed = await asyncio.gather(
                *(
                    s.tick(make_tick(tick), make_job(f"t{tick}-{n}", registered=True))
                    for n, s in enumerate(stores)
                )
            )
            assert performed.count(True) == 1, performed
        jobs = await store.list_jobs(JobQuery())
        assert len(jobs) == 3
        assert (await store.schedules())[0].last_tick == make_tick(3).last_tick

    # -- what operators do -------------------------------------------------------

    async def _ended(self, store: DurableStore, job_id: str, state: JobState, **job: Any) -> None:
        """A registered job claimed and ended in ``state``."""
        await store.enqueue(make_job(job_id, registered=True, **job))
        (claimed,) = await store.claim(1)
        assert claimed.id == job_id
        if state is JobState.cancelled:
            await store.cancel(job_id)
            await store.finish(job_id, JobState.succeeded)  # a cancel requested ends cancelled
        else:
            await store.finish(job_id, state, result=1, error="OSError: disk full", traceback="T")
        assert (await _status(store, job_id)).state is state

    async def test_requeue_runs_a_failed_job_again(
        self, store: DurableStore, make_store: Callable[[], Awaitable[DurableStore]]
    ) -> None:
        """A failed job goes back to the queue, due now, its error among the
        earlier ones and its outcome cleared; any worker takes it, for its
        next attempt."""
        await self._ended(store, "f", JobState.failed)
        assert await store.requeue("f") is True
        status = await _status(store, "f")
        assert (status.state, status.errors, status.error, status.traceback) == (
            JobState.queued, ("OSError: disk full",), None, None,
        )  # fmt: skip
        assert (status.started_at, status.finished_at, status.run_after) == (None, None, None)
        assert await store.requeue("f") is False  # queued: nothing to do
        (again,) = await (await make_store()).claim(1)
        assert (again.id, again.attempts) == ("f", 2)

    async def test_requeue_runs_a_cancelled_job_again(self, store: DurableStore) -> None:
        await self._ended(store, "c", JobState.cancelled)
        assert await store.requeue("c") is True
        status = await _status(store, "c")
        assert (status.state, status.cancel_requested, status.errors) == (
            JobState.queued,
            False,
            (),
        )

    async def test_requeue_refuses_what_it_cannot_run(self, store: DurableStore) -> None:
        """Only a registered job that failed or was cancelled runs again: not
        one that succeeded, is queued or running, is unknown, or was
        performed by a process (not registered) that alone could run it."""
        await self._ended(store, "ok", JobState.succeeded)
        await store.enqueue(make_job("mine"))
        await store.start("mine")
        await store.finish("mine", JobState.failed, error="E")
        await store.enqueue(make_job("waiting", registered=True))
        for job_id in ("ok", "mine", "waiting", "nope"):
            assert await store.requeue(job_id) is False, job_id
        assert (await _status(store, "ok")).state is JobState.succeeded
        assert (await _status(store, "mine")).state is JobState.failed

    async def test_requeue_keeps_a_unique_key_to_one_job(self, store: DurableStore) -> None:
        """A failed job whose key another job holds now stays failed, and
        says why; once the key is free, it runs again."""
        await self._ended(store, "old", JobState.failed, unique="report")
        assert await store.enqueue(make_job("new", registered=True, unique="report")) == "new"
        with pytest.raises(ValueError, match="unique key 'report' is held"):
            await store.requeue("old")
        assert (await _status(store, "old")).state is JobState.failed
        await store.cancel("new")
        assert await store.requeue("old") is True

    async def test_delete_takes_only_jobs_that_ended(self, store: DurableStore) -> None:
        await self._ended(store, "done", JobState.succeeded)
        await store.enqueue(make_job("queued", registered=True))
        assert await store.delete(["done", "queued", "nope"]) == 1
        assert await store.get("done") is None
        assert await store.get("queued") is not None
        assert await store.delete([]) == 0

    async def test_purge_takes_old_jobs_of_the_states_named(self, store: DurableStore) -> None:
        await self._ended(store, "ok", JobState.succeeded)
        await self._ended(store, "bad", JobState.failed)
        await store.enqueue(make_job("queued", registered=True))
        assert await store.purge(frozenset({JobState.succeeded}), older_than=3600) == 0
        assert await store.purge(frozenset({JobState.succeeded}), older_than=0) == 1
        assert await store.get("ok") is None
        assert await store.get("bad") is not None
        assert await store.purge(frozenset(JobState), older_than=0) == 1  # queued: never
        assert [s.id for s in await store.list_jobs(JobQuery())] == ["queued"]

    async def test_heartbeats_list_the_workers(
        self, store: DurableStore, make_store: Callable[[], Awaitable[DurableStore]]
    ) -> None:
        """Each worker's heartbeat is its row: what it takes and runs, and
        when it was last seen; one that leaves is no longer listed."""
        other = await make_store()
        await store.heartbeat(queues=frozenset({"video", "mail"}), concurrency=4, running=1)
        await other.heartbeat(queues=None, concurrency=10, running=0)
        await store.heartbeat(queues=frozenset({"video", "mail"}), concurrency=4, running=3)
        workers = {w.id: w for w in await other.workers()}
        assert len(workers) == 2
        mine = [w for w in workers.values() if w.queues is not None]
        assert len(mine) == 1
        (worker,) = mine
        assert (worker.queues, worker.concurrency, worker.running, worker.alive) == (
            ("mail", "video"), 4, 3, True,
        )  # fmt: skip
        assert worker.pid == os.getpid()
        assert worker.started_at <= worker.last_seen
        await store.leave()
        assert [w.queues for w in await other.workers()] == [None]
