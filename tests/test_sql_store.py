"""The SQL store under a runner: JSON, schema versions, bad rows, other readers."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import json
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError, OperationalError

import asyncjob
from asyncjob import JobState
from asyncjob.stores import Job
from asyncjob.stores.kit import MAX_BATCH
from asyncjob.stores.sql import SCHEMA_VERSION, BadRecord, SchemaError, SQLStore
from asyncjob.stores.sql._database import _to_the_end
from asyncjob.testing import make_job

from . import worker_jobs
from .conftest import TIMEOUT, Database, RunnerFactory, edit_by_hand


@pytest.fixture
async def sql_runner(make_runner: RunnerFactory, database: Database) -> asyncjob.Runner:
    """A running runner on an SQL store of each kind, made from its URL."""
    runner: asyncjob.Runner = await make_runner(database.async_url)
    assert isinstance(runner.store, SQLStore)
    return runner


@pytest.fixture
async def reader(database: Database) -> AsyncIterator[SQLStore]:
    """Another store object on the same database: what another process sees."""
    store = SQLStore(database.async_url, poll_interval=0.02)
    await store.open()
    yield store
    await store.close()


async def resize(path: str, width: int) -> dict[str, object]:
    """A job whose arguments and result are JSON."""
    asyncjob.set_progress(50, {"path": path})
    return {"path": path, "width": width}


async def test_perform_wait_and_read_back(sql_runner: asyncjob.Runner) -> None:
    """The whole round trip through the database."""
    job_id = await sql_runner.perform(resize, "cat.jpg", width=64)
    assert await sql_runner.wait(job_id, timeout=TIMEOUT) == {"path": "cat.jpg", "width": 64}
    status = await sql_runner.status(job_id)
    assert status.state is JobState.succeeded
    assert (status.progress, status.data) == (50, {"path": "cat.jpg"})
    assert status.enqueued_at is not None
    assert status.finished_at is not None
    assert status.enqueued_at.tzinfo is datetime.UTC


async def test_another_process_reads_status_and_progress(
    sql_runner: asyncjob.Runner, reader: SQLStore
) -> None:
    """A second store on the same database sees the job advance and end."""
    release = threading.Event()

    def job() -> str:
        asyncjob.set_progress(30, "a third")
        assert release.wait(TIMEOUT)
        return "done"

    job_id = await sql_runner.perform(job)
    seen: list[tuple[str, float | None]] = []
    async with asyncio.timeout(TIMEOUT):
        async for status in reader.watch(job_id):
            seen.append((status.state.value, status.progress))
            if status.progress == 30:
                release.set()
    last_state, last_progress = seen[-1]
    assert (last_state, last_progress) == ("succeeded", 30.0)
    assert any(state == "running" and progress == 30 for state, progress in seen)
    outcome = await reader.outcome(job_id)
    assert outcome is not None
    assert outcome.result == "done"


async def test_arguments_that_are_not_json_are_refused(
    sql_runner: asyncjob.Runner, reader: SQLStore
) -> None:
    """perform() refuses at once, naming the value; nothing is written."""
    with pytest.raises(TypeError, match=r"arguments of .*resize must be JSON.*\[0\].*datetime"):
        await sql_runner.perform(resize, datetime.datetime.now(), 1)
    with pytest.raises(TypeError, match=r"keyword arguments.*\['width'\].*set"):
        await sql_runner.perform(resize, "a", width={1})
    async with reader.db.read() as conn:
        count = await conn.scalar(text(f"SELECT count(*) FROM {reader.tables.jobs.name}"))
    assert count == 0


async def test_progress_data_that_is_not_json(sql_runner: asyncjob.Runner) -> None:
    """set_progress raises TypeError inside the job; the last good value stays."""

    async def job() -> None:
        asyncjob.set_progress(1, {"ok": True})
        asyncjob.set_progress(2, {"when": datetime.date.today()})

    job_id = await sql_runner.perform(job)
    with pytest.raises(asyncjob.JobFailed, match=r"progress data must be JSON.*\['when'\]"):
        await sql_runner.wait(job_id, timeout=TIMEOUT)
    status = await sql_runner.status(job_id)
    assert (status.progress, status.data) == (1, {"ok": True})


async def test_a_result_that_is_not_json_fails_the_job(sql_runner: asyncjob.Runner) -> None:
    """The job ends failed, with an error that names the value."""

    async def job() -> object:
        return {"made": object()}

    job_id = await sql_runner.perform(job)
    with pytest.raises(asyncjob.JobFailed, match=r"result must be JSON.*\['made'\].*object"):
        await sql_runner.wait(job_id, timeout=TIMEOUT)


class Unprintable:
    """A result whose ``repr`` needs what the job no longer has (a closed session)."""

    def __repr__(self) -> str:
        raise RuntimeError("detached")


class Abort(BaseException):
    """A framework's own way out of a call: not an ``Exception``."""


async def test_a_result_whose_repr_raises_fails_the_job(sql_runner: asyncjob.Runner) -> None:
    """The error that names a result JSON cannot hold called its ``repr``,
    which raised: the job stayed running, held and renewed by its worker,
    for as long as the worker ran. Now it fails, the error saying so."""

    async def job() -> object:
        return Unprintable()

    job_id = await sql_runner.perform(job)
    with pytest.raises(asyncjob.JobFailed, match=r"result must be JSON.*its repr\(\) raised"):
        await sql_runner.wait(job_id, timeout=TIMEOUT)
    await sql_runner.join(TIMEOUT)  # wait may hear of the end first, from the database
    assert isinstance(sql_runner.store, SQLStore)
    assert job_id not in sql_runner.store.held


@pytest.mark.parametrize("exc", [SystemExit(3), Abort("bye")])
async def test_a_coroutine_job_raising_what_is_not_an_exception_fails_alone(
    sql_runner: asyncjob.Runner, exc: BaseException
) -> None:
    """``sys.exit()`` in a coroutine job, or a ``BaseException`` of a
    framework's, ended the worker task: the job stayed running in the store
    for good. Now it is the job's failure, as in a sync job's thread."""

    async def job() -> None:
        raise exc

    job_id = await sql_runner.perform(job)
    with pytest.raises(asyncjob.JobFailed, match=type(exc).__name__):
        await sql_runner.wait(job_id, timeout=TIMEOUT)
    await sql_runner.join(TIMEOUT)  # wait may hear of the end first, from the database
    assert isinstance(sql_runner.store, SQLStore)
    assert job_id not in sql_runner.store.held
    again = await sql_runner.perform(resize, "a", 1)
    assert await sql_runner.wait(again, timeout=TIMEOUT) == {"path": "a", "width": 1}


