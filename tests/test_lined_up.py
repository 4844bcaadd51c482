"""Sync jobs lined up for the threads (see ThreadPool): while every worker is
busy, queued sync jobs wait in a line that a thread takes the next job from
itself when its job succeeds. These tests hold each promise the runner makes
about queued jobs against a job in that line: it is still queued (cancel,
stop, a job of a higher priority), it starts in order and on any free
thread, and once a thread took it, it is running, whatever the loop has
heard so far.

Each test first checks that the jobs are in fact lined up: without that
they would pass through the ordinary queue and prove nothing.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Callable
from typing import Any

import pytest

import asyncjob
from asyncjob import JobCancelled, JobState, Runner
from asyncjob.stores import MemoryStore

from . import retry_jobs
from .conftest import TIMEOUT


def blocker(started: threading.Event, release: threading.Event) -> Callable[[], None]:
    def block() -> None:
        started.set()
        assert release.wait(TIMEOUT)

    return block


def lined_up(runner: Runner) -> set[str]:
    return set(runner._engine._lined_up)


async def until_set(event: threading.Event) -> None:
    assert await asyncio.to_thread(event.wait, TIMEOUT)


async def lined_up_behind_a_blocked_job(
    runner: Runner, *calls: tuple[Any, ...]
) -> tuple[threading.Event, list[str]]:
    """A job that blocks, then ``calls`` (each a callable and its
    arguments) lined up behind it (concurrency 1); returns the event that
    releases the first, and the ids of the others."""
    started, release = threading.Event(), threading.Event()
    await runner.perform(blocker(started, release))
    ids = [await runner.perform(*call) for call in calls]
    await until_set(started)
    assert lined_up(runner) == set(ids)
    return release, ids


async def test_a_lined_up_job_cancelled_never_runs() -> None:
    ran: list[str] = []
    async with Runner(concurrency=1) as runner:
        release, (b, c) = await lined_up_behind_a_blocked_job(
            runner, (ran.append, "b"), (ran.append, "c")
        )
        assert await runner.cancel(b)
        assert (await runner.status(b)).state is JobState.cancelled  # at once
        release.set()
        await runner.wait(c, timeout=TIMEOUT)
        with pytest.raises(JobCancelled):
            await runner.wait(b, timeout=TIMEOUT)
    assert ran == ["c"]


async def test_a_job_a_thread_took_is_running_before_the_loop_hears_of_it() -> None:
    """The thread ends A and takes B while the loop is held up: a cancel
    of B then finds it running (its code has started), not queued, and it
    is cancelled only once its code has stopped."""
    b_started, release_b = threading.Event(), threading.Event()

    def b_job() -> None:
        b_started.set()
        assert release_b.wait(TIMEOUT)
        asyncjob.set_progress(1)  # raises JobCancelled

    async with Runner(concurrency=1) as runner:
        release_a, (b,) = await lined_up_behind_a_blocked_job(runner, (b_job,))
        release_a.set()
        # Block the loop (not awaiting) until B's code runs: the outcome of
        # A and the start of B wait in the batch the loop has not drained.
        assert b_started.wait(TIMEOUT)
        assert await runner.cancel(b)
        status = await runner.status(b)
        assert status.state is JobState.running
        assert status.cancel_requested
        release_b.set()
        with pytest.raises(JobCancelled):
            await runner.wait(b, timeout=TIMEOUT)


async def test_progress_reported_at_once_by_a_lined_up_job_is_kept() -> None:
    """Its start is recorded before anything it reports, though the loop
    learns of both in one batch."""
    b_reported, release_b = threading.Event(), threading.Event()

    def b_job() -> str:
        asyncjob.set_progress(50, "early")
        b_reported.set()
        assert release_b.wait(TIMEOUT)
        return "done"

    async with Runner(concurrency=1) as runner:
        release_a, (b,) = await lined_up_behind_a_blocked_job(runner, (b_job,))
        release_a.set()
        assert b_reported.wait(TIMEOUT)  # the loop is held up meanwhile
        async with asyncio.timeout(TIMEOUT):
            async for status in runner.watch(b):
                if status.progress == 50:
                    assert status.data == "early"
                    break
        release_b.set()
        assert await runner.wait(b, timeout=TIMEOUT) == "done"


def reports_then_returns(n: int) -> int:
    asyncjob.set_progress(50, "half")
    asyncjob.set_progress(100, "all")
    return n


async def test_the_last_progress_of_lined_up_jobs_stays_in_their_status() -> None:
    """A lined-up job's end is recorded in a batch with others, which came
    before its last report's turn on the loop: the report found it ended,
    and was dropped (9 jobs in 10 of these ended with no progress)."""
    async with Runner(concurrency=4) as runner:
        ids = [await runner.perform(reports_then_returns, n) for n in range(500)]
        await runner.join(TIMEOUT)
        statuses = [await runner.status(job_id) for job_id in ids]
    assert {(s.state, s.progress, s.data) for s in statuses} == {(JobState.succeeded, 100, "all")}


async def test_a_job_of_a_higher_priority_goes_before_lined_up_ones() -> None:
    ran: list[str] = []
    async with Runner(concurrency=1) as runner:
        release, (_, c) = await lined_up_behind_a_blocked_job(
            runner, (ran.append, "b"), (ran.append, "c")
        )
        await runner.perform(asyncjob.using(ran.append, priority=10), "urgent")
        assert lined_up(runner) == set()
        release.set()
        await runner.wait(c, timeout=TIMEOUT)
    assert ran == ["urgent", "b", "c"]


async def test_lined_up_jobs_do_not_wait_behind_a_long_job() -> None:
    """Any thread that ends a job takes the oldest lined-up job: those
    lined up while a long job runs start on the other thread."""
    ran: list[str] = []
    a_started, release_a = threading.Event(), threading.Event()
    x_started, release_x = threading.Event(), threading.Event()
    async with Runner(concurrency=2) as runner:
        a = await runner.perform(blocker(a_started, release_a))
        await runner.perform(blocker(x_started, release_x))
        b = await runner.perform(ran.append, "b")
        c = await runner.perform(ran.append, "c")
        await until_set(a_started)
        await until_set(x_started)
        assert lined_up(runner) == {b, c}
        release_x.set()
        await runner.wait(c, timeout=TIMEOUT)
        assert ran == ["b", "c"]
        assert (await runner.status(a)).state is JobState.running
        release_a.set()


async def test_a_stopping_runner_cancels_lined_up_jobs_as_queued_ones() -> None:
    ran: list[str] = []
    started, release = threading.Event(), threading.Event()
    runner = Runner(concurrency=1, grace_period=TIMEOUT)
    await runner.start()
    try:
        a = await runner.perform(blocker(started, release))
        b = await runner.perform(ran.append, "b")
        await until_set(started)
        assert lined_up(runner) == {b}
        stopping = asyncio.ensure_future(runner.stop())
        # The stop takes the queued jobs first, then gives A its grace period.
        with pytest.raises(JobCancelled):
            await runner.wait(b, timeout=TIMEOUT)
        release.set()
        await asyncio.wait_for(stopping, TIMEOUT)
    finally:
        release.set()
    assert ran == []
    assert a


@pytest.mark.parametrize("seed", range(3))
async def test_cancels_and_priorities_racing_the_threads(seed: int) -> None:
    """Many short sync jobs, lined up and taken by three threads while the
    loop cancels some and performs others ahead of them, and some fail.
    Whatever the interleaving: every job ends; a job that was cancelled
    while queued never ran; one that ran and was not cancelled succeeded or
    failed as its code did, once; and no more than three jobs' code ran at
    once."""
    rng = random.Random(seed)
    lock = threading.Lock()
    running = peak = 0
    ran: list[str] = []

    def work(label: str, spin: int) -> str:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        try:
            sum(range(spin))  # a little CPU: threads overlap with the loop
            asyncjob.set_progress(1)  # where a cancelled job learns of it
            with lock:
                ran.append(label)
            if label in failing:  # a failure ends its thread's run of jobs
                raise ValueError(label)
            return label
        finally:
            with lock:
                running -= 1

    failing = {f"j{n}" for n in range(300) if rng.random() < 0.1}
    cancelled_queued: set[str] = set()
    cancelled: set[str] = set()
    async with Runner(concurrency=3) as runner:
        ids: dict[str, str] = {}
        for n in range(300):
            label = f"j{n}"
            spec = asyncjob.using(work, priority=10) if rng.random() < 0.1 else work
            ids[label] = await runner.perform(spec, label, rng.randrange(2000))
            if n % 5 == 4:  # cancel one of the last few, queued, lined up or running
                victim = f"j{n - rng.randrange(5)}"
                if victim not in cancelled and await runner.cancel(ids[victim]):
                    cancelled.add(victim)
                    if (await runner.status(ids[victim])).state is JobState.cancelled:
                        cancelled_queued.add(victim)
            if n % 50 == 49:
                await asyncio.sleep(0)  # let the worker tasks line jobs up
        await runner.join(TIMEOUT)
        states = {label: (await runner.status(job_id)).state for label, job_id in ids.items()}
    assert peak <= 3
    assert not cancelled_queued & set(ran)
    assert len(ran) == len(set(ran))
    for label, state in states.items():
        if label in cancelled:
            assert state is JobState.cancelled, label
        else:
            assert state is (JobState.failed if label in failing else JobState.succeeded), label
            assert label in ran


@pytest.mark.parametrize("seed", range(3))
async def test_a_stop_racing_the_threads(seed: int) -> None:
    """A runner stopped while its threads go through lined-up jobs: each
    job either ran, once, and succeeded, or never ran and is cancelled."""
    rng = random.Random(seed)
    lock = threading.Lock()
    ran: list[str] = []

    def work(label: str, spin: int) -> None:
        sum(range(spin))
        with lock:
            ran.append(label)

    store = MemoryStore()
    runner = Runner(store, concurrency=3, grace_period=TIMEOUT)
    await runner.start()
    ids = {f"j{n}": await runner.perform(work, f"j{n}", rng.randrange(5000)) for n in range(200)}
    for _ in range(1 + rng.randrange(4)):
        await asyncio.sleep(0)  # let some run, and more be lined up
    assert lined_up(runner)
    await runner.stop()
    assert len(ran) == len(set(ran))
    for label, job_id in ids.items():
        status = await store.get(job_id)
        assert status is not None
        expected = JobState.succeeded if label in ran else JobState.cancelled
        assert status.state is expected, label


async def test_a_lined_up_job_that_fails_is_retried_by_its_own_policy() -> None:
    """The run's first job has no retries; the lined-up one fails once and
    is retried, by its own definition's policy, not the first job's."""
    key = f"lined-up-{random.random()}"
    async with Runner(concurrency=1) as runner:
        release, (flaky,) = await lined_up_behind_a_blocked_job(
            runner, (retry_jobs.flaky_sync, key, 1)
        )
        release.set()
        assert await runner.wait(flaky, timeout=TIMEOUT) == "ok on attempt 2"
        status = await runner.status(flaky)
        assert status.attempts == 2
        assert len(status.errors) == 1
