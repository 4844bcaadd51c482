"""The runner's life cycle, its queue, its limits, and what it refuses."""

from __future__ import annotations

import asyncio
import contextvars
import math
import re
from datetime import UTC, datetime
from typing import Any

import pytest

import asyncjob
from asyncjob.stores import MemoryStore

from .conftest import TIMEOUT, RunnerFactory


async def noop() -> None:
    """A job that does nothing."""


async def test_context_manager_starts_and_stops() -> None:
    """``async with`` starts the runner and stops it on the way out."""
    runner = asyncjob.Runner()
    assert not runner.running
    async with runner as entered:
        assert entered is runner
        assert entered.running
        job_id = await runner.perform(noop)
        await runner.wait(job_id, timeout=TIMEOUT)
    assert not runner.running


async def test_perform_returns_before_the_job_runs(runner: asyncjob.Runner) -> None:
    """perform() only records the job: it never waits for it to start."""
    started = asyncio.Event()

    async def job() -> None:
        started.set()

    job_id = await runner.perform(job)
    assert isinstance(job_id, str)
    assert not started.is_set()
    assert (await runner.status(job_id)).state is asyncjob.JobState.queued
    await runner.wait(job_id, timeout=TIMEOUT)
    assert started.is_set()


async def test_ids_are_unique_and_unguessable(runner: asyncjob.Runner) -> None:
    """Job ids are 128 random bits: fine to show in a URL."""
    ids = {await runner.perform(noop) for _ in range(200)}
    assert len(ids) == 200
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    await runner.join(TIMEOUT)


async def test_a_runner_starts_once() -> None:
    """A second start(), running or stopped, is refused with a clear error."""
    runner = asyncjob.Runner()
    await runner.start()
    with pytest.raises(RuntimeError, match="starts once"):
        await runner.start()
    await runner.stop()
    with pytest.raises(RuntimeError, match="create a new Runner"):
        await runner.start()


async def test_stop_is_idempotent_and_works_unstarted() -> None:
    """stop() twice, or on a runner never started, does no harm."""
    never = asyncjob.Runner()
    await never.stop()
    runner = asyncjob.Runner()
    await runner.start()
    await asyncio.gather(runner.stop(), runner.stop())
    await runner.stop()


@pytest.mark.parametrize("when", ["before start", "after stop"])
async def test_perform_outside_the_running_window(when: str) -> None:
    """perform() refuses jobs before start() and after stop(), saying why."""
    runner = asyncjob.Runner()
    if when == "after stop":
        await runner.start()
        await runner.stop()
    with pytest.raises(asyncjob.RunnerNotRunning, match="takes no jobs") as info:
        await runner.perform(noop)
    assert isinstance(info.value, RuntimeError)


async def test_jobs_start_in_fifo_order(make_runner: RunnerFactory) -> None:
    """With one slot, jobs run in the order they were performed."""
    runner = await make_runner(concurrency=1)
    seen: list[int] = []

    async def job(i: int) -> None:
        seen.append(i)

    for i in range(50):
        await runner.perform(job, i)
    await runner.join(TIMEOUT)
    assert seen == list(range(50))


@pytest.mark.parametrize("concurrency", [1, 3, 8])
async def test_concurrency_is_reached_and_never_exceeded(
    make_runner: RunnerFactory, concurrency: int
) -> None:
    """At most ``concurrency`` jobs run at once, and that many do."""
    runner = await make_runner(concurrency=concurrency)
    running = peak = 0
    gate = asyncio.Event()
    full = asyncio.Event()

    async def job() -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        if running == concurrency:
            full.set()
        await gate.wait()
        for _ in range(3):
            await asyncio.sleep(0)  # interleave with the others
        running -= 1

    for _ in range(concurrency * 4):
        await runner.perform(job)
    async with asyncio.timeout(TIMEOUT):
        await full.wait()
    gate.set()
    await runner.join(TIMEOUT)
    assert peak == concurrency