async def test_a_job_found_lost_at_an_earlier_attempt_runs_on(database: Database) -> None:
    """The lease thread copies the jobs held, then renews them. A job that
    failed, was retried and claimed again here in between was found lost
    (its first attempt no longer held), and its second attempt stopped:
    cancelled, by nobody's wish (1 job in 1,000 quick retries on SQLite, 1
    in 100 on PostgreSQL). What that renewal reports is put here as it
    would be: only the attempt it asked about is lost."""
    store = SQLStore(database.async_url)
    await store.open()
    try:
        await store.enqueue(make_job("r1", registered=True))
        [first] = await store.claim(1)
        assert await store.retry("r1", error="ValueError: once", delay=0)
        [second] = await store.claim(1)
        assert (first.attempts, second.attempts) == (1, 2)
        assert store._leases is not None
        with store._leases._lock:  # the renewal that copied {"r1": 1}
            store._leases._lost.append(("r1", first.attempts))
        assert await store.renew() == []
        assert store.held == {"r1": 2}
        with store._leases._lock:  # one that asked about the attempt held now
            store._leases._lost.append(("r1", second.attempts))
        assert await store.renew() == ["r1"]
        assert store.held == {}
    finally:
        await store.close()


async def test_a_delayed_job_past_its_time_and_not_claimed_is_due(
    make_runner: RunnerFactory, database: Database
) -> None:
    """A delayed job whose time has come and that no worker has claimed
    yet (none free, or none takes its queue) is due: its status has no
    run_after, and the overview counts it waiting, as the memory store
    says (it showed its past time, and was counted as scheduled)."""
    producer = await make_runner(database.async_url, producer_only=True)  # claims nothing
    due = await producer.perform(asyncjob.using(worker_jobs.whoami, delay=3600), 1)
    await producer.perform(asyncjob.using(worker_jobs.whoami, delay=3600), 2)
    assert (await producer.status(due)).run_after is not None
    assert (await producer.overview()).scheduled == {"default": 2}
    await asyncio.to_thread(  # its time come, without waiting an hour
        edit_by_hand,
        database.sync_url,
        f"UPDATE asyncjob_jobs SET run_after = run_after - 7200 WHERE id = '{due}'",
    )
    status = await producer.status(due)
    assert (status.state, status.run_after) == (JobState.queued, None)
    overview = await producer.overview()
    assert (overview.waiting, overview.scheduled) == ({"default": 1}, {"default": 1})


async def test_many_progress_reports_few_writes(
    sql_runner: asyncjob.Runner, database: Database
) -> None:
    """Thousands of reports cost the database a handful of writes, and the
    last value is stored with the final state."""
    store = sql_runner.store
    assert isinstance(store, SQLStore)
    writes = 0

    def count(*args: object) -> None:
        nonlocal writes
        writes += "UPDATE" in str(args[2]) and "progress" in str(args[2])

    from sqlalchemy import event

    event.listen(store.db.engine, "before_cursor_execute", count)

    def job() -> None:
        for i in range(20_000):
            asyncjob.set_progress(i)

    job_id = await sql_runner.perform(job)
    await sql_runner.wait(job_id, timeout=TIMEOUT)
    assert (await sql_runner.status(job_id)).progress == 19_999
    assert writes < 200


async def test_a_newer_schema_is_refused(database: Database) -> None:
    """A store written by a newer release is refused, saying why."""
    first = SQLStore(database.async_url)
    await first.open()
    async with first.db.write() as conn:
        await conn.execute(first.tables.meta.update().values(value=str(SCHEMA_VERSION + 1)))
    await first.close()
    newer = SQLStore(database.async_url)
    with pytest.raises(SchemaError, match="written by a newer asyncjob"):
        await newer.open()
    await newer.close()  # nothing was left open: closing anyway is harmless


#: What version 1 had and version 2 changed: its indexes, and on PostgreSQL
#: a trigger that notified once per row.
VERSION_1 = [
    "CREATE INDEX asyncjob_jobs_claim ON asyncjob_jobs (state, run_after)",
    "CREATE INDEX asyncjob_jobs_finished ON asyncjob_jobs (finished_at)",
    "CREATE INDEX asyncjob_jobs_locked_by ON asyncjob_jobs (locked_by)",
]
VERSION_1_POSTGRES = [
    """CREATE FUNCTION asyncjob_jobs_notify() RETURNS trigger AS $$
    BEGIN
        PERFORM pg_notify('asyncjob_changed', NEW.id);
        IF NEW.state = 'queued' AND NEW.registered THEN
            PERFORM pg_notify('asyncjob_queued', '');
        END IF;
        RETURN NULL;
    END
    $$ LANGUAGE plpgsql""",
    "CREATE TRIGGER asyncjob_jobs_notify AFTER INSERT OR UPDATE ON asyncjob_jobs"
    " FOR EACH ROW EXECUTE FUNCTION asyncjob_jobs_notify()",
]


def version_2_postgres_triggers() -> list[str]:
    """The triggers version 2 made: once per statement, on the columns it had."""
    statements = []
    for event, rows in (
        ("insert", "SELECT n.id, n.state, n.registered FROM new_rows AS n"),
        (
            "update",
            "SELECT n.id, n.state, n.registered FROM new_rows AS n"
            " JOIN old_rows AS o ON o.id = n.id"
            " WHERE (n.state, n.progress, n.data, n.attempts)"
            " IS DISTINCT FROM (o.state, o.progress, o.data, o.attempts)",
        ),
    ):
        statements.append(f"""
            CREATE FUNCTION asyncjob_jobs_notify_{event}() RETURNS trigger AS $$
            DECLARE
                ids text;
                anew boolean := false;
            BEGIN
                FOR ids, anew IN
                    SELECT string_agg(c.id, ','), bool_or(c.state = 'queued' AND c.registered)
                    FROM (SELECT r.*, (row_number() OVER ()) / 200 AS part
                          FROM ({rows}) AS r) AS c
                    GROUP BY c.part
                LOOP
                    PERFORM pg_notify('asyncjob_changed', ids);
                    IF anew THEN
                        PERFORM pg_notify('asyncjob_queued', '');
                    END IF;
                END LOOP;
                RETURN NULL;
            END
            $$ LANGUAGE plpgsql""")
        old = " OLD TABLE AS old_rows" if event == "update" else ""
        statements.append(
            f"CREATE TRIGGER asyncjob_jobs_notify_{event} AFTER {event.upper()} ON asyncjob_jobs"
            f" REFERENCING{old} NEW TABLE AS new_rows"
            f" FOR EACH STATEMENT EXECUTE FUNCTION asyncjob_jobs_notify_{event}()"
        )
    return statements


#: A registered job queued by version 1 or 2, whose worker runs it after the upgrade.
QUEUED_BEFORE = (
    "INSERT INTO asyncjob_jobs (id, name, registered, state, args, kwargs, attempts,"
    " enqueued_at, run_after) VALUES ('{id}', 'tests.worker_jobs.whoami', true, 'queued',"
    " '[1]', '{{}}', 0, 0, 0)"
)


#: A registered job of version 3 or before, waiting for a retry far ahead.
WAITING_BEFORE = QUEUED_BEFORE.replace(", 0, 0)", ", 0, 9999999999)")


