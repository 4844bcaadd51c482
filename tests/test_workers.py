"""Registered jobs in a shared store, run by real worker processes.

Each test starts ``asyncjob worker`` processes on an SQLite file or a
PostgreSQL database, performs from this process with a producer-only
runner, and reads the outcome back through the store.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import select

import asyncjob
from asyncjob import JobState
from asyncjob.stores.sql import SQLStore

from . import worker_jobs
from .conftest import TIMEOUT, Database, RunnerFactory
from .processes import ROOT, Workers


@pytest.fixture
def workers(database: Database, tmp_path: Path) -> Iterator[Workers]:
    """Start worker processes on the test database; stop them afterwards,
    and show what they printed."""
    made = Workers(tmp_path, url=database.async_url)
    yield made
    made.stop_all()
    print(made.output())


@pytest.fixture
async def producer(make_runner: RunnerFactory, database: Database) -> asyncjob.Runner:
    """A web process's runner: it performs, and leaves registered jobs to workers."""
    runner: asyncjob.Runner = await make_runner(
        SQLStore(database.async_url, poll_interval=0.05), producer_only=True
    )
    return runner


@pytest.fixture
async def reader(database: Database) -> AsyncIterator[SQLStore]:
    """The store, read directly."""
    store = SQLStore(database.async_url, poll_interval=0.05)
    await store.open()
    yield store
    await store.close()


async def test_workers_share_the_jobs(producer: asyncjob.Runner, workers: Workers) -> None:
    """Three worker processes run 300 jobs, each exactly once, none here."""
    for _ in range(3):
        workers.start()
    ids = [await producer.perform(worker_jobs.whoami, n) for n in range(150)]
    ids += [await producer.perform(worker_jobs.sync_whoami, n) for n in range(150, 300)]
    results = [await producer.wait(job_id, timeout=TIMEOUT * 3) for job_id in ids]
    assert [r["n"] for r in results] == list(range(300))
    pids = {r["pid"] for r in results}
    assert os.getpid() not in pids
    assert pids <= {p.pid for p in workers.processes}
    for job_id in ids[:5]:
        status = await producer.status(job_id)
        assert (status.state, status.progress) == (JobState.succeeded, 50)


async def test_a_killed_workers_jobs_run_again_elsewhere(
    producer: asyncjob.Runner, workers: Workers, reader: SQLStore
) -> None:
    """kill -9 a worker in the middle of a batch; another one finishes every
    job, the interrupted ones on a second attempt. The first job's first
    attempt never ends: it is running when the worker dies, however late
    the test sees it start (a job of 0.2 s had ended by then on a loaded
    machine, and the watch saw it succeeded, never running)."""
    first = workers.start(lease=1.0, concurrency=4)
    ids = [await producer.perform(worker_jobs.stalls_on_its_first_attempt, 0)]
    ids += [await producer.perform(worker_jobs.slow, n, 0.2) for n in range(1, 12)]
    async with asyncio.timeout(TIMEOUT):
        async for status in reader.watch(ids[0]):
            if status.state is JobState.running:
                break
    first.send_signal(signal.SIGKILL)
    first.wait(TIMEOUT)
    second = workers.start(lease=1.0, concurrency=4)
    results = [await producer.wait(job_id, timeout=TIMEOUT * 3) for job_id in ids]
    assert [r["n"] for r in results] == list(range(12))
    assert {r["pid"] for r in results} <= {first.pid, second.pid}
    async with reader.db.read() as conn:
        from sqlalchemy import select

        jobs = reader.tables.jobs
        attempts = dict((await conn.execute(select(jobs.c.id, jobs.c.attempts))).all())
    assert attempts[ids[0]] == 2  # it was running when its worker died
    assert all(attempts[job_id] in (1, 2) for job_id in ids)


async def test_a_job_no_worker_registered_fails_saying_so(
    producer: asyncjob.Runner, workers: Workers, reader: SQLStore
) -> None:
    """A stored job naming anything not registered is never imported or called."""
    workers.start()
    job_id = await producer.perform(worker_jobs.whoami, 1)
    await producer.wait(job_id, timeout=TIMEOUT)
    async with reader.db.write() as conn:
        from sqlalchemy import insert

        await conn.execute(
            insert(reader.tables.jobs).values(
                id="f" * 32,
                name="os.system",
                registered=True,
                state="queued",
                args='["echo pwned"]',
                kwargs="{}",
                attempts=0,
                enqueued_at=0.0,
                run_after=0.0,
            )
        )
    with pytest.raises(asyncjob.JobFailed, match=r"'os\.system' is not registered in this worker"):
        await producer.wait("f" * 32, timeout=TIMEOUT)


