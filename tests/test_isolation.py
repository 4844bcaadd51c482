"""Nothing one bad job can break: a value the database cannot hold, a row
edited into poison, a write late for its attempt, each fails its own job
and nothing else.

Each test here failed before its fix (the note in the commit says how).
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import asyncjob
from asyncjob import JobState
from asyncjob.stores import Job
from asyncjob.stores.sql import SQLStore

from .conftest import TIMEOUT, Database, RunnerFactory, edit_by_hand
from .processes import Workers

OpenStore = Callable[..., Awaitable[SQLStore]]


@pytest.fixture
async def open_store(database: Database) -> AsyncIterator[OpenStore]:
    """Open stores on the test database, each closed after the test."""
    opened: list[SQLStore] = []

    async def open_one(**options: Any) -> SQLStore:
        store = SQLStore(database.async_url, **options)
        await store.open()
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        await store.close()


def refuse_by_trigger(database: Database, when: str, event: str = "INSERT") -> list[str]:
    """A trigger that makes the database refuse the rows for which ``when``
    holds (of NEW), as it would refuse a value it cannot keep."""
    if database.kind == "sqlite":
        return [
            f"CREATE TRIGGER refuse BEFORE {event} ON asyncjob_jobs"
            f" WHEN {when} BEGIN SELECT RAISE(ABORT, 'refused by a trigger'); END"
        ]
    return [
        "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN"
        f" IF {when} THEN RAISE EXCEPTION 'refused by a trigger'; END IF;"
        " RETURN NEW; END $$ LANGUAGE plpgsql",
        f"CREATE TRIGGER refuse BEFORE {event} ON asyncjob_jobs"
        " FOR EACH ROW EXECUTE FUNCTION refuse()",
    ]


async def good(n: int) -> int:
    return n


async def refused_job(n: int) -> int:
    return n  # pragma: no cover - refused before it is recorded


# -- 2. one bad perform fails alone -------------------------------------------------


async def test_a_name_the_store_cannot_keep_is_refused_at_perform(
    database: Database, make_runner: RunnerFactory
) -> None:
    """A job name of 10,000 characters, or with NUL, is a ValueError naming
    it, raised by perform; the 20 good performs made at the same moment are
    recorded (they used to fail with it, in one shared INSERT)."""
    runner = await make_runner(database.async_url)

    async def long_name() -> None:
        pass  # pragma: no cover - never recorded

    async def nul_name() -> None:
        pass  # pragma: no cover - never recorded

    long_name.__qualname__ = "x" * 10_000
    nul_name.__qualname__ = "a\x00b"
    outcomes = await asyncio.gather(
        *(runner.perform(good, n) for n in range(10)),
        runner.perform(long_name),
        runner.perform(nul_name),
        *(runner.perform(good, n) for n in range(10, 20)),
        return_exceptions=True,
    )
    bad = outcomes[10:12]
    assert all(isinstance(o, ValueError) for o in bad), bad
    assert "at most 255 characters and no NUL" in str(bad[0])
    assert "a\\x00b" in str(bad[1])
    ids = [o for o in outcomes[:10] + outcomes[12:] if isinstance(o, str)]
    assert [await runner.wait(i, timeout=TIMEOUT) for i in ids] == list(range(20))
    with pytest.raises(ValueError, match="at most 255 characters"):
        asyncjob.job(name="y" * 256)
    with pytest.raises(ValueError, match="no NUL"):
        asyncjob.job(name="a\x00b")


async def test_a_perform_the_database_refuses_fails_alone(
    database: Database, make_runner: RunnerFactory
) -> None:
    """A batch of performs the database refuses is split: only the job at
    fault fails, with a ValueError that names it; the others performed at
    the same moment are recorded and run."""
    runner = await make_runner(database.async_url)  # its tables, for the trigger
    await asyncio.to_thread(
        edit_by_hand,
        database.sync_url,
        *refuse_by_trigger(database, "NEW.name LIKE '%refused_job'"),
    )
    outcomes = await asyncio.gather(
        *(runner.perform(good, n) for n in range(10)),
        runner.perform(refused_job, 10),
        *(runner.perform(good, n) for n in range(11, 21)),
        return_exceptions=True,
    )
    refusal = outcomes[10]
    assert isinstance(refusal, ValueError)
    assert "the database refused job" in str(refusal)
    assert "refused_job" in str(refusal)
    ids = [o for o in outcomes if isinstance(o, str)]
    assert len(ids) == 20
    assert sorted([await runner.wait(i, timeout=TIMEOUT) for i in ids]) == [
        *range(10),
        *range(11, 21),
    ]


async def refused_end(n: int) -> int:
    return n


async def test_an_end_the_database_refuses_fails_alone(
    database: Database, make_runner: RunnerFactory
) -> None:
    """An end the database refuses is written again as a failure that says
    so: that job ends (it used to stay running, its attempts climbing), and
    the jobs ending in the same batch end as they did."""
    runner = await make_runner(database.async_url, concurrency=30)
    when = "NEW.name LIKE '%refused_end' AND NEW.state = 'succeeded'"
    await asyncio.to_thread(
        edit_by_hand, database.sync_url, *refuse_by_trigger(database, when, "UPDATE")
    )
    gate = asyncio.Event()

    async def together(n: int) -> int:
        await gate.wait()  # they all end at once: in the same batches
        return n

    ids = [await runner.perform(together, n) for n in range(20)]
    bad = await runner.perform(refused_end, 99)
    gate.set()
    assert [await runner.wait(i, timeout=TIMEOUT) for i in ids] == list(range(20))
    with pytest.raises(asyncjob.JobFailed, match="the database refused to record how this job"):
        await runner.wait(bad, timeout=TIMEOUT)
    assert (await runner.status(bad)).attempts == 1


async def test_progress_the_database_refuses_is_dropped_alone(
    database: Database, make_runner: RunnerFactory
) -> None:
    """Reports written together, one of which the database refuses: only
    that one is dropped, the others are kept, and both jobs end as they
    would have (the refused report used to fail the whole batch)."""
    runner = await make_runner(database.async_url, concurrency=3)
    await asyncio.to_thread(
        edit_by_hand, database.sync_url, *refuse_by_trigger(database, "NEW.progress = 13", "UPDATE")
    )
    gate = asyncio.Event()

    async def reports(value: int) -> int:
        asyncjob.set_progress(value, "reported")
        await gate.wait()
        return value

    async def until_progress(job_id: str, value: int) -> None:
        async with asyncio.timeout(TIMEOUT):
            async for status in runner.watch(job_id):
                if status.progress == value:
                    return

    # Once a first report is written, the store waits a tenth of a second
    # before the next write: the two reports made meanwhile share it.
    await until_progress(await runner.perform(reports, 1), 1)
    refused, kept = await runner.perform(reports, 13), await runner.perform(reports, 7)
    await until_progress(kept, 7)
    assert (await runner.status(refused)).progress is None
    gate.set()
    assert await runner.wait(kept, timeout=TIMEOUT) == 7
    assert await runner.wait(refused, timeout=TIMEOUT) == 13
    assert [(await runner.status(i)).progress for i in (refused, kept)] == [None, 7]


# -- 3. errors and results the database cannot hold ----------------------------------


@pytest.mark.parametrize("message", ["\ud800", "a\x00b"])
async def test_an_error_the_database_cannot_hold_is_kept_escaped(
    database: Database, make_runner: RunnerFactory, message: str
) -> None:
    """A job raising ValueError("\\ud800") (not UTF-8) or ValueError("a\\x00b")
    (PostgreSQL refuses NUL) ends failed once, its error text escaped; it
    used to stay running for ever. A job ending beside it ends too."""
    runner = await make_runner(database.async_url)

    async def fails() -> None:
        raise ValueError(message)

    bad = await runner.perform(fails)
    fine = await runner.perform(good, 1)
    with pytest.raises(asyncjob.JobFailed) as failed:
        await runner.wait(bad, timeout=TIMEOUT)
    escaped = message.encode("utf-8", "backslashreplace").decode().replace("\x00", "\\x00")
    assert failed.value.error == f"ValueError: {escaped}"
    status = await runner.status(bad)
    assert (status.state, status.attempts) == (JobState.failed, 1)
    assert escaped in (status.traceback or "")
    assert await runner.wait(fine, timeout=TIMEOUT) == 1


async def test_a_result_json_cannot_write_fails_the_job(
    database: Database, make_runner: RunnerFactory
) -> None:
    """A job returning 10**5000 (an int longer than Python writes) ends
    failed, naming its result; it used to stay running."""
    runner = await make_runner(database.async_url)

    async def huge() -> int:
        return 10**5000

    job_id = await runner.perform(huge)
    with pytest.raises(asyncjob.JobFailed, match="TypeError: the result must be JSON"):
        await runner.wait(job_id, timeout=TIMEOUT)


# -- 4. poison rows ----------------------------------------------------------------------


def queued_row(job_id: str, *, args: str = "[1]", attempts: int = 0) -> str:
    """A queued registered job's row, as written by hand."""
    return (
        "INSERT INTO asyncjob_jobs (id, name, registered, state, args, kwargs, attempts,"
        f" enqueued_at, run_after) VALUES ('{job_id}', 'tests.worker_jobs.whoami', TRUE,"
        f" 'queued', '{args}', '{{}}', {attempts}, 1, 0)"
    )