def store_of_version(database: Database, version: int, job_id: str, waiting: str) -> None:
    """Turn a store just made into what ``version`` (1 to 5) made, with a
    registered job queued, and another waiting for its retry."""
    postgres = database.kind == "postgresql"
    engine = create_engine(database.sync_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE asyncjob_jobs DROP COLUMN trace"))
            if version == 5:
                conn.execute(text(QUEUED_BEFORE.format(id=job_id)))
                scheduled = WAITING_BEFORE.format(id=waiting).replace("'queued'", "'scheduled'")
                conn.execute(text(scheduled))
                conn.execute(text("UPDATE asyncjob_meta SET value = '5'"))
                return
            conn.execute(text("DROP TABLE asyncjob_workers"))
            if version == 4:
                conn.execute(text(QUEUED_BEFORE.format(id=job_id)))
                scheduled = WAITING_BEFORE.format(id=waiting).replace("'queued'", "'scheduled'")
                conn.execute(text(scheduled))
                conn.execute(text("UPDATE asyncjob_meta SET value = '4'"))
                return
            for index in ("due", "due_by_queue", "scheduled", "unique"):
                conn.execute(text(f"DROP INDEX asyncjob_jobs_{index}"))
            for column in ("queue", "priority", "unique_key"):
                conn.execute(text(f"ALTER TABLE asyncjob_jobs DROP COLUMN {column}"))
            conn.execute(
                text(
                    "CREATE INDEX asyncjob_jobs_due ON asyncjob_jobs (run_after)"
                    " WHERE state = 'queued' AND registered"
                )
            )
            conn.execute(text(WAITING_BEFORE.format(id=waiting)))
            if version == 3:
                conn.execute(text(QUEUED_BEFORE.format(id=job_id)))
                conn.execute(text("UPDATE asyncjob_meta SET value = '3'"))
                return
            conn.execute(text("DROP INDEX asyncjob_jobs_listed"))
            conn.execute(text("ALTER TABLE asyncjob_jobs DROP COLUMN cancel_requested"))
            if postgres:
                for event in ("insert", "update"):
                    conn.execute(
                        text(f"DROP TRIGGER asyncjob_jobs_notify_{event} ON asyncjob_jobs")
                    )
                    conn.execute(text(f"DROP FUNCTION asyncjob_jobs_notify_{event}()"))
            if version == 1:
                for index in ("jobs_due", "jobs_leased", "jobs_ended"):
                    conn.execute(text(f"DROP INDEX asyncjob_{index}"))
                for statement in VERSION_1 + (VERSION_1_POSTGRES if postgres else []):
                    conn.execute(text(statement))
            elif postgres:
                for statement in version_2_postgres_triggers():
                    conn.execute(text(statement))
            conn.execute(text(QUEUED_BEFORE.format(id=job_id)))
            conn.execute(text(f"UPDATE asyncjob_meta SET value = '{version}'"))
    finally:
        engine.dispose()


def schema_of(database: Database) -> tuple[str, set[str], set[str], set[str]]:
    """The version, index names, trigger names and columns a store's tables have."""
    engine = create_engine(database.sync_url)
    try:
        with engine.connect() as conn:
            version = conn.scalar(text("SELECT value FROM asyncjob_meta"))
            if database.kind == "postgresql":
                indexes = "SELECT indexname FROM pg_indexes WHERE tablename = 'asyncjob_jobs'"
                triggers = "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal"
            else:
                indexes = "SELECT name FROM sqlite_master WHERE type = 'index'"
                triggers = "SELECT name FROM sqlite_master WHERE type = 'trigger'"
            index_names = set(conn.scalars(text(indexes)))
            trigger_names = set(conn.scalars(text(triggers)))
            columns = set(conn.execute(text("SELECT * FROM asyncjob_jobs LIMIT 0")).keys())
    finally:
        engine.dispose()
    index_names = {
        name
        for name in index_names
        if not name.startswith(("sqlite_", "asyncjob_jobs_pkey", "asyncjob_meta_pkey"))
    }
    return str(version), index_names, trigger_names, columns


@pytest.mark.parametrize("version", [1, 2, 3, 4, 5])
async def test_an_older_store_is_migrated(
    database: Database, make_runner: RunnerFactory, version: int
) -> None:
    """Opened by this release, a store that version 1 to 5 wrote is
    migrated to version 6 (partial indexes and, on PostgreSQL, one
    notification per statement since 2; a cancel requested, and listings
    indexed, since 3; queues, priorities, unique keys, and jobs waiting
    for their time out of the claim index since 4; workers' heartbeats
    since 5; the trace context a job was performed in since 6), and the
    job queued in it before the upgrade runs, as do new ones; the one
    waiting for its retry still waits."""
    made = SQLStore(database.async_url)
    await made.open()
    await made.close()
    queued = "q" * 32
    waiting = "w" * 32
    store_of_version(database, version, queued, waiting)
    producer = await make_runner(SQLStore(database.async_url), producer_only=True)
    job_id = await producer.perform(asyncjob.using(worker_jobs.whoami, priority=5), 2)
    version_now, indexes, triggers, columns = schema_of(database)
    assert version_now == str(SCHEMA_VERSION) == "6"
    assert indexes == {
        f"asyncjob_jobs_{name}"
        for name in (
            "due", "leased", "ended", "listed", "due_by_queue", "scheduled", "unique"
        )
    }  # fmt: skip
    assert {"cancel_requested", "queue", "priority", "unique_key", "trace"} <= columns
    before = await producer.status(queued)
    assert (before.queue, before.priority, before.run_after) == ("default", 0, None)
    later = await producer.status(waiting)
    assert later.state is JobState.queued
    assert later.run_after is not None
    assert later.run_after.year > 2200
    if database.kind == "postgresql":
        assert triggers == {"asyncjob_jobs_notify_insert", "asyncjob_jobs_notify_update"}
    else:
        assert triggers == set()
    assert (await producer.status(queued)).cancel_requested is False
    worker = await make_runner(SQLStore(database.async_url, poll_interval=0.05))
    assert [w.concurrency for w in await worker.workers()] == [worker.options.concurrency]
    assert (await worker.wait(queued, timeout=TIMEOUT))["n"] == 1
    assert (await worker.wait(job_id, timeout=TIMEOUT))["n"] == 2
    assert (await worker.status(waiting)).state is JobState.queued


async def test_rows_edited_into_nonsense(sql_runner: asyncjob.Runner, database: Database) -> None:
    """Bad JSON or an unknown state: a clear error naming the job; the
    runner carries on with other jobs."""
    good = await sql_runner.perform(resize, "a", 1)
    await sql_runner.wait(good, timeout=TIMEOUT)
    bad_json = await sql_runner.perform(resize, "b", 2)
    await sql_runner.wait(bad_json, timeout=TIMEOUT)
    bad_state = await sql_runner.perform(resize, "c", 3)
    await sql_runner.wait(bad_state, timeout=TIMEOUT)

    def edit_by_hand() -> None:
        engine = create_engine(database.sync_url)
        with engine.begin() as conn:
            conn.execute(
                text(f"UPDATE asyncjob_jobs SET result = '{{nope' WHERE id = '{bad_json}'")
            )
            conn.execute(text(f"UPDATE asyncjob_jobs SET state = 'lost' WHERE id = '{bad_state}'"))
        engine.dispose()

    # In a thread: a blocking write on the loop would wait, with the loop
    # stopped, for a write of the runner's that needs the loop to finish.
    await asyncio.to_thread(edit_by_hand)
    with pytest.raises(BadRecord, match=f"job {bad_json} holds invalid JSON in its result"):
        await sql_runner.status(bad_json)
    with pytest.raises(BadRecord, match=f"job {bad_state} has the state 'lost'"):
        await sql_runner.wait(bad_state, timeout=TIMEOUT)
    again = await sql_runner.perform(resize, "d", 4)
    assert await sql_runner.wait(again, timeout=TIMEOUT) == {"path": "d", "width": 4}


async def test_cancel_through_the_database(sql_runner: asyncjob.Runner) -> None:
    """Cancelling a running job is stored, and the job is stopped."""
    started = asyncio.Event()

    async def job() -> None:
        started.set()
        await asyncio.Event().wait()

    job_id = await sql_runner.perform(job)
    async with asyncio.timeout(TIMEOUT):
        await started.wait()
    assert await sql_runner.cancel(job_id)
    with pytest.raises(asyncjob.JobCancelled):
        await sql_runner.wait(job_id, timeout=TIMEOUT)
    assert await sql_runner.cancel(job_id) is False
    assert await sql_runner.cancel("nope") is False


async def test_a_job_id_recorded_twice_fails_alone(database: Database) -> None:
    """A job id the table holds already (asyncjob never makes one twice; an
    integration may choose its own) is refused with a ValueError, raised
    from SQLAlchemy's error whatever the driver underneath; the jobs written
    in the same statement are recorded, and the store carries on."""
    store = SQLStore(database.async_url)
    await store.open()
    try:
        first = Job("0" * 32, "tests.area", print, (), {}, False, time.time(), True)
        await store.enqueue(first)
        second, third = first._replace(id="1" * 32), first._replace(id="2" * 32)
        outcomes = await asyncio.gather(
            store.enqueue(second), store.enqueue(first), store.enqueue(third),
            return_exceptions=True,
        )  # fmt: skip
        assert outcomes[0] == second.id
        assert outcomes[2] == third.id
        assert isinstance(outcomes[1], ValueError)
        assert "exists already" in str(outcomes[1])
        assert isinstance(outcomes[1].__cause__, IntegrityError)
        for job in (first, second, third):
            assert await store.get(job.id) is not None
    finally:
        await store.close()


async def test_an_attempt_claimed_again_while_it_ran_here_is_not_given_out_twice(
    database: Database,
) -> None:
    """A job is claimed again while an attempt of it runs here (its lease
    taken back while the worker was late), and handed back: its number is
    not given out again, so that the end of the attempt running here, which
    carries that number, cannot end the attempt claimed next."""
    store = SQLStore(database.async_url)
    await store.open()
    try:
        job = Job("3" * 32, "tests.area", print, (), {}, False, time.time(), True)
        await store.enqueue(job)
        requeue = (
            f"UPDATE {store.tables.jobs.name} SET state = 'queued', locked_by = NULL,"
            f" lease_expires_at = NULL WHERE id = '{job.id}'"
        )
        [first] = await store.claim(1)
        await asyncio.to_thread(edit_by_hand, database.sync_url, requeue)
        [again] = await store.claim(1)  # while the first runs here
        await store.release([job.id])  # handed back: it runs here already
        ending = store._ending(job.id, JobState.succeeded, "late", None, None)
        [after] = await store.claim(1)
        assert (first.attempts, again.attempts, after.attempts) == (1, 2, 3)
        assert await store._dialect.finish([ending]) == [None]
        assert await store.finish(job.id, JobState.succeeded, result="next") is True
        status = await store.get(job.id)
        assert status is not None
        assert status.result == "next"
        # Handed back for another reason (a worker stopping), an attempt
        # does not count.
        other = job._replace(id="4" * 32)
        await store.enqueue(other)
        [claimed] = await store.claim(1)
        await store.release([other.id])
        [claimed_again] = await store.claim(1)
        assert claimed.attempts == claimed_again.attempts == 1
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"poll_interval": 0}, "poll_interval must be a finite number of seconds > 0, not 0"),
        ({"lease": -1}, "lease must be a finite number of seconds > 0"),
        # A lease that never runs out leaves a dead worker's jobs running for good.
        ({"lease": float("inf")}, "lease must be a finite number of seconds > 0, not inf"),
        ({"poll_interval": float("nan")}, "poll_interval must be a finite number"),
    ],
)
def test_bad_options(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SQLStore("sqlite+aiosqlite:///x.db", **options)


async def _listening(store: SQLStore) -> None:
    listener = store._listener
    assert listener is not None
    async with asyncio.timeout(TIMEOUT):
        await listener.listening.wait()


async def test_postgres_pushes_changes_to_other_processes(
    make_runner: RunnerFactory, postgres_db: Database
) -> None:
    """With polls 60 s apart, a watcher elsewhere and a worker elsewhere still
    hear of a job at once: NOTIFY, sent by the table's triggers. A process
    listens only for what it needs: a producer that watches nothing, not at
    all; a watcher, from its first watch on."""
    url = postgres_db.async_url
    worker = await make_runner(SQLStore(url, poll_interval=60.0))
    producer = await make_runner(SQLStore(url, poll_interval=60.0), producer_only=True)
    watcher = SQLStore(url, poll_interval=60.0)
    await watcher.open()
    try:
        assert isinstance(worker.store, SQLStore)
        assert isinstance(producer.store, SQLStore)
        await _listening(worker.store)
        assert producer.store._listener is not None
        assert watcher._listener is not None
        assert producer.store._listener.connections == watcher._listener.connections == 0
        job_id = await producer.perform(worker_jobs.whoami, 3)
        states = []
        async with asyncio.timeout(TIMEOUT):
            async for status in watcher.watch(job_id):
                states.append(status.state.value)
        assert states[-1] == "succeeded"
        assert watcher._listener.connections == 1
        assert producer.store._listener.connections == 0
    finally:
        await watcher.close()


async def test_postgres_listens_again_after_losing_its_connection(
    make_runner: RunnerFactory, postgres_db: Database
) -> None:
    """The listening connection killed: it is opened again, and pushes resume."""
    runner = await make_runner(SQLStore(postgres_db.async_url, poll_interval=60.0))
    store = runner.store
    assert isinstance(store, SQLStore)
    await _listening(store)
    listener = store._listener
    assert listener is not None
    before = listener.connections
    async with store.db.write() as conn:
        await conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND query LIKE 'LISTEN%'"
            )
        )
    async with asyncio.timeout(TIMEOUT):
        while listener.connections == before:  # noqa: ASYNC110 - it reconnects on its own
            await asyncio.sleep(0.01)
    await _listening(store)
    job_id = await runner.perform(worker_jobs.whoami, 4)
    assert (await runner.wait(job_id, timeout=TIMEOUT))["n"] == 4