async def test_a_failing_job_never_stops_the_runner(
    runner: asyncjob.Runner, caplog: pytest.LogCaptureFixture
) -> None:
    """The failure is kept and logged with the job id; the next job runs."""

    async def bad() -> None:
        raise ValueError("bad input")

    failed = await runner.perform(bad)
    ok = await runner.perform(asyncio.sleep, 0, "fine")
    assert await runner.wait(ok, timeout=TIMEOUT) == "fine"
    with pytest.raises(asyncjob.JobFailed, match="ValueError: bad input") as info:
        await runner.wait(failed, timeout=TIMEOUT)
    assert info.value.job_id == failed
    status = await runner.status(failed)
    assert status.state is asyncjob.JobState.failed
    assert status.error == "ValueError: bad input"
    assert status.traceback is not None
    assert 'raise ValueError("bad input")' in status.traceback
    assert info.value.traceback == status.traceback
    (record,) = [r for r in caplog.records if r.name == "asyncjob"]
    assert failed in record.getMessage()
    assert record.exc_info is not None


async def test_join_waits_for_everything(runner: asyncjob.Runner) -> None:
    """join() returns once nothing is queued or running."""
    done: list[int] = []

    async def job(i: int) -> None:
        await asyncio.sleep(0)
        done.append(i)

    for i in range(30):
        await runner.perform(job, i)
    await runner.join(TIMEOUT)
    assert sorted(done) == list(range(30))
    await runner.join(TIMEOUT)  # idle already: returns at once


async def test_join_times_out(runner: asyncjob.Runner) -> None:
    """join(timeout) raises TimeoutError while a job is still running."""
    gate = asyncio.Event()
    job_id = await runner.perform(gate.wait)
    with pytest.raises(TimeoutError):
        await runner.join(timeout=0.05)
    gate.set()
    await runner.wait(job_id, timeout=TIMEOUT)


async def test_stop_cancels_queued_jobs_and_lets_running_ones_finish() -> None:
    """At stop, queued jobs end cancelled; a running job finishes in its grace."""
    runner = asyncjob.Runner(concurrency=1, grace_period=TIMEOUT)
    await runner.start()
    started = asyncio.Event()
    release = asyncio.Event()

    async def first() -> str:
        started.set()
        await release.wait()
        return "finished"

    first_id = await runner.perform(first)
    queued = [await runner.perform(noop) for _ in range(3)]
    async with asyncio.timeout(TIMEOUT):
        await started.wait()
    stopping = asyncio.create_task(runner.stop())
    release.set()
    async with asyncio.timeout(TIMEOUT):
        await stopping
    assert (await runner.status(first_id)).result == "finished"
    for job_id in queued:
        assert (await runner.status(job_id)).state is asyncjob.JobState.cancelled


async def test_stop_cancels_jobs_that_outlive_the_grace_period() -> None:
    """After grace_period a coroutine job is cancelled, and may clean up."""
    runner = asyncjob.Runner(grace_period=0.05)
    await runner.start()
    started = asyncio.Event()
    cleaned = asyncio.Event()

    async def forever() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            cleaned.set()

    job_id = await runner.perform(forever)
    async with asyncio.timeout(TIMEOUT):
        await started.wait()
        await runner.stop()
    assert cleaned.is_set()
    status = await runner.status(job_id)
    assert status.state is asyncjob.JobState.cancelled


async def test_stop_does_not_wait_for_a_sync_job_that_never_reports() -> None:
    """A thread cannot be killed: stop() requests its job's cancel and
    returns; the job, whose code still runs, is not said to be cancelled."""
    import threading

    runner = asyncjob.Runner(grace_period=0.05)
    await runner.start()
    started = threading.Event()
    release = threading.Event()

    def stubborn() -> None:
        started.set()
        release.wait(TIMEOUT)

    job_id = await runner.perform(stubborn)
    assert await asyncio.to_thread(started.wait, TIMEOUT)
    async with asyncio.timeout(TIMEOUT):
        await runner.stop()
    status = await runner.status(job_id)
    assert (status.state, status.cancel_requested) == (asyncjob.JobState.running, True)
    release.set()


async def test_jobs_do_not_leak_context_variables(make_runner: RunnerFactory) -> None:
    """Each job starts from the context the runner started in."""
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="clean")
    var.set("at start")
    runner = await make_runner(concurrency=1)
    var.set("after start")
    seen: list[str] = []

    async def dirty() -> None:
        seen.append(var.get())
        var.set("dirty")

    for _ in range(3):
        await runner.perform(dirty)
    await runner.join(TIMEOUT)
    assert seen == ["at start"] * 3


