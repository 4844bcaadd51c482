"""Performing in the application's transaction: the job exists only if it commits."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import String, select, update
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import asyncjob
from asyncjob import JobState

from . import worker_jobs
from .conftest import TIMEOUT, Database, RunnerFactory


class Base(DeclarativeBase):
    """The application's models."""


class Order(Base):
    """What the application writes in the same transaction as the job."""

    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    note: Mapped[str] = mapped_column(String(50))


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
        kept = await asyncjob.perform_in(db, worker_jobs.whoami, 1)
    assert (await runner.wait(kept, timeout=TIMEOUT))["n"] == 1

    async with sessions() as db:
        transaction = await db.begin()
        db.add(Order(note="dropped"))
        dropped = await runner.perform_in(db, worker_jobs.whoami, 2)
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
            await sql_runner.perform_in(db, print, "x")
        with pytest.raises(TypeError, match="needs an SQL store"):
            await memory_runner.perform_in(db, worker_jobs.whoami, 1)
        with pytest.raises(TypeError, match="needs a callable"):
            await sql_runner.perform_in(db, 42)
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
    async with store.db.write() as conn:  # another worker took it over
        await conn.execute(
            update(store.tables.jobs)
            .where(store.tables.jobs.c.id == taken)
            .values(locked_by="another-worker")
        )
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
