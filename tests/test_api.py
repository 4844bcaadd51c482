"""The package's public face: its exports, module-level calls, calls across loops."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import types
from collections.abc import AsyncIterator, Iterator

import pytest

import asyncjob
import asyncjob.stores
from asyncjob import JobState

from . import worker_jobs
from .conftest import TIMEOUT, Database, RunnerFactory, compiled, edit_by_hand


@pytest.mark.parametrize("module", [asyncjob, asyncjob.stores])
def test_all_is_exact(module: object) -> None:
    """Every name in __all__ exists, is documented, and appears once."""
    names = module.__all__  # type: ignore[attr-defined]
    assert list(names) == sorted(set(names))
    public = {
        name
        for name, obj in vars(module).items()
        if not name.startswith("_")
        and not isinstance(obj, types.ModuleType)
        and name != "annotations"
    }
    assert public == set(names), "public names and __all__ differ"
    for name in names:
        obj = getattr(module, name)
        # mypyc keeps no docstrings: the pure-Python run checks those.
        if not compiled(getattr(obj, "__module__", "asyncjob")):
            assert obj.__doc__, f"{name} has no docstring"


def test_contract_names_are_exported() -> None:
    """The names the contract promises are importable from asyncjob."""
    for name in [
        "Runner", "perform", "get_progress", "status", "wait", "set_progress",
        "current_job_id", "JobStatus", "JobState", "JobNotFound", "JobFailed",
        "JobCancelled", "AsyncJobError",
    ]:  # fmt: skip
        assert name in asyncjob.__all__


def test_error_tree() -> None:
    """All errors derive from AsyncJobError; lookups are LookupErrors."""
    for error in [
        asyncjob.JobNotFound,
        asyncjob.JobFailed,
        asyncjob.JobCancelled,
        asyncjob.RunnerNotRunning,
        asyncjob.NotInJob,
    ]:
        assert issubclass(error, asyncjob.AsyncJobError)
    assert issubclass(asyncjob.JobNotFound, LookupError)
    assert issubclass(asyncjob.RunnerNotRunning, RuntimeError)
    assert "start one" in str(asyncjob.RunnerNotRunning())


def test_job_state_is_a_str_enum() -> None:
    """States compare equal to their names, for JSON and templates."""
    assert asyncjob.JobState.succeeded == "succeeded"
    assert {s.value for s in asyncjob.JobState} >= {
        "queued", "running", "succeeded", "failed", "cancelled"
    }  # fmt: skip
    assert [s.is_final for s in asyncjob.JobState] == [False, False, True, True, True]


def test_job_status_is_immutable() -> None:
    """A status is a snapshot: it cannot be changed after the fact."""
    status = asyncjob.JobStatus(id="x", name="n", state=JobState.queued)
    with pytest.raises(AttributeError):
        status.state = JobState.running  # type: ignore[misc]


async def test_module_level_calls_without_a_runner() -> None:
    """With no runner running, each call says how to start one."""
    with pytest.raises(asyncjob.RunnerNotRunning, match="start one first") as info:
        await asyncjob.perform(print)
    assert isinstance(info.value, RuntimeError)
    for call in (asyncjob.get_progress, asyncjob.status, asyncjob.wait, asyncjob.cancel):
        with pytest.raises(RuntimeError, match="no asyncjob runner is running"):
            await call("x")
    with pytest.raises(RuntimeError):
        asyncjob.watch("x")


async def test_module_level_calls_use_the_running_runner(runner: asyncjob.Runner) -> None:
    """asyncjob.perform and friends go to the runner running here."""
    gate = asyncio.Event()

    async def job(x: int) -> int:
        asyncjob.set_progress(x)
        await gate.wait()
        return x * 2

    job_id = await asyncjob.perform(job, 21)
    assert (await runner.status(job_id)).id == job_id
    async for status in asyncjob.watch(job_id):
        if status.progress == 21:
            break
    assert await asyncjob.get_progress(job_id) == (21, None)
    assert (await asyncjob.status(job_id)).state is JobState.running
    gate.set()
    assert await asyncjob.wait(job_id, timeout=TIMEOUT) == 42
    other = await asyncjob.perform(asyncio.Event().wait)
    assert await asyncjob.cancel(other)


async def test_the_latest_runner_answers(make_runner: RunnerFactory) -> None:
    """Two runners: the one started last answers until it stops."""
    first = await make_runner()
    second = await make_runner()
    job_id = await asyncjob.perform(asyncio.sleep, 0)
    await second.wait(job_id, timeout=TIMEOUT)
    await second.stop()
    job_id = await asyncjob.perform(asyncio.sleep, 0)
    await first.wait(job_id, timeout=TIMEOUT)


@pytest.fixture
def runner_in_thread() -> Iterator[asyncjob.Runner]:
    """A runner on an event loop of its own, in another thread."""
    with in_thread(asyncjob.Runner()) as runner:
        yield runner


@contextlib.contextmanager
def in_thread(runner: asyncjob.Runner) -> Iterator[asyncjob.Runner]:
    """``runner``, started on an event loop of its own in another thread,
    and stopped after."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(runner.start(), loop).result(TIMEOUT)
    try:
        yield runner
    finally:
        asyncio.run_coroutine_threadsafe(runner.stop(), loop).result(TIMEOUT)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(TIMEOUT)
        loop.close()


