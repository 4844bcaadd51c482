"""Claiming ahead of the free slots: as much as short jobs need, never
holding a job a busy worker cannot start."""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from typing import Any

import pytest

import asyncjob
from asyncjob import JobState
from asyncjob._engine.engine import Engine
from asyncjob._engine.sessions import Sessions
from asyncjob._worker.prefetch import Prefetch, Prefetched
from asyncjob.stores import Claimed, Job, MemoryStore
from asyncjob.stores.sql import SQLStore

from . import worker_jobs
from .conftest import TIMEOUT, Database, RunnerFactory, edit_by_hand


def test_nothing_is_claimed_ahead_at_first() -> None:
    """Before any claim has been measured, a worker claims for its free slots only."""
    assert Prefetch(50).size() == 0


def test_short_jobs_are_claimed_ahead_by_what_one_round_trip_finishes() -> None:
    """10,000 jobs a second and claims of 2 ms: about 20 claimed ahead, never
    more than the concurrency."""
    ahead = Prefetch(50)
    for second in range(30):
        ahead.measure(0.002, done=10_000 * second, now=float(second))
    assert 18 <= ahead.size() <= 20
    assert Prefetch(5, rate=10_000, round_trip=0.002).size() == 5


def test_long_jobs_are_not_claimed_ahead() -> None:
    """Jobs of a second each, on 50 slots: nothing is claimed ahead."""
    ahead = Prefetch(50)
    for second in range(30):
        ahead.measure(0.002, done=50 * second, now=float(second))
    assert ahead.size() == 0


def test_after_a_hand_back_nothing_is_claimed_ahead() -> None:
    """Jobs claimed ahead waited too long: stop claiming ahead."""
    ahead = Prefetch(50, rate=10_000, round_trip=0.002)
    ahead.handed_back()
    assert ahead.size() == 0


def _job(n: int) -> Job:
    return Job(f"j{n}", "noop", asyncio.sleep, (0,), {}, True, 0.0)


async def test_waiting_jobs_go_to_free_slots_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Prefetched jobs are given to the engine as slots are free, in order; those
    that waited too long are taken for handing back."""
    engine = Engine(MemoryStore(), concurrency=2, threads=2, scope=Sessions(None, None))
    waiting = Prefetched()
    for n in range(3):
        waiting.add(_job(n))
    waiting.hand_over(engine)
    assert (len(waiting), engine.free) == (1, 0)
    assert waiting.next_stale_in() is not None
    monkeypatch.setattr("asyncjob._worker.prefetch.HAND_BACK_AFTER", 0.0)
    assert [job.id for job in waiting.stale()] == ["j2"]
    assert waiting.next_stale_in() is None
    waiting.put_back([_job(3), _job(4)])
    dropped = waiting.discard("j3")
    assert (dropped and dropped.id, waiting.discard("j9")) == ("j3", None)
    assert [job.id for job in waiting.take_all()] == ["j4"]
    engine.take_queued()
    await engine.drain(TIMEOUT)


@pytest.fixture
def claims_ahead(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers started in the test claim one job ahead at once (as after a
    run of short jobs), and hand back within 0.2 s what waited."""
    monkeypatch.setattr(
        "asyncjob._worker.producer.Prefetch",
        functools.partial(Prefetch, rate=1_000.0, round_trip=0.01),
    )
    monkeypatch.setattr("asyncjob._worker.prefetch.HAND_BACK_AFTER", 0.2)


async def queued_pair(make_runner: RunnerFactory, url: str) -> tuple[str, str]:
    """A long job, then a short one, performed before any worker runs."""
    producer = await make_runner(SQLStore(url, poll_interval=0.05), producer_only=True)
    worker_jobs.GATES["long"] = asyncio.Event()
    long = await producer.perform(worker_jobs.wait_for_gate, "long")
    short = await producer.perform(worker_jobs.whoami, 1)
    return long, short


async def until_state(runner: asyncjob.Runner, job_id: str, state: JobState) -> None:
    async with asyncio.timeout(TIMEOUT):
        async for status in runner.watch(job_id):
            if status.state is state:
                return


@pytest.mark.usefixtures("claims_ahead")
async def test_a_job_claimed_ahead_of_a_busy_worker_is_handed_back(
    make_runner: RunnerFactory, database: Database
) -> None:
    """A worker with one slot claims a long job and one ahead; the long one
    holds the slot, so the other is handed back, and an idle worker runs it
    while the long one still runs. Handed back, it used no attempt."""
    long, short = await queued_pair(make_runner, database.async_url)
    busy = await make_runner(SQLStore(database.async_url, poll_interval=0.05), concurrency=1)
    await until_state(busy, short, JobState.running)  # claimed ahead, waiting here
    idle = await make_runner(SQLStore(database.async_url, poll_interval=0.05), concurrency=1)
    assert (await idle.wait(short, timeout=TIMEOUT))["n"] == 1
    assert (await idle.status(long)).state is JobState.running
    assert (await idle.status(short)).attempts == 1
    worker_jobs.GATES["long"].set()
    assert await busy.wait(long, timeout=TIMEOUT) == "long"


@pytest.mark.usefixtures("claims_ahead")
async def test_jobs_claimed_ahead_are_handed_back_at_a_stop(
    make_runner: RunnerFactory, database: Database
) -> None:
    """A worker that stops hands back the jobs it claimed ahead, with the
    jobs it could not finish: queued again, no attempt used."""
    long, short = await queued_pair(make_runner, database.async_url)
    worker = asyncjob.Runner(
        SQLStore(database.async_url, poll_interval=0.05), concurrency=1, grace_period=0.05
    )
    await worker.start()
    try:
        await until_state(worker, short, JobState.running)
    finally:
        await worker.stop()
    reader = await make_runner(SQLStore(database.async_url), producer_only=True)
    for job_id in (long, short):
        status = await reader.status(job_id)
        assert (status.state, status.attempts) == (JobState.queued, 0)