async def test_sigterm_stops_a_worker_gracefully(
    producer: asyncjob.Runner, workers: Workers
) -> None:
    """SIGTERM: the running job finishes, the worker exits 0."""
    worker = workers.start()
    job_id = await producer.perform(worker_jobs.reports_then_waits, 0.5)
    # Its code runs once it reported (``running`` in the store can mean
    # claimed ahead, not started: such a job is handed back on SIGTERM).
    async for status in producer.watch(job_id):
        if status.progress is not None:
            break
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(TIMEOUT) == 0
    assert await producer.wait(job_id, timeout=TIMEOUT) == "done"


def test_worker_command_refuses_bad_input(tmp_path: Path) -> None:
    """A module that cannot be imported, or a store that is not shared: exit 2."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'jobs.db'}"
    for store, module, message in [
        (url, "no_such_module", "cannot import no_such_module"),
        ("memory", "tests.worker_jobs", "not a store that workers share"),
        ("sqlite:///sync-driver.db", "tests.worker_jobs", "give an async database URL"),
        (
            "postgresql+asyncpg://no_such_role@127.0.0.1:5432/test",
            "tests.worker_jobs",
            "cannot open the store",
        ),
    ]:
        done = subprocess.run(
            [sys.executable, "-m", "asyncjob", "worker", "--store", store, "--import", module],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert done.returncode == 2
        assert message in done.stderr


async def test_a_worker_runner_in_process(make_runner: RunnerFactory, database: Database) -> None:
    """A runner on a shared store runs registered jobs itself unless producer-only."""
    runner = await make_runner(database.async_url)
    job_id = await runner.perform(worker_jobs.whoami, 7)
    assert (await runner.wait(job_id, timeout=TIMEOUT))["pid"] == os.getpid()


async def test_a_job_from_a_process_whose_clock_is_ahead_runs_at_once(
    make_runner: RunnerFactory, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job comes due by the database's clock, as claims read it: performed
    by a process whose clock is an hour ahead, it is not held back an hour
    (its enqueued_at is that process's clock, as it was given)."""
    worker = await make_runner(SQLStore(database.async_url, poll_interval=60.0))
    real = time.time
    monkeypatch.setattr("asyncjob._runner.runner.time", SimpleNamespace(time=lambda: real() + 3600))
    job_id = await worker.perform(worker_jobs.whoami, 1)
    assert (await worker.wait(job_id, timeout=TIMEOUT))["n"] == 1
    enqueued_at = (await worker.status(job_id)).enqueued_at
    assert enqueued_at is not None
    assert enqueued_at.timestamp() > real() + 3000


async def test_stopping_hands_claimed_jobs_back(
    make_runner: RunnerFactory, database: Database, reader: SQLStore
) -> None:
    """A stopping worker hands back what it claimed and did not finish: the
    queued ones at once, the running one after the grace period."""
    worker = await make_runner(
        SQLStore(database.async_url, poll_interval=0.05), concurrency=1, grace_period=0.1
    )
    first = await worker.perform(worker_jobs.slow, 0, 60.0)
    rest = [await worker.perform(worker_jobs.slow, n, 60.0) for n in range(1, 4)]
    async with asyncio.timeout(TIMEOUT):
        async for status in reader.watch(first):
            if status.state is JobState.running:
                break
    await worker.stop()
    for job_id in [first, *rest]:
        now = await reader.get(job_id)
        assert now is not None
        assert now.state is JobState.queued
        assert now.attempts == 0  # handed back: no attempt used up


