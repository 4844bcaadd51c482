"""Cancellation: of queued jobs, running coroutine jobs, running sync jobs.

Cancellation is true when it is reported: a running job is ``cancelled``
(for status, wait and watch alike) only once its code has stopped; until
then it is ``running``, with its cancel requested, and holds its slot.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

import asyncjob
from asyncjob import JobState

from .conftest import TIMEOUT, RunnerFactory


async def _until_running(runner: asyncjob.Runner, job_id: str) -> None:
    async with asyncio.timeout(TIMEOUT):
        async for status in runner.watch(job_id):
            if status.state is JobState.running:
                return


async def test_a_cancelled_queued_job_never_starts(make_runner: RunnerFactory) -> None:
    """cancel() on a queued job: True, cancelled at once, its code never runs."""
    runner = await make_runner(concurrency=1)
    gate = asyncio.Event()
    ran: list[str] = []

    async def job() -> None:
        ran.append("ran")  # pragma: no cover - must never run

    blocker = await runner.perform(gate.wait)
    victim = await runner.perform(job)
    assert await runner.cancel(victim) is True
    assert (await runner.status(victim)).state is JobState.cancelled
    gate.set()
    await runner.join(TIMEOUT)
    assert ran == []
    assert (await runner.status(blocker)).state is JobState.succeeded
    with pytest.raises(asyncjob.JobCancelled, match=victim):
        await runner.wait(victim, timeout=TIMEOUT)


async def test_a_running_coroutine_job_gets_cancelled_error(runner: asyncjob.Runner) -> None:
    """It receives CancelledError at its await, may clean up, and ends cancelled."""
    cleaned = asyncio.Event()

    async def job() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cleaned.set()
            raise

    job_id = await runner.perform(job)
    await _until_running(runner, job_id)
    assert await runner.cancel(job_id) is True
    status = await runner.status(job_id)
    assert (status.state, status.cancel_requested) == (JobState.running, True)
    with pytest.raises(asyncjob.JobCancelled):
        await runner.wait(job_id, timeout=TIMEOUT)
    assert cleaned.is_set()
    status = await runner.status(job_id)
    assert (status.state, status.cancel_requested) == (JobState.cancelled, False)


async def test_wait_reports_a_cancel_once_the_cleanup_is_done(runner: asyncjob.Runner) -> None:
    """A coroutine job that takes its time to clean up is still running, its
    cancel requested, until it has; wait() and watch() tell cancelled only
    then, so that what follows them never races the job."""
    cleaning = asyncio.Event()
    finish_cleanup = asyncio.Event()
    cleaned: list[str] = []

    async def job() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cleaning.set()
            await finish_cleanup.wait()
            cleaned.append("done")
            raise

    job_id = await runner.perform(job)
    await _until_running(runner, job_id)
    watch = runner.watch(job_id)
    assert (await anext(watch)).cancel_requested is False
    waiting = asyncio.create_task(runner.wait(job_id, timeout=TIMEOUT))
    assert await runner.cancel(job_id) is True
    async with asyncio.timeout(TIMEOUT):
        await cleaning.wait()
        requested = await anext(watch)
    assert (requested.state, requested.cancel_requested) == (JobState.running, True)
    assert not waiting.done()
    finish_cleanup.set()
    with pytest.raises(asyncjob.JobCancelled):
        await waiting
    assert cleaned == ["done"]
    async with asyncio.timeout(TIMEOUT):
        assert [s.state async for s in watch] == [JobState.cancelled]


async def test_the_worker_is_clean_after_a_cancellation(make_runner: RunnerFactory) -> None:
    """The next job on the same worker is not hit by the old cancellation."""
    runner = await make_runner(concurrency=1)

    async def job() -> None:
        await asyncio.Event().wait()

    async def next_job() -> str:
        async with asyncio.timeout(TIMEOUT):
            await asyncio.sleep(0)
        task = asyncio.current_task()
        assert task is not None
        assert task.cancelling() == 0
        return "clean"

    first = await runner.perform(job)
    await _until_running(runner, first)
    await runner.cancel(first)
    second = await runner.perform(next_job)
    assert await runner.wait(second, timeout=TIMEOUT) == "clean"


async def test_a_job_that_swallows_cancellation_stays_cancelled(
    runner: asyncjob.Runner,
) -> None:
    """Its result is discarded: cancel() said True, so cancelled it is."""

    async def job() -> str:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            return "ignored the cancellation"
        return "unreachable"  # pragma: no cover

    job_id = await runner.perform(job)
    await _until_running(runner, job_id)
    assert await runner.cancel(job_id)
    await runner.join(TIMEOUT)
    status = await runner.status(job_id)
    assert status.state is JobState.cancelled
    assert status.result is None


async def test_a_running_sync_job_stops_at_its_next_report(runner: asyncjob.Runner) -> None:
    """cancel() returns at once; set_progress raises JobCancelled in the job."""
    reported = threading.Event()
    cancelled = threading.Event()
    seen: list[asyncjob.JobCancelled] = []

    def job() -> None:
        asyncjob.set_progress(1)
        reported.set()
        assert cancelled.wait(TIMEOUT)
        try:
            asyncjob.set_progress(2)
        except asyncjob.JobCancelled as exc:
            seen.append(exc)
            raise

    job_id = await runner.perform(job)
    assert await asyncio.to_thread(reported.wait, TIMEOUT)
    assert await runner.cancel(job_id) is True
    status = await runner.status(job_id)
    assert (status.state, status.cancel_requested) == (JobState.running, True)
    waiting = asyncio.create_task(runner.wait(job_id, timeout=TIMEOUT))
    await asyncio.sleep(0)  # one turn: the waiter waits, and has not returned
    assert not waiting.done()
    cancelled.set()
    with pytest.raises(asyncjob.JobCancelled):
        await waiting
    (exc,) = seen  # the job's code had stopped by the time wait() said so
    assert exc.job_id == job_id
    status = await runner.status(job_id)
    assert (status.state, status.progress) == (JobState.cancelled, 1)


async def test_a_sync_job_that_never_reports_runs_out_its_time(
    make_runner: RunnerFactory,
) -> None:
    """It holds its slot until it returns; its result is discarded."""
    runner = await make_runner(concurrency=1)
    started = threading.Event()
    release = threading.Event()

    def job() -> str:
        started.set()
        assert release.wait(TIMEOUT)
        return "late"

    job_id = await runner.perform(job)
    after = await runner.perform(asyncio.sleep, 0, "next")
    assert await asyncio.to_thread(started.wait, TIMEOUT)
    assert await runner.cancel(job_id)
    assert (await runner.status(after)).state is JobState.queued
    assert (await runner.status(job_id)).state is JobState.running
    release.set()
    assert await runner.wait(after, timeout=TIMEOUT) == "next"
    status = await runner.status(job_id)
    assert (status.state, status.result) == (JobState.cancelled, None)


async def test_cancel_a_finished_job(runner: asyncjob.Runner) -> None:
    """An ended job cannot be cancelled: False, and it keeps its state."""
    job_id = await runner.perform(asyncio.sleep, 0, "done")
    await runner.wait(job_id, timeout=TIMEOUT)
    assert await runner.cancel(job_id) is False
    assert (await runner.status(job_id)).state is JobState.succeeded


async def test_watchers_see_the_cancellation(runner: asyncjob.Runner) -> None:
    """A watcher sees the cancel requested, then the cancelled end, and its
    iteration ends."""
    job_id = await runner.perform(asyncio.Event().wait)
    await _until_running(runner, job_id)
    watch = runner.watch(job_id)
    assert (await anext(watch)).state is JobState.running
    await runner.cancel(job_id)
    seen = [(s.state, s.cancel_requested) async for s in watch]
    assert seen == [(JobState.running, True), (JobState.cancelled, False)]


@pytest.mark.parametrize("kind", ["coroutine", "sync"])
async def test_cancel_while_many_jobs_run(make_runner: RunnerFactory, kind: str) -> None:
    """Cancelling half of many running jobs leaves the other half to finish."""
    runner = await make_runner(concurrency=8)
    release_async = asyncio.Event()
    release_sync = threading.Event()

    async def coro_job(i: int) -> int:
        asyncjob.set_progress(0)
        await release_async.wait()
        return i

    def sync_job(i: int) -> int:
        asyncjob.set_progress(0)
        assert release_sync.wait(TIMEOUT)
        asyncjob.set_progress(1)
        return i

    job = coro_job if kind == "coroutine" else sync_job
    ids = [await runner.perform(job, i) for i in range(8)]
    for job_id in ids:
        await _until_running(runner, job_id)
    for job_id in ids[::2]:
        assert await runner.cancel(job_id)
    release_async.set()
    release_sync.set()
    await runner.join(TIMEOUT)
    for i, job_id in enumerate(ids):
        status = await runner.status(job_id)
        expected = JobState.cancelled if i % 2 == 0 else JobState.succeeded
        assert status.state is expected
        assert status.result == (None if i % 2 == 0 else i)


def test_a_sync_job_past_its_grace_period_does_not_hold_the_process() -> None:
    """A process whose runner stopped while a sync job that never reports
    progress still runs exits: the job's thread does not keep it alive."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        """
        import asyncio, threading
        import asyncjob

        started = threading.Event()

        def stuck():
            started.set()
            threading.Event().wait()  # never reports progress, never returns

        async def main():
            async with asyncjob.Runner(grace_period=0.01) as runner:
                await runner.perform(stuck)
                assert await asyncio.to_thread(started.wait, 30)
            print("stopped", flush=True)

        asyncio.run(main())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "stopped\n"