#: Queued jobs in the plan test: enough that the planners would rather
#: scan and sort than read an index, if the index could not serve.
PLANNED = 50_000


@pytest.mark.parametrize("analyzed", [True, False], ids=["analyzed", "stale-statistics"])
@pytest.mark.parametrize(
    ("queues", "limits"),
    [
        (None, None),
        (frozenset({"q1"}), None),
        (frozenset({"q1", "q2"}), None),
        (None, {"tests.job": 3}),
    ],
)
async def test_a_claim_reads_its_index_in_order(
    database: Database,
    queues: frozenset[str] | None,
    limits: dict[str, int] | None,
    analyzed: bool,
) -> None:
    """With many jobs queued over priorities and queues, the planner takes a
    claim's jobs from a claim index, in its order, and stops at the claim's
    size: no scan of the table and no sort of its rows, whatever the number
    queued. (On PostgreSQL, a worker of several queues reads each queue's
    index, then the first of their heads.)

    Also when the statistics say the jobs are few (a burst arrived since
    the table was analyzed): PostgreSQL's planner then chose to read every
    queued row and sort them, at each claim."""
    store = SQLStore(database.async_url)
    await store.open()
    try:
        jobs = store.tables.jobs.name
        numbers = (
            f"generate_series(1, {PLANNED}) AS g(n)"
            if database.kind == "postgresql"
            else f"(WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g "
            f"WHERE n < {PLANNED}) SELECT n FROM g)"
        )
        true = "true" if database.kind == "postgresql" else "1"
        edit_by_hand(
            database.sync_url,
            f"INSERT INTO {jobs} (id, name, registered, state, args, kwargs, attempts, "
            f"enqueued_at, run_after, queue, priority) SELECT 'j' || n, 'tests.job', {true}, "
            f"'queued', '[]', '{{}}', 0, n, n, 'q' || (n % 5), (n % 10) * 10 - 40 FROM {numbers}",
            *([f"ANALYZE {jobs}"] if analyzed else []),
        )
        sql, values = store._dialect.claim_statement(100, 30.0, queues, limits)
        index = (
            "jobs_due_by_queue"
            if queues is not None and (len(queues) == 1 or database.kind == "postgresql")
            else "jobs_due"
        )
        if database.kind == "postgresql":
            from asyncjob.stores.sql._postgres import CLAIMS, DirectConnection

            direct = DirectConnection(database.async_url, settings=CLAIMS)  # the claims' own
            try:
                plan = [row[0] for row in await direct.fetch(f"EXPLAIN {sql}", *values)]
            finally:
                await direct.close()
            text_ = "\n".join(plan)
            assert f"Index Scan using asyncjob_{index} on {jobs}" in text_, text_
            scans = [line for line in plan if "Seq Scan" in line]
            if limits is not None and not analyzed:
                # The running jobs of a limited name are counted through the
                # index of leased jobs, which the planner, told by stale
                # statistics that the table is small, reads whole instead
                # (as it does for renewals and recovery): until the next
                # analyze. The claim itself still reads its index in order.
                scans = [line for line in scans if f"Seq Scan on {jobs} r " not in line]
            assert not scans, text_
            assert "Bitmap" not in text_, text_
            sorts = [line for line in plan if "Sort Key" in line]
            # Only sorts of a few hundred rows: the picked, by name, for the
            # limits; the heads of each queue, for a worker of several.
            assert all("p.name" in line or "q0.priority" in line for line in sorts), text_
        else:
            path = database.sync_url.removeprefix("sqlite:///")
            with contextlib.closing(sqlite3.connect(path)) as conn:
                params = {f"p{n}": value for n, value in enumerate(values, 1)}
                plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
            text_ = "\n".join(plan)
            assert f"USING INDEX asyncjob_{index}" in text_, text_
            sorts = [line for line in plan if "TEMP B-TREE" in line]
            # Only sorts of a few hundred rows: with limits, the picked, by
            # name; for a worker of several queues, the heads of each.
            assert limits is not None or (queues is not None and len(queues) > 1) or not sorts, (
                text_
            )
            scans = [line for line in plan if line.startswith(f"SCAN {jobs}")]
            assert all("USING INDEX" in line for line in scans), text_
            # The rows chosen are found again by their rowid, not by a second
            # look-up of their ids in the primary key's index.
            assert f"SEARCH {jobs} USING INTEGER PRIMARY KEY (rowid=?)" in plan, text_
            assert "sqlite_autoindex" not in text_, text_
    finally:
        await store.close()


