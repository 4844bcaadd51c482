"""Progress: set_progress inside jobs, get_progress and watch from outside."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

import asyncjob
from asyncjob import JobState
from asyncjob.stores import MemoryStore

from .conftest import TIMEOUT, RunnerFactory


async def test_get_progress_has_the_seed_semantics(runner: asyncjob.Runner) -> None:
    """(-1, None) until reported, (value, data) then, None once ended."""
    reported = asyncio.Event()
    release = asyncio.Event()

    async def job() -> None:
        asyncjob.set_progress(3, {"step": "resize"})
        reported.set()
        await release.wait()

    job_id = await runner.perform(job)
    assert await runner.get_progress(job_id) == (-1, None)
    async with asyncio.timeout(TIMEOUT):
        await reported.wait()
    assert await runner.get_progress(job_id) == (3, {"step": "resize"})
    release.set()
    await runner.wait(job_id, timeout=TIMEOUT)
    assert await runner.get_progress(job_id) is None
    assert await runner.get_progress("never-seen") is None


async def test_running_but_not_reported_yet(runner: asyncjob.Runner) -> None:
    """A job that started but has not reported reads as not started."""
    release = asyncio.Event()
    job_id = await runner.perform(release.wait)
    async for status in runner.watch(job_id):
        if status.state is JobState.running:
            break
    assert await runner.get_progress(job_id) == (-1, None)
    release.set()
    await runner.wait(job_id, timeout=TIMEOUT)


async def test_progress_is_kept_in_the_final_status(runner: asyncjob.Runner) -> None:
    """The last progress stays readable through status() after the end."""

    def job() -> int:
        for i in range(1, 4):
            asyncjob.set_progress(i * 10, f"chunk {i}")
        return 30

    job_id = await runner.perform(job)
    assert await runner.wait(job_id, timeout=TIMEOUT) == 30
    status = await runner.status(job_id)
    assert (status.progress, status.data) == (30, "chunk 3")


async def test_watch_sees_every_change(runner: asyncjob.Runner) -> None:
    """queued, running, each progress report, then the final state."""
    gate = asyncio.Event()

    async def job() -> str:
        await gate.wait()
        for i in range(1, 4):
            asyncjob.set_progress(i)
            await asyncio.sleep(0)
        asyncjob.set_progress(4)
        asyncjob.set_progress(5)  # two reports with no await between
        return "done"

    job_id = await runner.perform(job)
    seen: list[tuple[str, float | None]] = []
    async with asyncio.timeout(TIMEOUT):
        async for status in runner.watch(job_id):
            seen.append((status.state.value, status.progress))
            if status.state is JobState.running and status.progress is None:
                gate.set()
    assert seen == [
        ("queued", None),
        ("running", None),
        ("running", 1),
        ("running", 2),
        ("running", 3),
        ("running", 4),
        ("running", 5),
        ("succeeded", 5),
    ]


async def test_many_watchers_of_one_job(runner: asyncjob.Runner) -> None:
    """Fifty watchers each see the whole story and end together."""
    gate = asyncio.Event()

    async def job() -> None:
        await gate.wait()
        asyncjob.set_progress(1)
        await asyncio.sleep(0)

    job_id = await runner.perform(job)

    ready = 0
    all_ready = asyncio.Event()

    async def watcher() -> list[JobState]:
        nonlocal ready
        states = []
        async for status in runner.watch(job_id):
            states.append(status.state)
            if len(states) == 1:
                ready += 1
                if ready == 50:
                    all_ready.set()
        return states

    watchers = [asyncio.create_task(watcher()) for _ in range(50)]
    async with asyncio.timeout(TIMEOUT):
        await all_ready.wait()
    gate.set()
    async with asyncio.timeout(TIMEOUT):
        results = await asyncio.gather(*watchers)
    for states in results:
        assert not states[0].is_final
        assert states[-2:] == [JobState.running, JobState.succeeded]


async def test_watch_a_finished_job(runner: asyncjob.Runner) -> None:
    """Watching a job that already ended yields its final status once."""
    job_id = await runner.perform(asyncio.sleep, 0, 7)
    await runner.wait(job_id, timeout=TIMEOUT)
    statuses = [s async for s in runner.watch(job_id)]
    assert [s.result for s in statuses] == [7]


async def test_watch_an_unknown_job(runner: asyncjob.Runner) -> None:
    """Watching an unknown id raises JobNotFound at the first step."""
    with pytest.raises(asyncjob.JobNotFound):
        async for _ in runner.watch("nope"):
            pass  # pragma: no cover


async def test_a_slow_watcher_always_gets_the_final_status(
    make_runner: RunnerFactory,
) -> None:
    """Past its backlog a watcher loses intermediate reports, never the end."""
    runner = await make_runner(MemoryStore(watch_backlog=3))
    gate = asyncio.Event()

    async def job() -> None:
        await gate.wait()
        for i in range(100):
            asyncjob.set_progress(i)

    job_id = await runner.perform(job)
    watch = runner.watch(job_id)
    first = await anext(watch)
    assert first.state is JobState.queued
    gate.set()
    await runner.join(TIMEOUT)
    rest = [s async for s in watch]
    assert len(rest) == 3
    assert rest[-1].state is JobState.succeeded
    assert rest[-1].progress == 99


async def test_watch_from_a_sync_job_thread(runner: asyncjob.Runner) -> None:
    """Reports from a thread reach watchers in order, on the loop."""
    release = threading.Event()

    def job() -> None:
        for i in range(5):
            asyncjob.set_progress(i, {"i": i})
        assert release.wait(TIMEOUT)

    job_id = await runner.perform(job)
    values: list[Any] = []
    async with asyncio.timeout(TIMEOUT):
        async for status in runner.watch(job_id):
            if status.progress is not None:
                values.append(status.data["i"])
            if status.progress == 4 and status.state is JobState.running:
                assert await runner.get_progress(job_id) == (4, {"i": 4})
                release.set()
    assert values[: values.index(4) + 1] == [0, 1, 2, 3, 4]


async def test_set_progress_outside_a_job() -> None:
    """Outside a job it is a RuntimeError that says where it belongs."""
    with pytest.raises(asyncjob.NotInJob, match="outside a job") as info:
        asyncjob.set_progress(1)
    assert isinstance(info.value, RuntimeError)
    assert isinstance(info.value, asyncjob.AsyncJobError)


@pytest.mark.parametrize("value", ["50%", None, True, [1], {"a": 1}])
async def test_set_progress_takes_a_number(runner: asyncjob.Runner, value: Any) -> None:
    """A value that is not a number is a TypeError inside the job, and the
    progress already reported stays as it was."""

    async def job() -> None:
        asyncjob.set_progress(1, "ok")
        asyncjob.set_progress(value)

    job_id = await runner.perform(job)
    with pytest.raises(asyncjob.JobFailed, match="TypeError: set_progress\\(\\) takes a number"):
        await runner.wait(job_id, timeout=TIMEOUT)
    status = await runner.status(job_id)
    assert (status.progress, status.data) == (1, "ok")


async def test_floats_and_negative_numbers_are_progress(runner: asyncjob.Runner) -> None:
    """Any real number is a value; the seed used ints, fractions are fine."""

    async def job() -> None:
        asyncjob.set_progress(0.5)
        asyncjob.set_progress(-2)

    job_id = await runner.perform(job)
    await runner.wait(job_id, timeout=TIMEOUT)
    assert (await runner.status(job_id)).progress == -2