@pytest.mark.parametrize("poison", ["attempts", "args"])
async def test_a_poison_row_fails_alone(
    database: Database, make_runner: RunnerFactory, open_store: OpenStore, poison: str
) -> None:
    """A queued row whose attempts count is at the column's limit (every
    claim used to fail, "integer out of range": 0 of 10 other jobs ran), or
    whose arguments are a 100,000-deep JSON array (RecursionError after the
    claim: the job looped running, and the jobs claimed with it did not
    run), fails alone, its error naming the column; the 10 others run."""
    from . import worker_jobs

    row = (
        queued_row("p" * 32, attempts=2**31 - 1)
        if poison == "attempts"
        else queued_row("p" * 32, args="[" * 100_000 + "]" * 100_000)
    )
    producer = await make_runner(SQLStore(database.async_url), producer_only=True)
    await asyncio.to_thread(edit_by_hand, database.sync_url, row)
    others = [await producer.perform(worker_jobs.whoami, n) for n in range(10)]
    await make_runner(SQLStore(database.async_url, poll_interval=0.05), concurrency=20)
    results = [await producer.wait(i, timeout=TIMEOUT) for i in others]
    assert [r["n"] for r in results] == list(range(10))
    column = "attempts column" if poison == "attempts" else "stored arguments"
    with pytest.raises(asyncjob.JobFailed, match=column):
        await producer.wait("p" * 32, timeout=TIMEOUT)
    if poison == "args":
        assert "nested too deep" in (await producer.status("p" * 32)).error