async def test_sqlite_waits_for_a_writer_in_the_default_journal_mode(tmp_path: Path) -> None:
    """The application created the file and writes it in SQLite's default
    mode (its own tables, at start): the store opening it waits for the
    write to end before turning on WAL mode, which SQLite does not wait for
    by itself ("database is locked" at once)."""
    path = tmp_path / "app.db"
    app = sqlite3.connect(path, isolation_level=None)
    app.execute("BEGIN IMMEDIATE")
    app.execute("CREATE TABLE app_users (id INTEGER PRIMARY KEY)")
    store = SQLStore(f"sqlite+aiosqlite:///{path}")
    opening = asyncio.ensure_future(store.open())
    try:
        done, _ = await asyncio.wait({opening}, timeout=0.3)
        assert not done, opening.exception()  # waiting, not failed
        app.execute("COMMIT")
        async with asyncio.timeout(TIMEOUT):
            await opening
        assert await store.list_jobs(asyncjob.stores.JobQuery()) == []
    finally:
        app.close()
        await store.close()


async def test_a_crowded_queue_hides_no_other_in_the_overview(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counts stop at their cap queue by queue: a queue past it does not
    hide the others' jobs (it did, when the first rows of the whole index
    were counted), and ``capped`` says a count stopped."""
    monkeypatch.setattr("asyncjob.stores.sql._store.COUNT_CAP", 3)
    store = SQLStore(database.async_url)
    await store.open()
    try:
        for n in range(5):
            await store.enqueue(make_job(f"a{n}", registered=True, queue="a-crowded"))
        await store.enqueue(make_job("b0", registered=True, queue="b-quiet"))
        seen = await store.overview()
    finally:
        await store.close()
    assert (seen.waiting, seen.capped) == ({"a-crowded": 3, "b-quiet": 1}, True)
    assert sorted(seen.due_since) == ["a-crowded", "b-quiet"]


async def test_a_rare_filter_pages_through_a_bounded_window(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A filtered page looks at LIST_WINDOW jobs at most: short pages, with
    ``next`` where it stopped, until the jobs run out; the matches all
    found, in order."""
    monkeypatch.setattr("asyncjob.stores.sql._store.LIST_WINDOW", 4)
    store = SQLStore(database.async_url)
    await store.open()
    try:
        now = time.time()
        for n in range(10):
            name = "tests.rare" if n in (0, 1) else "tests.common"
            await store.enqueue(make_job(f"w{n}", at=now + n, name=name))
        query = asyncjob.stores.JobQuery(name="tests.rare", limit=5)
        pages = [await store.list_page(query)]
        while pages[-1].next is not None and len(pages) < 10:
            pages.append(await store.list_page(dataclasses.replace(query, before=pages[-1].next)))
    finally:
        await store.close()
    assert [[s.id for s in page.jobs] for page in pages] == [[], [], ["w1", "w0"]]
    assert [page.next for page in pages[:2]] == ["w6", "w2"]  # each window's last
    assert pages[-1].next is None