class Heard(logging.Handler):
    """Sets an event when the ``asyncjob`` logger says ``words``."""

    def __init__(self, words: str) -> None:
        super().__init__()
        self.words = words
        self.event = asyncio.Event()
        self.loop = asyncio.get_running_loop()

    def emit(self, record: logging.LogRecord) -> None:
        if self.words in record.getMessage():
            self.loop.call_soon_threadsafe(self.event.set)


@pytest.mark.usefixtures("claims_ahead")
async def test_a_job_claimed_ahead_and_cancelled_never_starts(
    make_runner: RunnerFactory, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled from another process while it waits for a slot, a job
    claimed ahead is dropped at the worker's next renewal: it never runs."""
    monkeypatch.setattr("asyncjob._worker.prefetch.HAND_BACK_AFTER", 60.0)  # no hand-back here
    url = database.async_url
    producer = await make_runner(SQLStore(url, poll_interval=0.05), producer_only=True)
    worker_jobs.GATES["long"] = asyncio.Event()
    worker_jobs.RAN.clear()
    long = await producer.perform(worker_jobs.wait_for_gate, "long")
    cancelled = await producer.perform(worker_jobs.record, 1)
    heard = Heard("no longer held here: dropping it")
    logging.getLogger("asyncjob").addHandler(heard)
    try:
        busy = await make_runner(SQLStore(url, poll_interval=0.05, lease=0.6), concurrency=1)
        await until_state(busy, cancelled, JobState.running)  # claimed ahead, waiting
        assert await producer.cancel(cancelled)
        async with asyncio.timeout(TIMEOUT):
            await heard.event.wait()
    finally:
        logging.getLogger("asyncjob").removeHandler(heard)
    worker_jobs.GATES["long"].set()
    assert await busy.wait(long, timeout=TIMEOUT) == "long"
    after = await producer.perform(worker_jobs.record, 2)
    assert await busy.wait(after, timeout=TIMEOUT) == 2
    assert worker_jobs.RAN == [2]
    assert (await busy.status(cancelled)).state is JobState.cancelled


class SlowAnswers(SQLStore):
    """A store whose claims take their jobs, then answer late (a slow
    network, a busy server): the worker may stop in between."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.taken = asyncio.Event()
        self.answer = asyncio.Event()

    async def claim(self, *args: Any, **kwargs: Any) -> list[Claimed]:
        claimed = await super().claim(*args, **kwargs)
        if claimed:
            self.taken.set()
            await self.answer.wait()
        return claimed


async def test_a_claim_answered_as_the_worker_stops_is_handed_back(
    make_runner: RunnerFactory, database: Database
) -> None:
    """The database took the job, the answer had not come, the worker
    stopped: the job is handed back (queued, no attempt used), not left
    running, held by nobody, until its lease runs out."""
    producer = await make_runner(SQLStore(database.async_url), producer_only=True)
    job_id = await producer.perform(worker_jobs.whoami, 1)
    store = SlowAnswers(database.async_url)
    worker = asyncjob.Runner(store)
    await worker.start()
    try:
        async with asyncio.timeout(TIMEOUT):
            await store.taken.wait()
        claiming = worker._producer
        assert claiming is not None
        stop = claiming.stop

        def stop_then_answer() -> None:  # the answer comes once the stop began
            stop()
            store.answer.set()

        claiming.stop = stop_then_answer  # type: ignore[method-assign]
    finally:
        async with asyncio.timeout(TIMEOUT):
            await worker.stop()
    status = await producer.status(job_id)
    assert (status.state, status.attempts) == (JobState.queued, 0)


async def test_a_job_claimed_again_while_it_runs_here_is_handed_back(
    make_runner: RunnerFactory, database: Database
) -> None:
    """The database gives out again a job that runs here (its lease taken
    back while this worker was late, say): the worker hands it back, never
    running it twice at once. Its run here ends it if the worker holds it
    again by then (claimed again, not handed back yet); else it runs again
    once this run has ended."""
    heard = Heard("claimed while they run here already, handed back")
    logging.getLogger("asyncjob").addHandler(heard)
    name = f"again-{uuid.uuid4().hex}"  # the jobs' module keeps its runs
    try:
        worker = await make_runner(SQLStore(database.async_url, poll_interval=0.05), concurrency=2)
        job_id = await worker.perform(worker_jobs.counts_its_runs, name)
        async with asyncio.timeout(TIMEOUT):
            await worker_jobs.STARTED.setdefault(name, asyncio.Event()).wait()
        await asyncio.to_thread(  # taken back, as recovery would after its lease ran out
            edit_by_hand,
            database.sync_url,
            "UPDATE asyncjob_jobs SET state = 'queued', locked_by = NULL,"
            f" lease_expires_at = NULL WHERE id = '{job_id}'",
        )
        async with asyncio.timeout(TIMEOUT):
            await heard.event.wait()
        worker_jobs.GATES[name].set()
        runs = await worker.wait(job_id, timeout=TIMEOUT)
    finally:
        logging.getLogger("asyncjob").removeHandler(heard)
    assert worker_jobs.RUNS[name] == [0, 1, runs]  # never two at once
    assert runs in (1, 2)