async def test_a_job_still_unwinding_is_handed_back_once_it_has_stopped(
    make_runner: RunnerFactory, database: Database, reader: SQLStore
) -> None:
    """A stopping worker's job, running past the grace period, is stopped,
    and handed back once its code has stopped: it was handed back first,
    and another worker ran it while it cleaned up here (twice at once, a
    concurrency limit of 1 run past)."""
    key = f"unwind-{uuid.uuid4().hex}"
    cancelled, cleaned_up = worker_jobs.UNWINDING[key] = (asyncio.Event(), asyncio.Event())
    stopping = await make_runner(
        SQLStore(database.async_url, poll_interval=0.05), concurrency=1, grace_period=0.1
    )
    job_id = await stopping.perform(worker_jobs.unwinds_slowly, key)
    async with asyncio.timeout(TIMEOUT):
        async for status in reader.watch(job_id):
            if status.state is JobState.running:
                break
    other = await make_runner(SQLStore(database.async_url, poll_interval=0.05))
    stopped = asyncio.create_task(stopping.stop())
    async with asyncio.timeout(TIMEOUT):
        await cancelled.wait()  # past the grace period, cancelled, cleaning up
    now = await reader.get(job_id)
    assert now is not None
    assert (now.state, now.attempts, now.worker) == (JobState.running, 1, stopping.store.owner)
    cleaned_up.set()
    async with asyncio.timeout(TIMEOUT):
        await stopped
    assert await other.wait(job_id, timeout=TIMEOUT) == 2  # its second run, there


async def test_a_job_cancelled_elsewhere_stops_here(
    make_runner: RunnerFactory, database: Database, reader: SQLStore
) -> None:
    """Cancelled from another process, a running job learns it at the next
    lease renewal and is stopped."""
    worker = await make_runner(SQLStore(database.async_url, poll_interval=0.05, lease=0.3))
    job_id = await worker.perform(worker_jobs.slow, 0, 60.0)
    async with asyncio.timeout(TIMEOUT):
        async for status in reader.watch(job_id):
            if status.state is JobState.running:
                break
    assert await reader.cancel(job_id) is JobState.running
    await worker.join(TIMEOUT)  # the job was stopped, far before its 60 s
    assert (await worker.status(job_id)).state is JobState.cancelled


async def test_a_cancel_from_another_process_is_pushed_to_the_holder(
    make_runner: RunnerFactory, database: Database, reader: SQLStore
) -> None:
    """With renewals 20 s apart, a job cancelled from another process is
    stopped at once, not at the next renewal: PostgreSQL notifies its
    holder, and on SQLite the holder looks every poll_interval. The job
    ends cancelled, as a watcher elsewhere sees."""
    worker = await make_runner(SQLStore(database.async_url, poll_interval=0.05, lease=60))
    job_id = await worker.perform(worker_jobs.slow, 0, 60.0)
    async with asyncio.timeout(TIMEOUT):
        async for status in reader.watch(job_id):
            if status.state is JobState.running:
                break
    assert await reader.cancel(job_id) is JobState.running
    async with asyncio.timeout(TIMEOUT):  # far less than a renewal's 20 s
        states = [status.state async for status in reader.watch(job_id)]
    assert states[-1] is JobState.cancelled


async def test_a_lease_that_runs_out_is_recovered(database: Database) -> None:
    """A job whose holder stopped renewing goes back to the queue."""
    from asyncjob.stores import Job

    holder = SQLStore(database.async_url, lease=0.05)
    other = SQLStore(database.async_url)
    await holder.open()
    await other.open()
    try:
        job = Job("a" * 32, "tests.worker_jobs.whoami", print, (1,), {}, True, 0.0, True)
        await holder.enqueue(job)
        (claimed,) = await holder.claim(10)
        assert (claimed.id, claimed.args, claimed.attempts) == (job.id, (1,), 1)
        assert await other.claim(10) == []
        assert holder._leases is not None
        holder._leases.stop()  # the holder dies: nobody renews its lease
        async with asyncio.timeout(TIMEOUT):
            while not await other.recover():  # noqa: ASYNC110 - waits for the database's clock
                await asyncio.sleep(0.05)
        (again,) = await other.claim(10)
        assert again.attempts == 2
        lost, _ = await holder._renew_leases(holder.db, [job.id])
        assert lost == [job.id]  # the first holder lost it
    finally:
        await holder.close()
        await other.close()