async def test_finished_jobs_are_forgotten_past_the_bounds(make_runner: RunnerFactory) -> None:
    """Memory stays bounded: past max_finished, the oldest finished jobs go."""
    store = MemoryStore(max_finished=10)
    runner = await make_runner(store, concurrency=4)
    ids = [await runner.perform(noop) for _ in range(500)]
    await runner.join(TIMEOUT)
    assert len(store._records) == 10
    assert (await runner.status(ids[-1])).state is asyncjob.JobState.succeeded
    with pytest.raises(asyncjob.JobNotFound):
        await runner.status(ids[0])
    assert await runner.get_progress(ids[0]) is None
    assert runner._engine.size <= 4
    assert runner._engine.running == 0


async def test_finished_jobs_are_forgotten_after_keep_finished(
    make_runner: RunnerFactory,
) -> None:
    """keep_finished=0 forgets a job the moment it ends."""
    runner = await make_runner(MemoryStore(keep_finished=0))
    job_id = await runner.perform(noop)
    await runner.join(TIMEOUT)
    with pytest.raises(asyncjob.JobNotFound):
        await runner.wait(job_id, timeout=TIMEOUT)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"concurrency": 0}, ValueError, "concurrency must be at least 1"),
        ({"concurrency": -3}, ValueError, "concurrency must be at least 1"),
        ({"concurrency": "10"}, TypeError, "concurrency must be an int"),
        ({"concurrency": True}, TypeError, "concurrency must be an int"),
        ({"concurrency": 2.5}, TypeError, "concurrency must be an int"),
        ({"threads": 0}, ValueError, "threads must be at least 1"),
        ({"grace_period": -1}, ValueError, "grace_period must be a finite number of seconds >= 0"),
        ({"grace_period": math.nan}, ValueError, "grace_period must be a finite number"),
        ({"grace_period": math.inf}, ValueError, "grace_period must be a finite number"),
        ({"grace_period": "1"}, TypeError, "grace_period must be a number"),
        ({"store": "nowhere"}, ValueError, "unknown store 'nowhere'"),
        ({"store": 42}, TypeError, "store must be"),
    ],
)
def test_bad_options_are_refused_at_construction(
    options: dict[str, object], error: type[Exception], message: str
) -> None:
    """Each bad option raises at Runner(...), naming the option."""
    with pytest.raises(error, match=message):
        asyncjob.Runner(**options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"keep_finished": -1}, "keep_finished"),
        ({"max_finished": -1}, "max_finished"),
        ({"watch_backlog": 0}, "watch_backlog"),
    ],
)
def test_bad_memory_store_options(options: dict[str, float], message: str) -> None:
    """MemoryStore refuses out-of-range bounds, naming the option."""
    with pytest.raises(ValueError, match=message):
        MemoryStore(**options)  # type: ignore[arg-type]


def test_threads_default_to_concurrency_capped_at_40() -> None:
    """The thread pool follows concurrency, up to anyio's and Starlette's 40."""
    assert asyncjob.Runner(concurrency=4).options.threads == 4
    assert asyncjob.Runner(concurrency=500).options.threads == 40
    assert asyncjob.Runner(concurrency=500, threads=100).options.threads == 100


@pytest.mark.parametrize("thing", [None, 42, "noop", object()])
async def test_perform_refuses_what_cannot_be_called(
    runner: asyncjob.Runner, thing: object
) -> None:
    """A non-callable is a TypeError at perform(), and nothing is queued."""
    with pytest.raises(TypeError, match="needs a callable"):
        await runner.perform(thing)  # type: ignore[arg-type]
    assert runner.store._records == {}  # type: ignore[attr-defined]


async def test_unknown_ids(runner: asyncjob.Runner) -> None:
    """An unknown id: JobNotFound (a LookupError) from status and wait,
    None from get_progress, False from cancel."""
    with pytest.raises(asyncjob.JobNotFound, match="no job with id 'nope'") as info:
        await runner.status("nope")
    assert isinstance(info.value, LookupError)
    with pytest.raises(asyncjob.JobNotFound):
        await runner.wait("nope", timeout=TIMEOUT)
    assert await runner.get_progress("nope") is None
    assert await runner.cancel("nope") is False


