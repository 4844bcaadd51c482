"""Where jobs run: coroutine jobs on the loop, everything else in threads."""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import asyncjob
from asyncjob import JobState
from asyncjob._core.callables import callable_name, describe, is_async_callable
from asyncjob._engine.engine import Engine
from asyncjob._engine.sessions import Sessions
from asyncjob.stores import Job, MemoryStore

from .conftest import TIMEOUT, RunnerFactory


async def where_async(tag: str = "") -> tuple[str, int]:
    """Report the thread a coroutine job ran on."""
    return tag, threading.get_ident()


def where_sync(tag: str = "") -> tuple[str, int]:
    """Report the thread a sync job ran on."""
    return tag, threading.get_ident()


class Resizer:
    """A class with every kind of method a job may be."""

    def __init__(self, tag: str) -> None:
        self.tag = tag

    def sync_method(self, tag: str = "") -> tuple[str, int]:
        return where_sync(self.tag + tag)

    async def async_method(self, tag: str = "") -> tuple[str, int]:
        return await where_async(self.tag + tag)


class AsyncCallable:
    """An object whose __call__ is a coroutine function."""

    async def __call__(self, tag: str) -> tuple[str, int]:
        return await where_async(tag)


class SyncCallable:
    """An object whose __call__ is a plain function."""

    def __call__(self, tag: str) -> tuple[str, int]:
        return where_sync(tag)


CASES: list[tuple[str, Any, bool]] = [
    ("coroutine function", where_async, True),
    ("plain function", where_sync, False),
    ("partial of a coroutine function", functools.partial(where_async), True),
    ("partial of a partial", functools.partial(functools.partial(where_async)), True),
    ("partial of a plain function", functools.partial(where_sync), False),
    ("bound coroutine method", Resizer("x").async_method, True),
    ("bound plain method", Resizer("x").sync_method, False),
    ("async callable object", AsyncCallable(), True),
    ("sync callable object", SyncCallable(), False),
    ("partial of an async callable object", functools.partial(AsyncCallable()), True),
    ("lambda", lambda tag="": where_sync(tag), False),
    ("builtin", len, False),
    ("class", dict, False),
    ("class with an async __call__", AsyncCallable, False),
]


@pytest.mark.parametrize(("label", "func", "is_async"), CASES, ids=[c[0] for c in CASES])
def test_sync_or_async_is_told_apart(label: str, func: Any, is_async: bool) -> None:
    """Partials, bound methods and callable objects are seen through."""
    assert is_async_callable(func) is is_async
    assert describe(func) == (callable_name(func), is_async)


def test_callable_names() -> None:
    """Names are dotted paths a person can find in the code."""
    assert callable_name(where_sync) == "tests.test_execution.where_sync"
    assert callable_name(functools.partial(where_sync)) == "tests.test_execution.where_sync"
    assert callable_name(Resizer("x").sync_method) == "tests.test_execution.Resizer.sync_method"
    assert callable_name(SyncCallable()) == "tests.test_execution.SyncCallable"
    assert callable_name(len) == "builtins.len"


@pytest.mark.parametrize(
    ("label", "func", "is_async"),
    [c for c in CASES if not c[0].startswith(("builtin", "class"))],
    ids=[c[0] for c in CASES if not c[0].startswith(("builtin", "class"))],
)
async def test_each_kind_runs_in_the_right_place(
    runner: asyncjob.Runner, label: str, func: Any, is_async: bool
) -> None:
    """Coroutine jobs run on the loop's thread; others in a pool thread."""
    job_id = await runner.perform(func, tag="t")
    tag, thread = await runner.wait(job_id, timeout=TIMEOUT)
    assert tag.endswith("t")
    assert (thread == threading.get_ident()) is is_async


async def test_arguments_reach_the_job(runner: asyncjob.Runner) -> None:
    """Positional and keyword arguments, including ones named like perform's."""

    def job(func: str, /, *args: int, **kwargs: int) -> tuple[str, tuple[int, ...], dict[str, int]]:
        return func, args, kwargs

    job_id = await runner.perform(job, "f", 1, 2, fn=3, func=4)
    assert await runner.wait(job_id, timeout=TIMEOUT) == ("f", (1, 2), {"fn": 3, "func": 4})