async def test_a_batch_of_ends_finds_its_jobs_by_their_key(postgres_db: Database) -> None:
    """A batch of ends on PostgreSQL reads each of its jobs through the
    primary key, also when the statistics say few jobs run (a burst since
    the table was analyzed): the planner then chose to read the whole table
    at each batch and match every running job against every end (2.5 s for
    500 ends with 20,000 jobs running), and a worker whose ends fell behind
    that way fell further behind."""
    from asyncjob.stores.sql._dialect import Ending
    from asyncjob.stores.sql._postgres import WRITES, DirectConnection

    store = SQLStore(postgres_db.async_url)
    await store.open()
    try:
        jobs = store.tables.jobs.name
        edit_by_hand(
            postgres_db.sync_url,
            f"INSERT INTO {jobs} (id, name, registered, state, args, kwargs, attempts, "
            f"enqueued_at, run_after, queue, priority, locked_by, lease_expires_at) "
            f"SELECT 'j' || n, 'tests.job', true, 'running', '[]', '{{}}', 1, n, n, "
            f"'default', 0, 'w', 1e10 FROM generate_series(1, 20000) AS g(n)",
        )
        ends = [
            Ending(f"j{n}", "succeeded", "null", None, None, time.time(), None, 1)
            for n in range(1, 501)
        ]
        direct = DirectConnection(postgres_db.async_url, settings=WRITES)  # the ends' own
        try:
            explained = await direct.fetch(
                f"EXPLAIN {store._dialect._finish}",  # type: ignore[attr-defined]
                json.dumps(ends),
                "w",
            )
        finally:
            await direct.close()
        plan = "\n".join(row[0] for row in explained)
        assert f"Index Scan using {jobs}_pkey on {jobs}" in plan, plan
        assert "Seq Scan" not in plan, plan
    finally:
        await store.close()


async def test_sqlite_ends_are_one_statement_that_finds_each_job_by_id(tmp_path: Path) -> None:
    """On SQLite, a batch of ends is one statement (its rows bound in a
    ``VALUES`` list, so that the writing thread keeps the GIL while SQLite
    writes them all), which finds each job once through the primary key's
    index and reads no other row of the table."""
    store = SQLStore(f"sqlite+aiosqlite:///{tmp_path / 'jobs.db'}")
    await store.open()
    try:
        plans = {}
        with contextlib.closing(sqlite3.connect(tmp_path / "jobs.db")) as conn:
            for rows in (1, 64):
                statement = store._dialect._end_sql(rows)  # type: ignore[attr-defined]
                values = [None] * statement.count("?")
                explained = conn.execute(f"EXPLAIN QUERY PLAN {statement}", values)
                plans[rows] = [row[3] for row in explained]
    finally:
        await store.close()
    jobs = store.tables.jobs.name
    for plan in plans.values():
        assert [step for step in plan if jobs in step] == [
            f"SEARCH {jobs} USING INDEX sqlite_autoindex_{jobs}_1 (id=?)"
        ]


async def test_sqlite_ends_past_the_statements_room_go_in_several(tmp_path: Path) -> None:
    """A batch of ends with more values than a statement of SQLite may bind
    goes in several statements (here SQLite's limit lowered to 25 values,
    two ends a statement), each end written or refused as it would be
    alone: a job no longer held, or held for a later attempt, is not ended."""
    store = SQLStore(f"sqlite+aiosqlite:///{tmp_path / 'jobs.db'}")
    await store.open()
    try:
        writer = store._dialect._open_writer()  # type: ignore[attr-defined]
        limit = await writer.read(
            lambda conn: conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 25)
        )
        jobs = [
            Job(f"{n:032d}", "tests.area", print, (), {}, False, time.time(), True)
            for n in range(7)
        ]
        await store.enqueue_many(jobs)
        claimed = await store.claim(7)
        assert len(claimed) == 7
        store.report_progress(jobs[2].id, 50.0, {"step": 2})
        endings = [
            store._ending(job.id, JobState.succeeded, n, None, None) for n, job in enumerate(jobs)
        ]
        endings[3] = endings[3]._replace(attempt=2)  # an attempt that is not the one held
        endings[5] = endings[5]._replace(job_id="not held")
        endings[6] = endings[6]._replace(
            state=JobState.failed.value, result=None, error="E: bad", traceback="tb"
        )
        written = await store._dialect.finish(endings)
        ok, failed = JobState.succeeded.value, JobState.failed.value
        assert written == [ok, ok, ok, None, ok, None, failed]
        statuses = {job.id: await store.get(job.id) for job in jobs}
        assert [s.state if s else None for s in statuses.values()] == [
            JobState.succeeded, JobState.succeeded, JobState.succeeded, JobState.running,
            JobState.succeeded, JobState.running, JobState.failed,
        ]  # fmt: skip
        third, last = statuses[jobs[2].id], statuses[jobs[6].id]
        assert third is not None
        assert last is not None
        assert (third.result, third.progress, third.data) == (2, 50.0, {"step": 2})
        assert (last.error, last.traceback, last.result) == ("E: bad", "tb", None)
        assert limit > 25
    finally:
        await store.close()


async def test_sqlite_performs_are_a_few_statements_of_many_rows(tmp_path: Path) -> None:
    """On SQLite, a batch of performs is written by statements of a power
    of two of rows each, the largest that fit (not a statement a row, each
    of which gave the GIL up to a busy loop): 500 jobs in six statements,
    every job as it was performed."""
    store = SQLStore(f"sqlite+aiosqlite:///{tmp_path / 'jobs.db'}")
    await store.open()
    try:
        writer = store._dialect._open_writer()  # type: ignore[attr-defined]
        statements: list[str] = []
        await writer.read(lambda conn: conn.set_trace_callback(statements.append))
        jobs = [
            make_job(f"{n:032d}", at=1e9 + n, queue=f"q{n % 3}", priority=n % 7) for n in range(500)
        ]
        assert await store.enqueue_many(jobs) == [job.id for job in jobs]
        await writer.read(lambda conn: conn.set_trace_callback(None))
        inserts = [sql for sql in statements if sql.lstrip().startswith("INSERT")]
        assert [sql.count("), (") + 1 for sql in inserts] == [256, 128, 64, 32, 16, 4]
        listed = await store.list_jobs(asyncjob.stores.JobQuery(limit=500))
        assert [(s.id, s.queue, s.priority) for s in reversed(listed)] == [
            (job.id, f"q{n % 3}", n % 7) for n, job in enumerate(jobs)
        ]
    finally:
        await store.close()


