"""Performing in the application's transaction: the job exists only if it commits."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import String, create_engine, select, update
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

import asyncjob
from asyncjob import JobState
from asyncjob.stores import Store
from asyncjob.stores.sql import SQLStore
from asyncjob.testing import make_job

from . import worker_jobs
from .conftest import TIMEOUT, Database, RunnerFactory


class Base(DeclarativeBase):
    """The application's models."""


class Order(Base):
    """What the application writes in the same transaction as the job."""

    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    note: Mapped[str] = mapped_column(String(50))


async def take_over(store: Store, job_id: str) -> None:
    """Make the job another worker's, as if its lease had run out and that
    worker had claimed it."""
    assert isinstance(store, SQLStore)
    jobs = store.tables.jobs
    async with store.db.write() as conn:
        await conn.execute(
            update(jobs).where(jobs.c.id == job_id).values(locked_by="another-worker")
        )


async def test_commit_and_rollback(make_runner: RunnerFactory, database: Database) -> None:
    """Committed: the order and the job both exist, and the job runs.
    Rolled back: neither exists, and no worker ever sees the job."""
    engine = create_async_engine(database.async_url)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    sessions = async_sessionmaker(engine)
    runner = await make_runner(database.async_url)

    async with sessions() as db, db.begin():
        db.add(Order(note="kept"))
        kept = await asyncjob.perform(asyncjob.using(worker_jobs.whoami, transaction=db), 1)
    assert (await runner.wait(kept, timeout=TIMEOUT))["n"] == 1

    async with sessions() as db:
        transaction = await db.begin()
        db.add(Order(note="dropped"))
        dropped = await runner.perform(asyncjob.using(worker_jobs.whoami, transaction=db), 2)
        await transaction.rollback()  # the application changed its mind
    with pytest.raises(asyncjob.JobNotFound):
        await runner.status(dropped)
    async with sessions() as db:
        assert list(await db.scalars(select(Order.note))) == ["kept"]
    assert (await runner.status(kept)).state is JobState.succeeded
    await engine.dispose()


async def test_only_registered_jobs_and_sql_stores(
    make_runner: RunnerFactory, sqlite_db: Database
) -> None:
    """A job not registered, or a store that is not SQL: a TypeError, nothing written."""
    engine = create_async_engine(sqlite_db.async_url)
    sql_runner = await make_runner(sqlite_db.async_url)
    memory_runner = await make_runner()
    async with async_sessionmaker(engine)() as db:
        with pytest.raises(TypeError, match=r"not registered with @asyncjob\.job"):
            await sql_runner.perform(asyncjob.using(print, transaction=db), "x")
        with pytest.raises(TypeError, match="needs an SQL store"):
            await memory_runner.perform(asyncjob.using(worker_jobs.whoami, transaction=db), 1)
        with pytest.raises(TypeError, match="needs a callable"):
            asyncjob.using(42, transaction=db)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="must be an SQLAlchemy AsyncSession"):
            asyncjob.using(worker_jobs.whoami, transaction=engine)
        assert await sql_runner.jobs() == []
    await engine.dispose()


async def test_a_jobs_writes_and_its_success_commit_together(
    make_runner: RunnerFactory, database: Database
) -> None:
    """With sessions on the store's database, the job's writes and its
    succeeded state are one transaction: if the job is taken from its worker
    before it ends, neither is committed."""
    engine = create_async_engine(database.async_url)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    sessions = async_sessionmaker(engine)
    runner = await make_runner(database.async_url, sessionmaker=sessions)
    store = runner.store
    started = asyncio.Event()
    release = asyncio.Event()

    async def place_order(note: str) -> str:
        # Waits before it writes: a SQLite writer would lock out everyone else.
        started.set()
        await release.wait()
        asyncjob.session().add(Order(note=note))
        await asyncjob.session().flush()
        return note

    kept = await runner.perform(place_order, "kept")
    release.set()
    assert await runner.wait(kept, timeout=TIMEOUT) == "kept"

    started, release = asyncio.Event(), asyncio.Event()
    taken = await runner.perform(place_order, "taken")
    async with asyncio.timeout(TIMEOUT):
        await started.wait()
    await take_over(store, taken)
    release.set()
    await runner.join(TIMEOUT)
    async with sessions() as db:
        assert list(await db.scalars(select(Order.note))) == ["kept"]
    assert (await runner.status(kept)).state is JobState.succeeded
    assert (await runner.status(taken)).state is JobState.running  # the other worker's now
    await engine.dispose()


async def test_a_result_that_is_not_json_rolls_the_writes_back(
    make_runner: RunnerFactory, sqlite_db: Database
) -> None:
    """The success cannot be recorded, so the job fails and its writes go."""
    engine = create_async_engine(sqlite_db.async_url)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    sessions = async_sessionmaker(engine)
    runner = await make_runner(sqlite_db.async_url, sessionmaker=sessions)

    async def job() -> object:
        asyncjob.session().add(Order(note="never"))
        return {1, 2}

    job_id = await runner.perform(job)
    with pytest.raises(asyncjob.JobFailed, match="result must be JSON"):
        await runner.wait(job_id, timeout=TIMEOUT)
    async with sessions() as db:
        assert list(await db.scalars(select(Order.note))) == []
    await engine.dispose()