async def test_calls_from_another_loop(runner_in_thread: asyncjob.Runner) -> None:
    """Every method works when awaited from a loop other than the runner's."""
    runner = runner_in_thread
    here = threading.get_ident()
    gate = threading.Event()

    async def job() -> int:
        asyncjob.set_progress(1)
        await asyncio.to_thread(gate.wait, TIMEOUT)
        return threading.get_ident()

    job_id = await runner.perform(job)
    states = []
    async with asyncio.timeout(TIMEOUT):
        async for status in runner.watch(job_id):
            states.append(status.state)
            if status.progress == 1 and status.state is JobState.running:
                assert await runner.get_progress(job_id) == (1, None)
                gate.set()
    assert states[-1] is JobState.succeeded
    assert await runner.wait(job_id, timeout=TIMEOUT) != here
    blocked = await runner.perform(asyncio.Event().wait)
    assert await runner.cancel(blocked)
    await runner.join(TIMEOUT)
    with pytest.raises(asyncjob.JobNotFound):
        async for _ in runner.watch("nope"):
            pass  # pragma: no cover


async def _aiter_once(it: AsyncIterator[asyncjob.JobStatus]) -> asyncjob.JobStatus:
    return await anext(it)


async def test_abandoned_watch_from_another_loop(runner_in_thread: asyncjob.Runner) -> None:
    """Leaving a cross-loop watch early stops its relay on the runner's loop."""
    runner = runner_in_thread
    job_id = await runner.perform(asyncio.Event().wait)
    watch = runner.watch(job_id)
    first = await _aiter_once(watch)
    assert not first.is_final
    await watch.aclose()  # type: ignore[attr-defined]
    assert await runner.cancel(job_id)


async def test_a_watch_from_another_loop_ends_with_its_job_deleted(sqlite_db: Database) -> None:
    """A job's row deleted while it is watched (by hand, or by retention)
    ends the store's watch without a final state: watched from another
    loop, the watch went on waiting for ever."""
    with in_thread(asyncjob.Runner(sqlite_db.async_url, producer_only=True)) as runner:
        job_id = await runner.perform(worker_jobs.whoami, 1)  # no worker: it waits
        seen = []
        async with asyncio.timeout(TIMEOUT):
            async for status in runner.watch(job_id):
                seen.append(status.state)
                await asyncio.to_thread(
                    edit_by_hand,
                    sqlite_db.sync_url,
                    f"DELETE FROM asyncjob_jobs WHERE id = '{job_id}'",
                )
        assert seen == [JobState.queued]
        with pytest.raises(asyncjob.JobNotFound):
            await runner.wait(job_id, timeout=TIMEOUT)


def test_asyncjob_django_imports_without_django() -> None:
    """``import asyncjob.django`` works anywhere; its backend needs Django 6,
    and says so where Django is missing (Python 3.11 has none)."""
    import importlib.util

    import asyncjob.django

    if importlib.util.find_spec("django") is None:
        with pytest.raises(ImportError, match=r"needs Django 6 .*asyncjob-runner\[django\]"):
            asyncjob.django.AsyncJobBackend  # noqa: B018 - the import under test
    else:
        assert asyncjob.django.AsyncJobBackend.__name__ == "AsyncJobBackend"
    with pytest.raises(AttributeError, match="no attribute 'Backend'"):
        asyncjob.django.Backend  # noqa: B018