async def test_sqlite_performs_past_the_statements_room_go_in_several(tmp_path: Path) -> None:
    """A batch of performs with more values than a statement of SQLite may
    bind goes in several statements (here SQLite's limit lowered to 40
    values: two jobs a statement), all in one transaction: a job that
    cannot be written (its id taken) writes none of the batch."""
    store = SQLStore(f"sqlite+aiosqlite:///{tmp_path / 'jobs.db'}")
    await store.open()
    try:
        writer = store._dialect._open_writer()  # type: ignore[attr-defined]
        await writer.read(lambda conn: conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 40))
        jobs = [make_job(f"{n:032d}", at=1e9 + n) for n in range(7)]
        assert await store.enqueue_many(jobs) == [job.id for job in jobs]
        assert [s.id for s in await store.list_jobs(asyncjob.stores.JobQuery())] == [
            job.id for job in reversed(jobs)
        ]
        batch = [make_job(f"{n:032d}") for n in range(100, 105)] + [jobs[0]]
        with pytest.raises(ValueError, match="nothing was recorded"):
            await store.enqueue_many(batch)
        for job in batch[:-1]:
            assert await store.get(job.id) is None
        assert len(await store.list_jobs(asyncjob.stores.JobQuery())) == 7
    finally:
        await store.close()


async def test_sqlite_writes_follow_each_other_into_the_thread(tmp_path: Path) -> None:
    """The store's writing thread keeps its turn to write for the writes
    that come while one of its own is under way: each is handed to the
    thread at once, not once the loop has seen the one before end (the
    claims of a busy worker waited there behind the ends, its loop idle
    meanwhile). Another writer of the store, waiting for its turn, gets it
    before the writes that come after it."""
    from asyncjob.stores.sql._dialect import WriteLock
    from asyncjob.stores.sql._sqlite import PRAGMAS, WriterThread

    lock = WriteLock()
    writer = WriterThread(str(tmp_path / "app.db"), PRAGMAS, lock)
    order: list[str] = []
    gate = threading.Event()

    def first(conn: sqlite3.Connection) -> None:
        gate.wait(TIMEOUT)
        order.append("first")

    def noted(name: str) -> Any:
        return lambda conn: order.append(name)

    async def another_writer() -> None:
        async with lock:
            order.append("another writer")

    try:
        await writer.connect()
        writes = [asyncio.ensure_future(writer.write(first))]
        await asyncio.sleep(0)  # each task runs to where it waits
        writes.append(asyncio.ensure_future(writer.write(noted("second"))))
        await asyncio.sleep(0)
        assert writer._busy == 2  # both in the thread's hands, the first under way
        writes.append(asyncio.ensure_future(another_writer()))
        await asyncio.sleep(0)
        assert lock.waiting == 1
        writes.append(asyncio.ensure_future(writer.write(noted("third"))))
        await asyncio.sleep(0)
        assert lock.waiting == 2  # behind the other writer
        gate.set()
        async with asyncio.timeout(TIMEOUT):
            await asyncio.gather(*writes)
        assert order == ["first", "second", "another writer", "third"]
        assert not lock.locked()
        # A write that fails gives the turn back all the same.
        with pytest.raises(OperationalError, match="syntax error"):
            await writer.write(lambda conn: conn.execute("nonsense"))
        assert not lock.locked()
    finally:
        gate.set()
        await writer.close()


class _GatedEnds(SQLStore):
    """An SQL store whose ends wait for ``gate`` before they are written."""

    def __init__(self, url: str) -> None:
        super().__init__(url, poll_interval=0.05)
        self.gate = asyncio.Event()

    async def _finish(self, endings: list[Any]) -> list[str | Exception | None]:
        await self.gate.wait()
        return await super()._finish(endings)


_ran: dict[str, asyncio.Event] = {}


@asyncjob.job(name="tests.sql_store.noted")
async def noted(key: str) -> str:
    _ran[key].set()
    return key


async def test_a_worker_goes_on_while_an_end_is_written(
    make_runner: RunnerFactory, database: Database
) -> None:
    """A success's end goes to the store's group commit and the worker to
    its next job at once; the job counts as done (join, stop) only once its
    end is written."""
    store = _GatedEnds(database.async_url)
    runner = await make_runner(store, concurrency=1)
    _ran.update(a=asyncio.Event(), b=asyncio.Event())
    first = await runner.perform(noted, "a")
    second = await runner.perform(noted, "b")
    async with asyncio.timeout(TIMEOUT):
        await _ran["a"].wait()
        await _ran["b"].wait()  # while a's end waits to be written
    joined = asyncio.ensure_future(runner.join())
    for _ in range(20):
        await asyncio.sleep(0)  # turns of the loop, for join to come back if it would
    assert not joined.done()
    assert (await runner.status(first)).state is JobState.running
    store.gate.set()
    async with asyncio.timeout(TIMEOUT):
        await joined
    for job_id, key in ((first, "a"), (second, "b")):
        status = await runner.status(job_id)
        assert (status.state, status.result) == (JobState.succeeded, key)


class _CountedGatedEnds(_GatedEnds):
    """Ends gated, and each one handed over counted (``handed`` is set at
    the ``expected``-th)."""

    def __init__(self, url: str, expected: int) -> None:
        super().__init__(url)
        self.expected, self.count, self.handed = expected, 0, asyncio.Event()

    def finish_soon(self, *args: Any, **kwargs: Any) -> None:
        super().finish_soon(*args, **kwargs)
        self.count += 1
        if self.count == self.expected:
            self.handed.set()


@dataclasses.dataclass
class _Count:
    """How many ``counted`` jobs ran; ``enough`` is set at the ``wanted``-th."""

    wanted: int
    ran: int = 0
    enough: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)


_count = _Count(0)


@asyncjob.job(name="tests.sql_store.counted")
async def counted() -> None:
    _count.ran += 1
    if _count.ran == _count.wanted:
        _count.enough.set()


async def test_ends_waiting_to_be_written_hold_the_worker_back(
    make_runner: RunnerFactory, database: Database
) -> None:
    """A worker goes on while ends wait to be written, but no further than
    a full batch of them (the group commit's): past that, a job's slot
    frees only once its end is written, so that a database slow to write
    ends holds the worker back instead of letting a backlog grow."""
    ahead = MAX_BATCH  # with a concurrency under it
    store = _CountedGatedEnds(database.async_url, expected=ahead + 1)
    runner = await make_runner(store, concurrency=1)
    _count.wanted, _count.ran, _count.enough = ahead + 2, 0, asyncio.Event()
    ids = await runner.perform_many(counted, [()] * (ahead + 2))
    async with asyncio.timeout(TIMEOUT):
        await store.handed.wait()  # ahead + 1 ends wait to be written
    # The slot is taken until one of them is written: the last job cannot
    # start, and the worker claims nothing more. (Checked at once: nothing
    # else can free it while the gate is shut.)
    assert runner._engine.free == 0
    assert _count.ran == ahead + 1
    store.gate.set()
    async with asyncio.timeout(TIMEOUT):
        await _count.enough.wait()
        await runner.join()
    states = {(await runner.status(job_id)).state for job_id in ids}
    assert states == {JobState.succeeded}


