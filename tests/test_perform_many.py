"""perform_many(): many jobs of one function, recorded in one write."""

from __future__ import annotations

from typing import Any

import pytest

import asyncjob
from asyncjob import JobState
from asyncjob.stores.sql import SQLStore

from . import worker_jobs
from .conftest import TIMEOUT, Database, RunnerFactory


async def area(width: int, height: int = 1) -> int:
    """A job whose arguments may be positional or keyword."""
    return width * height


async def test_tuples_and_dicts_of_arguments(runner: asyncjob.Runner) -> None:
    """Each item is a tuple of positional arguments or a dict of keyword
    arguments; the ids come back in the items' order, one job each."""
    ids = await runner.perform_many(area, [(2, 3), [4], {"width": 5, "height": 6}, ()])
    assert len(set(ids)) == 4
    results = []
    for job_id in ids[:3]:
        results.append(await runner.wait(job_id, timeout=TIMEOUT))
    assert results == [6, 4, 30]
    with pytest.raises(asyncjob.JobFailed, match="TypeError"):  # area() needs a width
        await runner.wait(ids[3], timeout=TIMEOUT)


async def test_nothing_to_perform(runner: asyncjob.Runner) -> None:
    """No items, no jobs."""
    assert await runner.perform_many(area, []) == []


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("a.jpg", r"item 1 is str \('a.jpg'\).*write \('a.jpg',\) for one positional"),
        (7, "item 1 is int"),
        ({1: "x"}, "item 1 is dict"),
    ],
)
async def test_an_item_that_is_not_arguments_is_refused(
    make_runner: RunnerFactory, item: Any, message: str
) -> None:
    """A string, a number, a dict with other keys than names: refused at
    once, naming the item; none of the jobs is performed."""
    runner = await make_runner(concurrency=1)  # one at a time, in order
    ran: list[int] = []

    async def record(n: int) -> None:
        ran.append(n)

    with pytest.raises(TypeError, match=message):
        await runner.perform_many(record, [(1,), item, (2,)])
    last = await runner.perform(record, 3)  # runs after any job let through
    await runner.wait(last, timeout=TIMEOUT)
    assert ran == [3]


async def test_refused_when_not_callable_or_not_running(make_runner: RunnerFactory) -> None:
    """The same refusals as perform()."""
    runner = asyncjob.Runner()
    with pytest.raises(asyncjob.RunnerNotRunning):
        await runner.perform_many(area, [(1,)])
    started = await make_runner()
    with pytest.raises(TypeError, match="needs a callable"):
        await started.perform_many("area", [(1,)])


async def test_module_level_perform_many(runner: asyncjob.Runner) -> None:
    """asyncjob.perform_many() on the running runner."""
    ids = await asyncjob.perform_many(area, [(3,), (4,)])
    assert [await runner.wait(job_id, timeout=TIMEOUT) for job_id in ids] == [3, 4]


async def test_registered_jobs_in_an_sql_store(
    make_runner: RunnerFactory, database: Database
) -> None:
    """Performed by a producer, all written at once, run by a worker."""
    producer = await make_runner(SQLStore(database.async_url), producer_only=True)
    ids = await producer.perform_many(worker_jobs.whoami, [(n,) for n in range(300)])
    assert len(ids) == 300
    statuses = [await producer.status(job_id) for job_id in ids]
    assert {status.state for status in statuses} == {JobState.queued}
    worker = await make_runner(SQLStore(database.async_url, poll_interval=0.05))
    results = [await worker.wait(job_id, timeout=TIMEOUT) for job_id in ids]
    assert [result["n"] for result in results] == list(range(300))


async def test_arguments_an_sql_store_cannot_hold_write_nothing(
    make_runner: RunnerFactory, database: Database
) -> None:
    """One item's arguments are not JSON: refused, naming the item and the
    value, and none of the jobs is written."""
    producer = await make_runner(SQLStore(database.async_url), producer_only=True)
    with pytest.raises(TypeError, match=r"job 2 of 3: the arguments of .* a set"):
        await producer.perform_many(worker_jobs.whoami, [(1,), (2,), ({3},)])
    store = producer.store
    assert isinstance(store, SQLStore)
    count = (await store.db.fetch(store.tables.jobs.select())).all()
    assert count == []


async def test_jobs_not_registered_run_here(make_runner: RunnerFactory, database: Database) -> None:
    """A function that is not registered runs in the performing process,
    each job stored for every process to read."""
    runner = await make_runner(SQLStore(database.async_url))
    ids = await runner.perform_many(area, [(2, 2), (3, 3)])
    assert [await runner.wait(job_id, timeout=TIMEOUT) for job_id in ids] == [4, 9]
