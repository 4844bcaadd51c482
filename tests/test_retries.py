"""Retries with backoff, and timeouts, of registered jobs, on every store."""

from __future__ import annotations

import uuid

import pytest

import asyncjob
from asyncjob import JobState
from asyncjob._core.registry import JobDefinition

from . import retry_jobs
from .conftest import TIMEOUT, RunnerFactory


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def runner_on(request: pytest.FixtureRequest, make_runner: RunnerFactory) -> asyncjob.Runner:
    """A runner on each kind of store."""
    store = (
        None
        if request.param == "memory"
        else request.getfixturevalue(f"{request.param}_db").async_url
    )
    made: asyncjob.Runner = await make_runner(store)
    return made


def key() -> str:
    """A fresh key for the jobs' run counters."""
    return uuid.uuid4().hex


@pytest.mark.parametrize("job", [retry_jobs.flaky, retry_jobs.flaky_sync])
async def test_a_failing_job_is_tried_again(runner_on: asyncjob.Runner, job: object) -> None:
    """Two failures, then success: three attempts, the errors kept in order."""
    job_id = await runner_on.perform(job, key(), 2)  # type: ignore[arg-type]
    assert await runner_on.wait(job_id, timeout=TIMEOUT) == "ok on attempt 3"
    status = await runner_on.status(job_id)
    assert (status.state, status.attempts) == (JobState.succeeded, 3)
    assert status.errors == (
        "ConnectionError: attempt 1 failed",
        "ConnectionError: attempt 2 failed",
    )


async def test_retries_run_out(runner_on: asyncjob.Runner) -> None:
    """After retries + 1 attempts the job fails with the last error."""
    job_id = await runner_on.perform(retry_jobs.flaky, key(), 5)
    with pytest.raises(asyncjob.JobFailed, match="attempt 3 failed"):
        await runner_on.wait(job_id, timeout=TIMEOUT)
    status = await runner_on.status(job_id)
    assert status.attempts == 3
    assert len(status.errors) == 2


async def test_a_coroutine_attempt_times_out(runner_on: asyncjob.Runner) -> None:
    """Past its timeout an attempt is cancelled and fails; the retry too."""
    k = key()
    job_id = await runner_on.perform(retry_jobs.hangs, k)
    with pytest.raises(asyncjob.JobFailed, match=r"ran longer than its timeout of 0\.05 s"):
        await runner_on.wait(job_id, timeout=TIMEOUT)
    assert retry_jobs.runs[k] == 2
    assert (await runner_on.status(job_id)).errors[0].startswith("TimeoutError")


async def test_a_sync_attempt_times_out_at_its_next_report(runner: asyncjob.Runner) -> None:
    """A thread cannot be stopped: set_progress raises TimeoutError in it."""
    job_id = await runner.perform(retry_jobs.loops, key())
    with pytest.raises(asyncjob.JobFailed, match="ran longer than its timeout"):
        await runner.wait(job_id, timeout=TIMEOUT)


async def test_a_job_that_catches_its_timeout_fails_all_the_same(
    runner: asyncjob.Runner,
) -> None:
    """A coroutine job that catches the cancellation its timeout is, and
    returns: it ran past its timeout, so it fails (it succeeded), as a sync
    job that returns late does."""
    job_id = await runner.perform(retry_jobs.swallows_its_timeout, key())
    with pytest.raises(asyncjob.JobFailed, match=r"ran longer than its timeout of 0\.05 s"):
        await runner.wait(job_id, timeout=TIMEOUT)


async def test_a_jobs_own_timeout_error_is_its_own(runner: asyncjob.Runner) -> None:
    """A TimeoutError the job raises keeps its message."""
    job_id = await runner.perform(retry_jobs.raises_its_own_timeout)
    with pytest.raises(asyncjob.JobFailed, match="upstream service timed out"):
        await runner.wait(job_id, timeout=TIMEOUT)


async def test_stop_cancels_a_retry_that_waits(make_runner: RunnerFactory) -> None:
    """A retry waiting for its turn is cancelled when the runner stops."""
    runner = await make_runner()
    job_id = await runner.perform(retry_jobs.fails_slowly)
    async for status in runner.watch(job_id):
        if status.errors:
            break
    await runner.stop()
    status = await runner.store.get(job_id)
    assert status is not None
    assert status.state is JobState.cancelled


def test_backoff_doubles_with_jitter_and_a_ceiling() -> None:
    """Each wait is between half and all of backoff * 2**(attempt-1), capped."""
    definition = JobDefinition("x", print, retries=4, backoff=2, max_backoff=10)
    for attempt, (low, high) in enumerate([(1, 2), (2, 4), (4, 8), (5, 10)], start=1):
        for _ in range(50):
            delay = definition.delay_before(attempt)
            assert delay is not None
            assert low <= delay <= high
    assert definition.delay_before(5) is None


def test_the_thousandth_retry_waits_max_backoff() -> None:
    """2.0 ** 1024 overflows: the attempt whose wait raised it stayed
    running for good. The exponent is bounded; max_backoff rules."""
    definition = JobDefinition("x", print, retries=5_000, backoff=0, max_backoff=10)
    assert definition.delay_before(1025) == 0
    definition = JobDefinition("x", print, retries=5_000, backoff=1, max_backoff=10)
    delay = definition.delay_before(4_000)
    assert delay is not None
    assert 5 <= delay <= 10


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"retries": -1}, "retries"),
        ({"retries": 1.5}, "retries"),
        ({"backoff": -1}, "backoff"),
        ({"max_backoff": "x"}, "max_backoff"),
        ({"backoff": float("inf")}, r"backoff must be a number of seconds from 0 to 3153600000"),
        ({"max_backoff": float("inf")}, "max_backoff must be a number of seconds from 0 to"),
        ({"backoff": float("nan")}, "backoff must be"),
        ({"max_backoff": 1e12}, r"max_backoff .* \(a century\)"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": "5"}, "timeout"),
    ],
)
def test_bad_policies(options: dict[str, object], message: str) -> None:
    """Each bad option is named when the job is registered."""
    with pytest.raises(ValueError, match=message):
        asyncjob.job(**options)  # type: ignore[call-overload]