async def test_a_stopping_runner_writes_the_ends_still_pending(database: Database) -> None:
    """An end still waiting to be written when the runner stops is written
    before the store closes."""
    store = _GatedEnds(database.async_url)
    runner = asyncjob.Runner(store)
    _ran["c"] = asyncio.Event()
    async with runner:
        job_id = await runner.perform(noted, "c")
        async with asyncio.timeout(TIMEOUT):
            await _ran["c"].wait()
        asyncio.get_running_loop().call_soon(store.gate.set)
    reader = SQLStore(database.async_url)
    await reader.open()
    try:
        outcome = await reader.outcome(job_id)
    finally:
        await reader.close()
    assert outcome is not None
    assert (outcome.state, outcome.result) == (JobState.succeeded, "c")


class _EndsLost(SQLStore):
    """An SQL store whose ends cannot be written (the database went away)."""

    async def _finish(self, endings: list[Any]) -> list[str | Exception | None]:
        raise ConnectionError("the database went away")


async def test_an_end_that_cannot_be_written_is_logged_and_run_again(
    make_runner: RunnerFactory, database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """A success whose end the store cannot write is logged, counts as
    done here (join does not hang), and stays running in the store, to run
    again elsewhere once its lease runs out."""
    store = _EndsLost(database.async_url, poll_interval=0.05)
    runner = await make_runner(store)
    _ran["lost"] = asyncio.Event()
    job_id = await runner.perform(noted, "lost")
    async with asyncio.timeout(TIMEOUT):
        await _ran["lost"].wait()  # claimed and run: join waits for it from then on
        await runner.join()
    assert f"could not record how job {job_id} ended" in caplog.text
    assert "the database went away" in caplog.text
    assert (await runner.status(job_id)).state is JobState.running
    assert job_id not in store.held  # no longer renewed: its lease runs out


_AWKWARD = 'é€😀 a\x00b \\ud800 \\u0000 "quoted"'


@asyncjob.job(name="tests.sql_store.awkward")
async def awkward() -> dict[str, Any]:
    asyncjob.set_progress(50, {"note": _AWKWARD})
    return {"text": _AWKWARD, "n": 1.5}


async def test_an_end_keeps_awkward_text_exactly(sql_runner: asyncjob.Runner) -> None:
    """A success's result and last progress data go through the batch of
    ends (one JSON text on PostgreSQL) and come back exactly: non-ASCII
    text, NUL, backslashes that look like escapes, quotes."""
    job_id = await sql_runner.perform(awkward)
    assert await sql_runner.wait(job_id, timeout=TIMEOUT) == {"text": _AWKWARD, "n": 1.5}
    status = await sql_runner.status(job_id)
    assert (status.progress, status.data) == (50, {"note": _AWKWARD})


@asyncjob.job(name="tests.sql_store.given_back")
async def given_back(text: str, *, more: str = "") -> list[str]:
    return [text, more]


async def test_a_perform_keeps_awkward_text_exactly(sql_runner: asyncjob.Runner) -> None:
    """Arguments go through the batch of performs (one JSON text on
    PostgreSQL) and reach the job exactly."""
    ids = await sql_runner.perform_many(given_back, [(_AWKWARD,), {"text": "x", "more": _AWKWARD}])
    ids.append(await sql_runner.perform(given_back, _AWKWARD, more=_AWKWARD))
    results = [await sql_runner.wait(job_id, timeout=TIMEOUT) for job_id in ids]
    assert results == [[_AWKWARD, ""], ["x", _AWKWARD], [_AWKWARD, _AWKWARD]]


async def test_sqlite_due_times_are_the_databases_to_the_bit(sqlite_db: Database) -> None:
    """A new job's due time on SQLite is computed in the process: it must
    be a time SQLite's own ``now`` can be (its millisecond, through
    julianday), or a worker waking for a due time finds the job not due
    yet, and comes back a moment later."""
    from asyncjob.stores.sql._sqlite import SQLiteDialect, sqlite_now

    with contextlib.closing(sqlite3.connect(":memory:")) as conn:
        compared = 0
        for _ in range(1000):
            before = sqlite_now()
            database = conn.execute(f"SELECT {SQLiteDialect.now_sql}").fetchone()[0]
            if sqlite_now() == before:  # the same millisecond throughout
                assert database == before
                compared += 1
        assert compared > 0
    async with asyncjob.Runner(SQLStore(sqlite_db.async_url), producer_only=True) as runner:
        job_id = await runner.perform(asyncjob.using(worker_jobs.whoami, delay=0.25), 1)
    with contextlib.closing(sqlite3.connect(sqlite_db.async_url.split("///", 1)[1])) as conn:
        [due] = conn.execute(
            "SELECT run_after FROM asyncjob_jobs WHERE id = ?", (job_id,)
        ).fetchone()
    # The same millisecond through SQLite's own arithmetic ('unixepoch'
    # rounds to its millisecond, as 'now' reads it).
    with contextlib.closing(sqlite3.connect(":memory:")) as conn:
        [performed] = conn.execute(
            "SELECT (julianday(?, 'unixepoch') - 2440587.5) * 86400.0", (due - 0.25,)
        ).fetchone()
    assert due == performed + 0.25


@pytest.mark.parametrize(
    ("url", "not_loaded"),
    [
        ("postgresql+asyncpg://nobody@127.0.0.1:1/none", "sqlite3"),
        ("sqlite+aiosqlite:///none.db", "asyncjob.stores.sql._postgres"),
    ],
)
def test_a_store_loads_only_its_own_databases_dialect(url: str, not_loaded: str) -> None:
    """Each dialect is imported when a store uses it: a worker on
    PostgreSQL does not load sqlite3 (a megabyte of its idle memory)."""
    code = (
        "import sys\n"
        "from asyncjob.stores.sql import SQLStore\n"
        f"SQLStore({url!r})\n"
        f"print({not_loaded!r} in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=TIMEOUT * 3, check=True)  # fmt: skip
    assert done.stdout.strip() == "False"


async def test_a_connections_cleanup_runs_to_its_end_when_cancelled() -> None:
    """A close or rollback of the store's connections cancelled halfway (a
    worker stopping mid-statement) runs to its end before the cancellation
    is raised: a connection abandoned mid-close would go back to its pool
    in a state of its own, or after the pool was disposed of."""
    started, release, finished = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def cleanup() -> None:
        started.set()
        await release.wait()
        finished.set()

    task = asyncio.create_task(_to_the_end(cleanup()))
    async with asyncio.timeout(TIMEOUT):
        await started.wait()
    task.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(TIMEOUT):
            await task
    assert finished.is_set()