async def test_a_sync_job_never_blocks_the_loop(runner: asyncjob.Runner) -> None:
    """While a sync job blocks its thread, coroutine jobs go on running."""
    release = threading.Event()

    def blocking() -> str:
        assert release.wait(TIMEOUT)
        return "released"

    blocked = await runner.perform(blocking)
    for _ in range(5):
        quick = await runner.perform(where_async)
        await runner.wait(quick, timeout=TIMEOUT)
    assert (await runner.status(blocked)).state is asyncjob.JobState.running
    release.set()
    assert await runner.wait(blocked, timeout=TIMEOUT) == "released"


async def test_thread_pool_is_bounded(make_runner: RunnerFactory) -> None:
    """At most ``threads`` sync jobs run at once; the others wait queued."""
    runner = await make_runner(concurrency=6, threads=2)
    lock = threading.Lock()
    running = peak = 0
    both_in = threading.Barrier(2, timeout=TIMEOUT)
    release = threading.Event()

    def job() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        both_in.wait()
        assert release.wait(TIMEOUT)
        with lock:
            running -= 1

    ids = [await runner.perform(job) for _ in range(6)]
    first_two = asyncio.gather(*(_wait_state(runner, i, "running") for i in ids[:2]))
    async with asyncio.timeout(TIMEOUT):
        await first_two
    states = [(await runner.status(i)).state for i in ids[2:]]
    assert states == [asyncjob.JobState.queued] * 4
    release.set()
    await runner.join(TIMEOUT)
    assert peak == 2


async def test_sync_jobs_waiting_for_a_thread_never_start_once_the_runner_stops(
    make_runner: RunnerFactory,
) -> None:
    """With fewer threads than jobs at once, a sync job waiting for a thread
    is queued: stopping the runner cancels it, and it never starts (each
    started as a thread came free during the grace period)."""
    runner = await make_runner(concurrency=4, threads=1, grace_period=TIMEOUT)
    started: list[int] = []
    release = threading.Event()

    def job(n: int) -> int:
        started.append(n)
        assert release.wait(TIMEOUT)
        return n

    ids = [await runner.perform(job, n) for n in range(4)]
    async with asyncio.timeout(TIMEOUT):
        await _wait_state(runner, ids[0], "running")
    stopping = asyncio.create_task(runner.stop())
    async with asyncio.timeout(TIMEOUT):  # while the first job holds the thread
        await asyncio.gather(*(_wait_state(runner, i, "cancelled") for i in ids[1:]))
    release.set()
    async with asyncio.timeout(TIMEOUT):
        await stopping
    assert started == [0]
    first = await runner.store.get(ids[0])
    assert first is not None
    assert first.state is asyncjob.JobState.succeeded


async def _wait_state(runner: asyncjob.Runner, job_id: str, state: str) -> None:
    async for status in runner.watch(job_id):
        if status.state == state:
            return


async def test_sync_jobs_see_their_context(runner: asyncjob.Runner) -> None:
    """current_job_id and set_progress work inside a thread too."""

    def job() -> str | None:
        asyncjob.set_progress(50, "half")
        return asyncjob.current_job_id()

    job_id = await runner.perform(job)
    assert await runner.wait(job_id, timeout=TIMEOUT) == job_id
    status = await runner.status(job_id)
    assert (status.progress, status.data) == (50, "half")


async def test_current_job_id_outside_a_job() -> None:
    """Outside a job there is no current job."""
    assert asyncjob.current_job_id() is None


async def test_a_sync_job_that_returns_a_coroutine_fails_clearly(
    runner: asyncjob.Runner,
) -> None:
    """A lambda around a coroutine function is a mistake worth naming."""
    job_id = await runner.perform(lambda: where_async("x"))
    with pytest.raises(asyncjob.JobFailed, match="returned a coroutine"):
        await runner.wait(job_id, timeout=TIMEOUT)


class Abort(BaseException):
    """A framework's own way out of a call: not an ``Exception``."""


@pytest.mark.parametrize("exc", [ValueError("v"), KeyError("k"), SystemExit(3), Abort("bye")])
@pytest.mark.parametrize("kind", ["sync", "coroutine"])
async def test_job_failures(runner: asyncjob.Runner, kind: str, exc: BaseException) -> None:
    """Whatever a job raises is its failure, in a thread or on the loop (a
    coroutine job's that was not an Exception ended its worker, and left
    it running), and the runner goes on."""

    def job() -> None:
        raise exc

    async def coroutine_job() -> None:
        raise exc

    job_id = await runner.perform(job if kind == "sync" else coroutine_job)
    with pytest.raises(asyncjob.JobFailed, match=type(exc).__name__):
        await runner.wait(job_id, timeout=TIMEOUT)
    again = await runner.perform(where_sync if kind == "sync" else where_async)
    await runner.wait(again, timeout=TIMEOUT)