# -- 6. values the store would not give back equal -----------------------------------


class Color(enum.IntEnum):
    RED = 1


class Size(enum.StrEnum):
    BIG = "big"


async def test_arguments_that_would_come_back_changed_are_refused(
    database: Database, make_runner: RunnerFactory
) -> None:
    """An IntEnum or StrEnum argument would come back as a plain int or str:
    refused at perform, naming it (it used to be converted silently)."""
    runner = await make_runner(database.async_url)
    for value in (Color.RED, Size.BIG, {"nested": [Size.BIG]}):
        with pytest.raises(TypeError, match=r"a subclass of (int|str), which would come back"):
            await runner.perform(good, value)
    assert await runner.jobs() == []


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (float("nan"), ValueError),
        (float("inf"), ValueError),
        (2**70, ValueError),
        (10**400, ValueError),
        (True, TypeError),
        (Color.RED, TypeError),
    ],
    ids=["nan", "inf", "2**70", "10**400", "True", "IntEnum"],
)
@pytest.mark.parametrize("where", ["memory", "sqlite_db", "postgres_db"])
async def test_progress_a_store_would_not_give_back_is_refused(
    request: pytest.FixtureRequest,
    make_runner: RunnerFactory,
    value: object,
    error: type[Exception],
    where: str,
) -> None:
    """NaN, infinities, integers past 2**53, bools and enums are refused by
    set_progress, one rule for every store (an SQL store used to read back
    None for some, with only a log line); the progress reported before
    stays."""
    url = None if where == "memory" else request.getfixturevalue(where).async_url
    runner = await make_runner(url)
    caught: list[BaseException] = []

    async def job() -> None:
        asyncjob.set_progress(2**53, "exact")
        try:
            asyncjob.set_progress(value)  # type: ignore[arg-type]
        except Exception as exc:  # noqa: BLE001 - what the test looks at
            caught.append(exc)

    await runner.wait(await runner.perform(job), timeout=TIMEOUT)
    assert [type(e) for e in caught] == [error]
    statuses = await runner.jobs()
    assert (statuses[0].progress, statuses[0].data) == (2**53, "exact")


# -- 1. a write is matched to its attempt, and a job held until its end is written ------


def gate_finishes(store: SQLStore) -> tuple[asyncio.Event, asyncio.Event]:
    """Hold the store's writes of ends until the returned gate is set; the
    other event is set when one is held."""
    gate, held = asyncio.Event(), asyncio.Event()
    dialect = store._dialect
    write = dialect.finish

    async def gated(endings: Any) -> list[str | None]:
        held.set()
        await gate.wait()
        return await write(endings)

    dialect.finish = gated  # type: ignore[method-assign]
    return gate, held


