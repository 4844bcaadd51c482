"""Performing in the application's transaction: the job exists only if it commits."""

from __future__ import annotations

import pytest
from sqlalchemy import String, select
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