async def test_a_job_raising_cancelled_error_itself_fails(runner: asyncjob.Runner) -> None:
    """A CancelledError nobody asked for is the job's failure, not the worker's end."""

    async def job() -> None:
        raise asyncio.CancelledError("not from the runner")

    job_id = await runner.perform(job)
    with pytest.raises(asyncjob.JobFailed, match="CancelledError"):
        await runner.wait(job_id, timeout=TIMEOUT)
    again = await runner.perform(where_async)
    await runner.wait(again, timeout=TIMEOUT)


async def test_unstopped_runner_cancelled_with_its_loop() -> None:
    """A loop closing under a running runner leaves its jobs cancelled, not running."""
    runner = asyncjob.Runner()
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    await runner.start()
    job_id = await runner.perform(forever)
    async with asyncio.timeout(TIMEOUT):
        await started.wait()
    (worker,) = runner._engine._workers
    worker.cancel()
    with pytest.raises(asyncio.CancelledError):
        await worker
    assert (await runner.status(job_id)).state is asyncjob.JobState.cancelled
    await runner.stop()


@asyncjob.job(name="tests.test_execution.worker_of_the_job")
def registered_worker_of_the_job() -> str:
    """The worker the running job's context names (in a thread)."""
    from asyncjob._engine.context import current

    ctx = current.get()
    assert ctx is not None
    return ctx.worker


async def worker_of_the_job() -> str:
    """The same, on the loop."""
    return registered_worker_of_the_job()


async def test_a_running_job_knows_its_worker(tmp_path: Path) -> None:
    """The job's context names the worker running it (its store's owner),
    for integrations that report it; none on a store without owners."""
    from asyncjob.stores.sql import SQLStore

    async with asyncjob.Runner() as runner:
        job_id = await runner.perform(worker_of_the_job)
        assert await runner.wait(job_id, TIMEOUT) == ""
    store = SQLStore(f"sqlite+aiosqlite:///{tmp_path}/jobs.db")
    async with asyncjob.Runner(store) as runner:
        for func in (worker_of_the_job, registered_worker_of_the_job):
            job_id = await runner.perform(func)
            assert await runner.wait(job_id, TIMEOUT) == store.owner != ""


async def test_a_claimed_job_interrupted_while_it_waits_never_runs() -> None:
    """A claimed job (running in the store already) that is interrupted while
    it waits in the engine's queue for a worker is recorded as cancelled,
    and its code never runs."""
    store = MemoryStore()
    await store.open()
    engine = Engine(store, concurrency=1, threads=1, scope=Sessions(None, None))
    engine.start()
    gate = asyncio.Event()
    ran: list[str] = []

    async def victim() -> None:
        ran.append("victim")  # pragma: no cover - must never run

    blocker = Job("b", "blocker", gate.wait, (), {}, True, time.time())
    claimed = Job("v", "victim", victim, (), {}, True, time.time(), True, True)
    for job in (blocker, claimed):
        await store.enqueue(job)
    await store.start("v")  # claimed: the store marked it running
    engine.submit(blocker)
    engine.submit(claimed)
    assert engine.interrupt("v") is False  # it does not run yet
    gate.set()
    async with asyncio.timeout(TIMEOUT):
        await engine.join()
    assert ran == []
    status = await store.get("v")
    assert status is not None
    assert status.state is JobState.cancelled
    await engine.drain(TIMEOUT)
    await engine.close(TIMEOUT)


async def test_a_failure_is_logged_with_the_job_as_fields(
    runner: asyncjob.Runner, caplog: pytest.LogCaptureFixture
) -> None:
    """Structured logging: the record of a failure carries the job's id,
    name, queue and attempt as fields of its own."""

    async def fails() -> None:
        raise ValueError("no")

    job_id = await runner.perform(asyncjob.using(fails, queue="reports"))
    with pytest.raises(asyncjob.JobFailed):
        await runner.wait(job_id, timeout=TIMEOUT)
    (record,) = [r for r in caplog.records if getattr(r, "job_id", None) == job_id]
    fields = (record.job_name, record.job_queue, record.job_attempt)  # type: ignore[attr-defined]
    assert fields == (f"{__name__}.{fails.__qualname__}", "reports", 1)