PERFORMER = """
import asyncio, sys
import asyncjob
from asyncjob.stores.sql import SQLStore

async def main():
    async with asyncjob.Runner(SQLStore(sys.argv[1], lease=0.3), concurrency=1) as runner:
        started = asyncio.Event()

        async def forever():  # a closure: not registered, runs only here
            started.set()
            await asyncio.Event().wait()

        running = await runner.perform(forever)
        queued = await runner.perform(forever)
        await started.wait()
        print(running, queued, flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_jobs_of_a_dead_process_that_no_one_else_may_run_fail(
    database: Database, reader: SQLStore
) -> None:
    """A job that is not registered runs only where it was performed: when
    that process dies, it ends failed, "worker lost", running or queued."""
    process = subprocess.Popen(  # noqa: ASYNC220 - starting it does not block
        [sys.executable, "-c", PERFORMER, database.async_url],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), TIMEOUT)
    running, queued = line.split()
    process.kill()
    process.wait(TIMEOUT)
    process.stdout.close()
    recovered = 0
    async with asyncio.timeout(TIMEOUT):
        while recovered < 2:
            recovered += await reader.recover()
            await asyncio.sleep(0.05)  # until the lease runs out, on the database's clock
    for job_id in (running, queued):
        status = await reader.get(job_id)
        assert status is not None
        assert status.state is JobState.failed
        assert status.error is not None
        assert status.error.startswith("worker lost")


async def test_finished_jobs_are_deleted_after_keep_finished(
    database: Database, make_runner: RunnerFactory
) -> None:
    """Past keep_finished, finished jobs are deleted; others stay."""
    store = SQLStore(database.async_url, keep_finished=0)
    runner = await make_runner(store)
    done = await runner.perform(worker_jobs.whoami, 1)
    await runner.wait(done, timeout=TIMEOUT)
    waiting = await runner.perform(asyncio.Event().wait)
    assert await store.forget_finished() == 1
    with pytest.raises(asyncjob.JobNotFound):
        await runner.status(done)
    assert not (await runner.status(waiting)).is_final  # kept: not finished
    await runner.cancel(waiting)


async def test_retention_keeps_pace_with_thousands_of_ended_jobs(
    database: Database, make_runner: RunnerFactory
) -> None:
    """3,000 jobs ended past keep_finished: one round of maintenance deletes
    them all, a short statement at a time, and leaves the queued job (a
    round used to delete 500: at the default lease, 50 rows a second, less
    than a worker ends)."""
    store = SQLStore(database.async_url, keep_finished=0, lease=60)  # no round of its own
    runner = await make_runner(store, producer_only=True)
    queued = await runner.perform(worker_jobs.whoami, 1)
    jobs = store.tables.jobs
    async with store.db.write() as conn:
        await conn.execute(
            jobs.insert(),
            [
                {"id": f"{n:032x}", "name": "tests.done", "registered": True,
                 "state": "succeeded", "args": "[]", "kwargs": "{}", "attempts": 1,
                 "enqueued_at": 1.0, "run_after": 1.0, "finished_at": 1.0 + n}
                for n in range(3000)
            ],
        )  # fmt: skip
    assert runner._maintenance is not None
    assert await runner._maintenance.retain() == 3000
    async with store.db.read() as conn:
        assert (await conn.execute(select(jobs.c.id))).scalars().all() == [queued]


async def test_a_handed_back_job_is_queued_with_no_progress(
    make_runner: RunnerFactory, database: Database
) -> None:
    """Handed back at a stop, a job that had reported progress is queued
    again with no attempt counted and no progress: get_progress gives
    (-1, None), as for any queued job (it used to give the taken-back
    attempt's progress)."""
    worker = asyncjob.Runner(
        SQLStore(database.async_url, poll_interval=0.05), concurrency=1, grace_period=0.1
    )
    await worker.start()
    try:
        job_id = await worker.perform(worker_jobs.reports_then_waits, 60.0)
        async with asyncio.timeout(TIMEOUT):
            async for status in worker.watch(job_id):
                if status.progress == 42:
                    break
    finally:
        await worker.stop()
    reader = await make_runner(SQLStore(database.async_url), producer_only=True)
    status = await reader.status(job_id)
    assert (status.state, status.attempts, status.progress) == (JobState.queued, 0, None)
    assert await reader.get_progress(job_id) == (-1, None)


async def test_wait_says_why_it_gave_up(make_runner: RunnerFactory, database: Database) -> None:
    """wait(timeout) names the job and its state, and for a registered job
    still queued with no worker, says how to start one (it used to raise a
    bare TimeoutError())."""
    producer = await make_runner(SQLStore(database.async_url), producer_only=True)
    job_id = await producer.perform(worker_jobs.whoami, 1)
    with pytest.raises(TimeoutError) as info:
        await producer.wait(job_id, timeout=0.05)
    assert str(info.value) == (
        f"job {job_id} has not ended within 0.05 s: it is queued, waiting for a worker "
        "of its store: if none is running, start one, asyncjob worker --store URL "
        "--import tests.worker_jobs"
    )


def test_the_worker_imports_from_its_directory(tmp_path: Path) -> None:
    """The asyncjob command imports the application's modules from the
    directory it is started in, as uvicorn and celery do (it used to say
    "No module named 'myapp'"); one it cannot import is named, with where
    it looked."""
    (tmp_path / "myapp").mkdir()
    (tmp_path / "myapp" / "__init__.py").write_text("")
    (tmp_path / "myapp" / "jobs.py").write_text("raise RuntimeError('imported from here')\n")
    command = [str(Path(sys.executable).parent / "asyncjob"), "worker", "--store"]
    command += [f"sqlite+aiosqlite:///{tmp_path / 'jobs.db'}", "--import", "myapp.jobs"]
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    done = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT, env=env
    )
    assert done.returncode == 2
    assert "RuntimeError('imported from here')" in done.stderr
    assert f"from the directory the worker runs in, {tmp_path}" in done.stderr