# -- sync jobs -------------------------------------------------------------------


@pytest.fixture
def sync_sessions(database: Database) -> Iterator[sessionmaker[Session]]:
    """The application's sync sessions, on the store's database, with its tables."""
    engine = create_engine(database.sync_url)
    Base.metadata.create_all(engine)
    yield sessionmaker(engine)
    engine.dispose()


def notes(sessions: sessionmaker[Session]) -> list[str]:
    with sessions() as db:
        return list(db.scalars(select(Order.note).order_by(Order.id)))


async def test_a_sync_jobs_writes_and_its_success_commit_together(
    make_runner: RunnerFactory, database: Database, sync_sessions: sessionmaker[Session]
) -> None:
    """The same for a sync job and its session, in its thread: taken from
    its worker before it ends, neither its writes nor its success commit."""
    runner = await make_runner(database.async_url, sync_sessionmaker=sync_sessions)
    started = threading.Event()
    release = threading.Event()

    def place_order(note: str) -> str:
        started.set()
        assert release.wait(TIMEOUT)
        asyncjob.session().add(Order(note=note))
        asyncjob.session().flush()
        asyncjob.set_progress(100, "placed")
        return note

    release.set()
    kept = await runner.perform(place_order, "kept")
    assert await runner.wait(kept, timeout=TIMEOUT) == "kept"
    status = await runner.status(kept)
    assert (status.state, status.progress, status.data) == (JobState.succeeded, 100, "placed")

    started.clear()
    release.clear()
    taken = await runner.perform(place_order, "taken")
    assert await asyncio.to_thread(started.wait, TIMEOUT)
    await take_over(runner.store, taken)
    release.set()
    await runner.join(TIMEOUT)
    assert notes(sync_sessions) == ["kept"]
    assert (await runner.status(taken)).state is JobState.running  # the other worker's now


async def test_a_sync_jobs_result_that_is_not_json_rolls_its_writes_back(
    make_runner: RunnerFactory, database: Database, sync_sessions: sessionmaker[Session]
) -> None:
    """The success cannot be recorded: the job fails, and its writes go."""
    runner = await make_runner(database.async_url, sync_sessionmaker=sync_sessions)

    def job() -> object:
        asyncjob.session().add(Order(note="never"))
        return {1, 2}

    job_id = await runner.perform(job)
    with pytest.raises(asyncjob.JobFailed, match="result must be JSON"):
        await runner.wait(job_id, timeout=TIMEOUT)
    assert notes(sync_sessions) == []


async def test_a_sync_job_past_its_timeout_rolls_its_writes_back(
    make_runner: RunnerFactory, database: Database, sync_sessions: sessionmaker[Session]
) -> None:
    """A registered sync job that returns after its timeout fails, and its
    writes are not committed with a success it no longer has."""
    runner = await make_runner(database.async_url, sync_sessionmaker=sync_sessions)
    job_id = await runner.perform(worker_jobs.writes_too_late, "late")
    with pytest.raises(asyncjob.JobFailed, match="TimeoutError"):
        await runner.wait(job_id, timeout=TIMEOUT)
    assert notes(sync_sessions) == []


async def test_enqueue_sql_writes_in_a_dbapi_transaction(
    make_runner: RunnerFactory, database: Database
) -> None:
    """``SQLStore.enqueue_sql``: the statements an application's own DB-API
    connection (Django's) runs to write a job in its transaction: rolled
    back, no job; committed, the job runs; a held unique key, no row, and
    the holder's id."""
    runner = await make_runner(database.async_url)
    store = runner.store
    assert isinstance(store, SQLStore)
    engine = create_engine(database.sync_url)

    def write(job_id: str, unique: str | None = None, *, commit: bool = True) -> list[Any]:
        job = make_job(job_id, registered=True, name="tests.worker_jobs.whoami", unique=unique)
        insert, params, holder, holder_params = store.enqueue_sql(
            job._replace(args=(7,), kwargs={})
        )
        if database.kind == "sqlite":  # Django's cursor says %s to sqlite3 too
            insert, holder = insert.replace("%s", "?"), (holder or "").replace("%s", "?")
        with engine.connect() as conn:
            written = conn.exec_driver_sql(insert, tuple(params)).all()
            if not written and holder:
                written = conn.exec_driver_sql(holder, tuple(holder_params)).all()
            if commit:
                conn.commit()
            else:
                conn.rollback()
        return [row[0] for row in written]

    lost, kept = uuid.uuid4().hex, uuid.uuid4().hex
    assert await asyncio.to_thread(write, lost, commit=False) == [lost]
    assert await asyncio.to_thread(write, kept) == [kept]
    assert (await runner.wait(kept, timeout=TIMEOUT))["n"] == 7
    with pytest.raises(asyncjob.JobNotFound):
        await runner.status(lost)
    holder = await runner.perform(
        asyncjob.using(worker_jobs.whoami, unique=f"held-{kept}", delay=3600), 1
    )
    assert await asyncio.to_thread(write, uuid.uuid4().hex, f"held-{kept}") == [holder]
    engine.dispose()