async def test_wait_times_out_and_the_job_goes_on(runner: asyncjob.Runner) -> None:
    """wait(timeout) raises TimeoutError without touching the job."""
    gate = asyncio.Event()
    job_id = await runner.perform(gate.wait)
    with pytest.raises(TimeoutError):
        await runner.wait(job_id, timeout=0.05)
    assert (await runner.status(job_id)).state is asyncjob.JobState.running
    gate.set()
    assert await runner.wait(job_id, timeout=TIMEOUT) is True


async def test_wait_gives_up_saying_which_job_and_why(make_runner: RunnerFactory) -> None:
    """The TimeoutError of wait() names the job, its state, and what it
    waits for."""
    runner = await make_runner(concurrency=1)
    gate = asyncio.Event()
    await runner.perform(gate.wait)
    queued = await runner.perform(noop)
    with pytest.raises(TimeoutError) as info:
        await runner.wait(queued, timeout=0.05)
    assert str(info.value) == (
        f"job {queued} has not ended within 0.05 s: it is queued, waiting for one "
        "of this runner's 1 slots"
    )
    gate.set()


async def test_status_timestamps(runner: asyncjob.Runner) -> None:
    """Timestamps are aware UTC datetimes, in order."""
    job_id = await runner.perform(noop)
    await runner.wait(job_id, timeout=TIMEOUT)
    status = await runner.status(job_id)
    assert status.enqueued_at is not None
    assert status.started_at is not None
    assert status.finished_at is not None
    assert status.enqueued_at.tzinfo is not None
    assert status.enqueued_at <= status.started_at <= status.finished_at
    assert status.name == "tests.test_runner.noop"
    assert status.is_final


async def test_jobs_that_never_await_do_not_starve_the_loop(
    make_runner: RunnerFactory,
) -> None:
    """Other tasks get the loop while a full queue of no-await jobs drains."""
    runner = await make_runner(concurrency=1)
    ids = [await runner.perform(noop) for _ in range(5000)]
    await asyncio.sleep(0)  # one turn of the loop for this task
    assert (await runner.status(ids[-1])).state is asyncjob.JobState.queued
    await runner.join(TIMEOUT)


@pytest.mark.parametrize(
    ("filters", "error", "message"),
    [
        ({"state": "lost"}, ValueError, "unknown state in 'lost'"),
        ({"limit": 0}, ValueError, "limit must be from 1 to 1000"),
        ({"limit": True}, TypeError, "limit must be an int"),
        ({"name": 3}, TypeError, "name must be a string"),
        ({"before": 5}, TypeError, "before must be a job id"),
        ({"since": datetime(2026, 1, 1)}, ValueError, "since must be an aware datetime"),
        ({"until": "yesterday"}, TypeError, "until must be a datetime"),
        ({"before": "a", "before_at": 5.0}, TypeError, "before_at must be a datetime"),
        (
            {"before": "a", "before_at": datetime(2026, 1, 1)},
            ValueError,
            "before_at must be an aware datetime",
        ),
        ({"before_at": datetime(2026, 1, 1, tzinfo=UTC)}, ValueError, "before_at goes with before"),
    ],
)
async def test_jobs_refuses_bad_filters(
    runner: asyncjob.Runner, filters: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=re.escape(message)):
        await runner.jobs(**filters)


async def test_jobs_between_two_times(runner: asyncjob.Runner) -> None:
    """``since`` and ``until`` bound when the jobs listed were performed."""
    first = await runner.perform(asyncio.sleep, 0)
    await runner.wait(first, timeout=TIMEOUT)
    second = await runner.perform(asyncio.sleep, 0)
    await runner.wait(second, timeout=TIMEOUT)
    one, two = [(await runner.status(job_id)).enqueued_at for job_id in (first, second)]
    assert one is not None
    assert two is not None
    between = one + (two - one) / 2
    assert [s.id for s in await runner.jobs(since=between)] == [second]
    assert [s.id for s in await runner.jobs(until=between)] == [first]
    # A job's own time, as its status gives it, is "since" it.
    assert [s.id for s in await runner.jobs(since=one, until=between)] == [first]
    assert [s.id for s in await runner.jobs(since=two)] == [second]