def test_bad_store_options() -> None:
    """lease and keep_finished are checked where they are given."""
    with pytest.raises(ValueError, match="lease"):
        SQLStore("sqlite+aiosqlite:///x.db", lease=0)
    with pytest.raises(ValueError, match="keep_finished"):
        SQLStore("sqlite+aiosqlite:///x.db", keep_finished=-1)


def test_the_store_can_come_from_the_environment(tmp_path: Path) -> None:
    """$ASYNCJOB_STORE stands for --store, keeping a password out of ps."""
    env = {**os.environ, "ASYNCJOB_STORE": "memory"}
    done = subprocess.run(
        [sys.executable, "-m", "asyncjob", "worker", "--import", "tests.worker_jobs"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
    )
    assert done.returncode == 2
    assert "'memory' is not a store that workers share" in done.stderr


def test_store_options_are_checked() -> None:
    """A table prefix that is not a plain identifier is refused, and so is
    one that SQLite keeps for itself, at construction (it used to pass and
    fail at start with a raw OperationalError); so is an SQLite URL that
    names no file."""
    for prefix in ["MyApp_", "my-app_", "1app_", ""]:
        with pytest.raises(ValueError, match="table_prefix"):
            SQLStore("sqlite+aiosqlite:///x.db", table_prefix=prefix)
    for prefix in ["sqlite_", "sqlite_jobs_"]:
        with pytest.raises(ValueError, match="reserved: SQLite keeps the names"):
            SQLStore("postgresql+asyncpg://h/db", table_prefix=prefix)
    with pytest.raises(ValueError, match="names no file"):
        SQLStore("sqlite+aiosqlite://")


def test_producer_only_needs_a_shared_store() -> None:
    """With the memory store, no other process could run the jobs: refused."""
    with pytest.raises(ValueError, match="producer_only=True needs a store that workers share"):
        asyncjob.Runner(producer_only=True)


async def test_a_worker_whose_loop_is_blocked_keeps_its_jobs(
    producer: asyncjob.Runner, workers: Workers, reader: SQLStore
) -> None:
    """A coroutine job that blocks its loop for several leases is not taken
    from its worker: the leases are renewed by a thread of their own."""
    workers.start(lease=0.3)
    job_id = await producer.perform(worker_jobs.blocks_loop, 1.5)
    async with asyncio.timeout(TIMEOUT):
        async for status in reader.watch(job_id):
            if status.state is JobState.running:
                break
    recovered = 0
    for _ in range(10):  # across the 1.5 s the loop is blocked, five leases
        recovered += await reader.recover()
        await asyncio.sleep(0.1)
    assert recovered == 0
    await producer.wait(job_id, timeout=TIMEOUT)
    assert (await producer.status(job_id)).attempts == 1


def test_run_worker_refuses_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The worker command's checks, called in-process: exit code 2 and why."""
    from asyncjob._cli.worker import run_worker

    url = f"sqlite+aiosqlite:///{tmp_path / 'jobs.db'}"
    assert run_worker(url, ["no_such_module"]) == 2
    assert run_worker("memory", ["tests.worker_jobs"]) == 2
    assert run_worker(url, ["tests.worker_jobs"], lease=0) == 2
    assert run_worker(url, ["tests.worker_jobs"], lease=float("inf")) == 2
    # A module that exits at import ended the worker, status 0, not a word.
    assert run_worker(url, ["tests.exits_at_import"]) == 2
    err = capsys.readouterr().err
    assert "cannot import no_such_module" in err
    assert "not a store that workers share" in err
    assert "lease must be a finite number of seconds > 0, not 0" in err
    assert "not inf" in err
    assert "cannot import tests.exits_at_import: SystemExit(0)" in err