async def test_a_job_is_held_until_its_end_is_written(
    open_store: OpenStore, database: Database
) -> None:
    """While a job's end is on its way to the database (here, held up for
    several leases), its lease is still renewed: no other runner takes it
    back for another run (one used to, and the same worker ran it again)."""
    holder = await open_store(lease=0.3, poll_interval=0.05)
    other = await open_store(lease=0.3, poll_interval=0.05)
    await holder.enqueue(Job("x" * 32, "tests.job", print, (), {}, False, time.time(), True))
    (claimed,) = await holder.claim(1)
    gate, held = gate_finishes(holder)
    ending = asyncio.create_task(holder.finish(claimed.id, JobState.succeeded, result=1))
    async with asyncio.timeout(TIMEOUT):
        await held.wait()
    for _ in range(10):  # across 1 s, three leases
        assert await other.recover() == 0
        await asyncio.sleep(0.1)  # waits for the database's clock: leases run out by it
    gate.set()
    assert await ending is True
    status = await other.get(claimed.id)
    assert status is not None
    assert (status.state, status.attempts, status.result) == (JobState.succeeded, 1, 1)
    assert claimed.id not in holder.held


async def test_a_late_end_does_not_end_the_next_attempt(
    open_store: OpenStore, database: Database
) -> None:
    """An end written late, after the job was taken back and claimed again
    by the same worker, matches no row: the new attempt is not ended by the
    old one's write (it used to be: the write matched the worker only)."""
    store = await open_store(lease=30)
    job_id = "y" * 32
    await store.enqueue(Job(job_id, "tests.job", print, (), {}, False, time.time(), True))
    (first,) = await store.claim(1)
    gate, held = gate_finishes(store)
    ending = asyncio.create_task(store.finish(job_id, JobState.succeeded, result="late"))
    async with asyncio.timeout(TIMEOUT):
        await held.wait()
    await asyncio.to_thread(  # taken back, as recovery would after its lease ran out
        edit_by_hand,
        database.sync_url,
        "UPDATE asyncjob_jobs SET state = 'queued', locked_by = NULL,"
        f" lease_expires_at = NULL WHERE id = '{job_id}'",
    )
    (second,) = await store.claim(1)
    assert (first.attempts, second.attempts) == (1, 2)
    gate.set()
    assert await ending is False
    status = await store.get(job_id)
    assert status is not None
    assert (status.state, status.attempts, status.result) == (JobState.running, 2, None)
    assert store.held[job_id] == 2  # the second attempt is still held
    assert await store.finish(job_id, JobState.succeeded, result="second") is True
    status = await store.get(job_id)
    assert status is not None
    assert (status.state, status.result) == (JobState.succeeded, "second")


async def test_a_blocked_loop_never_runs_a_job_twice(
    database: Database, tmp_path: Path, make_runner: RunnerFactory
) -> None:
    """Two worker processes with a lease of 1 s run jobs that block their
    loop for over two leases, between short ones: every job runs once, and
    none while it runs elsewhere. (On SQLite, a finished job used to be
    taken back while its end waited for the blocked loop, and run again:
    3 runs of 3 re-ran jobs, once at the same time in one process.)"""
    from . import isolation_jobs

    workers = Workers(tmp_path, url=database.async_url, module="tests.isolation_jobs")
    try:
        for _ in range(2):
            workers.start(lease=1.0, concurrency=2, grace_period=5)
        producer = await make_runner(SQLStore(database.async_url), producer_only=True)
        log = tmp_path / "runs.log"
        ids = [
            await producer.perform(isolation_jobs.noted, n, 2.5 if n % 2 else 0.0, str(log))
            for n in range(8)
        ]
        async with asyncio.timeout(TIMEOUT * 3):
            results = [await producer.wait(job_id) for job_id in ids]
        assert results == list(range(8))
        lines = [line.split() for line in log.read_text().splitlines()]
        starts = Counter(int(n) for what, n, _ in lines if what == "start")
        assert starts == dict.fromkeys(range(8), 1), workers.output()
        running: set[int] = set()
        for what, n, _ in lines:  # in the order written: no start while it runs
            assert (what == "start") == (int(n) not in running)
            (running.add if what == "start" else running.discard)(int(n))
    finally:
        workers.stop_all()
