"""A database session per job, and timed_query, on SQLite files and PostgreSQL."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from sqlalchemy import String, create_engine, event, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

import asyncjob

from . import retry_jobs
from .conftest import TIMEOUT, Database, RunnerFactory


class Base(DeclarativeBase):
    """The test application's models."""


class Item(Base):
    """A row a job may write, or wait for."""

    __tablename__ = "items"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


@pytest.fixture
def sync_engine(database: Database) -> Iterator[Engine]:
    """A sync engine on the test database, with the tables created."""
    engine = create_engine(database.sync_url)
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
async def async_engine(database: Database, sync_engine: Engine) -> AsyncIterator[AsyncEngine]:
    """An async engine on the same database."""
    engine = create_async_engine(database.async_url)
    yield engine
    await engine.dispose()


def names(engine: Engine) -> list[str]:
    """What is committed in the items table, read by a connection of its own."""
    with engine.connect() as conn:
        return list(conn.scalars(select(Item.name).order_by(Item.id)))


async def test_a_coroutine_job_commits_when_it_returns(
    make_runner: RunnerFactory, async_engine: AsyncEngine, sync_engine: Engine
) -> None:
    """The job's writes are committed when it returns."""
    runner = await make_runner(sessionmaker=async_sessionmaker(async_engine))

    async def job(name: str) -> int:
        db = asyncjob.session()
        item = Item(name=name)
        db.add(item)
        await db.flush()
        return item.id

    job_id = await runner.perform(job, "thumbnail")
    assert await runner.wait(job_id, timeout=TIMEOUT) == 1
    assert names(sync_engine) == ["thumbnail"]


async def test_a_failing_job_is_rolled_back(
    make_runner: RunnerFactory, async_engine: AsyncEngine, sync_engine: Engine
) -> None:
    """A job that raises leaves nothing behind."""
    runner = await make_runner(sessionmaker=async_sessionmaker(async_engine))

    async def job() -> None:
        asyncjob.session().add(Item(name="half done"))
        await asyncjob.session().flush()
        raise ValueError("corrupt input")

    job_id = await runner.perform(job)
    with pytest.raises(asyncjob.JobFailed, match="corrupt input"):
        await runner.wait(job_id, timeout=TIMEOUT)
    assert names(sync_engine) == []


async def test_a_sync_job_past_its_timeout_is_rolled_back(
    make_runner: RunnerFactory, sync_engine: Engine
) -> None:
    """A sync job that returns after its timeout fails, and its writes are
    rolled back, at each attempt: they were committed (a row an attempt,
    for a job recorded failed)."""
    runner = await make_runner(sync_sessionmaker=sessionmaker(sync_engine))
    key = f"late-{uuid.uuid4().hex}"
    job_id = await runner.perform(retry_jobs.writes_past_its_timeout, key)
    with pytest.raises(asyncjob.JobFailed, match="ran longer than its timeout"):
        await runner.wait(job_id, timeout=TIMEOUT)
    assert (await runner.status(job_id)).attempts == 3
    assert names(sync_engine) == []


async def test_a_cancelled_job_is_rolled_back(
    make_runner: RunnerFactory, async_engine: AsyncEngine, sync_engine: Engine
) -> None:
    """A job cancelled after it wrote leaves nothing behind either."""
    runner = await make_runner(sessionmaker=async_sessionmaker(async_engine))
    wrote = asyncio.Event()

    async def job() -> None:
        asyncjob.session().add(Item(name="never"))
        await asyncjob.session().flush()
        wrote.set()
        await asyncio.Event().wait()

    job_id = await runner.perform(job)
    async with asyncio.timeout(TIMEOUT):
        await wrote.wait()
    assert await runner.cancel(job_id)
    await runner.join(TIMEOUT)
    assert names(sync_engine) == []


async def test_a_commit_that_fails_fails_the_job(
    make_runner: RunnerFactory, async_engine: AsyncEngine, sync_engine: Engine
) -> None:
    """An error at commit (a duplicate key) is the job's failure."""
    runner = await make_runner(sessionmaker=async_sessionmaker(async_engine))
    with Session(sync_engine) as db, db.begin():
        db.add(Item(id=7, name="taken"))

    async def job() -> str:
        asyncjob.session().add(Item(id=7, name="again"))
        return "returned"

    job_id = await runner.perform(job)
    with pytest.raises(asyncjob.JobFailed, match="IntegrityError"):
        await runner.wait(job_id, timeout=TIMEOUT)
    assert names(sync_engine) == ["taken"]


@pytest.mark.parametrize("fails", [False, True])
async def test_sync_jobs_get_a_sync_session(
    make_runner: RunnerFactory, sync_engine: Engine, fails: bool
) -> None:
    """sync_sessionmaker gives each sync job a session, committed or rolled back."""
    runner = await make_runner(sync_sessionmaker=sessionmaker(sync_engine))

    def job() -> str:
        db = asyncjob.session()
        assert isinstance(db, Session)
        assert threading.current_thread() is not threading.main_thread()
        db.add(Item(name="from a thread"))
        db.flush()
        if fails:
            raise RuntimeError("disk full")
        return "ok"

    job_id = await runner.perform(job)
    if fails:
        with pytest.raises(asyncjob.JobFailed, match="disk full"):
            await runner.wait(job_id, timeout=TIMEOUT)
        assert names(sync_engine) == []
    else:
        assert await runner.wait(job_id, timeout=TIMEOUT) == "ok"
        assert names(sync_engine) == ["from a thread"]


async def test_sync_jobs_lined_up_for_the_threads_get_a_session_each(
    make_runner: RunnerFactory, sync_engine: Engine
) -> None:
    """Jobs that a thread goes on to by itself (lined up while every worker
    is busy) each get their own session, committed or rolled back."""
    runner = await make_runner(sync_sessionmaker=sessionmaker(sync_engine), concurrency=1)
    started, release = threading.Event(), threading.Event()
    sessions: list[Session] = []

    def first() -> None:
        started.set()
        assert release.wait(TIMEOUT)

    def write(name: str) -> None:
        db = asyncjob.session()
        sessions.append(db)
        db.add(Item(name=name))
        db.flush()
        if name == "refused":
            raise RuntimeError(name)

    await runner.perform(first)
    ids = [await runner.perform(write, name) for name in ("a", "b", "refused", "c")]
    assert await asyncio.to_thread(started.wait, TIMEOUT)
    assert set(runner._engine._lined_up) == set(ids)
    release.set()
    await runner.join(TIMEOUT)
    assert names(sync_engine) == ["a", "b", "c"]
    assert len(set(map(id, sessions))) == 4


async def test_a_cancelled_sync_job_is_rolled_back(
    make_runner: RunnerFactory, sync_engine: Engine
) -> None:
    """Cancelled while it wrote, a sync job's transaction is rolled back."""
    runner = await make_runner(sync_sessionmaker=sessionmaker(sync_engine))
    wrote = threading.Event()
    cancelled = threading.Event()

    def job() -> None:
        asyncjob.session().add(Item(name="never"))
        asyncjob.session().flush()
        wrote.set()
        assert cancelled.wait(TIMEOUT)

    job_id = await runner.perform(job)
    assert await asyncio.to_thread(wrote.wait, TIMEOUT)
    assert await runner.cancel(job_id)
    cancelled.set()
    await runner.join(TIMEOUT)
    assert names(sync_engine) == []


async def test_session_outside_a_job() -> None:
    """asyncjob.session() outside a job is a RuntimeError that says so."""
    with pytest.raises(asyncjob.NotInJob, match="outside a job"):
        asyncjob.session()


@pytest.mark.parametrize("kind", ["coroutine", "sync"])
async def test_session_with_no_factory(runner: asyncjob.Runner, kind: str) -> None:
    """A job of a kind with no factory is told which option gives it one."""

    async def coro_job() -> None:
        asyncjob.session()

    def sync_job() -> None:
        asyncjob.session()

    option = "sessionmaker" if kind == "coroutine" else "sync_sessionmaker"
    job_id = await runner.perform(coro_job if kind == "coroutine" else sync_job)
    with pytest.raises(asyncjob.JobFailed, match=f"give the runner {option}="):
        await runner.wait(job_id, timeout=TIMEOUT)


def test_factories_of_the_wrong_kind(sqlite_db: Database) -> None:
    """A sync sessionmaker as sessionmaker= (and the reverse) is refused."""
    engine = create_engine(sqlite_db.sync_url)
    with pytest.raises(TypeError, match="async_sessionmaker"):
        asyncjob.Runner(sessionmaker=sessionmaker(engine))
    with pytest.raises(TypeError, match="sync_sessionmaker must be"):
        asyncjob.Runner(
            sync_sessionmaker=async_sessionmaker(create_async_engine(sqlite_db.async_url))
        )
    engine.dispose()


# -- timed_query ----------------------------------------------------------------


def _first_select_then_released(engine: AsyncEngine | Engine) -> threading.Event:
    """An event set once a SELECT on items ran and its connection went back to
    the pool: the job is then between two tries, with no transaction open."""
    selected = threading.Event()
    released = threading.Event()
    target = engine.sync_engine if isinstance(engine, AsyncEngine) else engine

    @event.listens_for(target, "after_cursor_execute")
    def after(*args: Any) -> None:
        if "FROM items" in args[2]:
            selected.set()

    @event.listens_for(target.pool, "checkin")
    def checkin(*args: Any) -> None:
        if selected.is_set():
            released.set()

    return released


def _open_transactions(sync_engine: Engine) -> int:
    """Connections idle in a transaction, other than ours (PostgreSQL only)."""
    with sync_engine.connect() as conn:
        return int(
            conn.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND state = 'idle in transaction' AND pid <> pg_backend_pid()"
                )
            )
            or 0
        )


async def _timed_query_finds_a_late_row(
    make_runner: RunnerFactory, database: Database, **engine_options: Any
) -> None:
    sync_engine = create_engine(database.sync_url)
    Base.metadata.create_all(sync_engine)
    engine = create_async_engine(database.async_url, **engine_options)
    released = _first_select_then_released(engine)
    runner = await make_runner(sessionmaker=async_sessionmaker(engine))

    async def job() -> str:
        await asyncjob.session().execute(select(Item))  # a snapshot, where isolation keeps one
        found = await asyncjob.timed_query(
            select(Item).where(Item.name == "uploaded"), retries=50, interval=0.05
        )
        assert found is not None
        found.name = "processed"
        return "found"

    job_id = await runner.perform(job)
    assert await asyncio.to_thread(released.wait, TIMEOUT)
    if database.kind == "postgresql":
        assert _open_transactions(sync_engine) == 0
    with Session(sync_engine) as db, db.begin():
        db.add(Item(name="uploaded"))
    assert await runner.wait(job_id, timeout=TIMEOUT) == "found"
    assert names(sync_engine) == ["processed"]
    await engine.dispose()
    sync_engine.dispose()


async def test_timed_query_sees_a_row_another_sqlite_connection_commits(
    make_runner: RunnerFactory, sqlite_db: Database
) -> None:
    """A row committed to the SQLite file between two tries is found, and the
    job holds no connection while it waits."""
    await _timed_query_finds_a_late_row(make_runner, sqlite_db)


@pytest.mark.parametrize("isolation", ["READ COMMITTED", "REPEATABLE READ"])
async def test_timed_query_sees_a_row_committed_at_any_isolation(
    make_runner: RunnerFactory, postgres_db: Database, isolation: str
) -> None:
    """On PostgreSQL, even under REPEATABLE READ (one snapshot per
    transaction), a row committed between two tries is found, and no
    transaction is left open while the job waits."""
    await _timed_query_finds_a_late_row(make_runner, postgres_db, isolation_level=isolation)


async def test_timed_query_gives_up(make_runner: RunnerFactory, async_engine: AsyncEngine) -> None:
    """With no row, it tries 1 + retries times and returns None."""
    tries = 0

    @event.listens_for(async_engine.sync_engine, "after_cursor_execute")
    def count(*args: Any) -> None:
        nonlocal tries
        tries += "FROM items" in args[2]

    runner = await make_runner(sessionmaker=async_sessionmaker(async_engine))

    async def job() -> Any:
        return await asyncjob.timed_query(select(Item), retries=2, interval=0)

    job_id = await runner.perform(job)
    assert await runner.wait(job_id, timeout=TIMEOUT) is None
    assert tries == 3


async def test_timed_query_refuses_to_drop_the_jobs_writes(
    make_runner: RunnerFactory, async_engine: AsyncEngine, sync_engine: Engine
) -> None:
    """Once the job wrote, ending its transaction would lose the write: error."""
    runner = await make_runner(sessionmaker=async_sessionmaker(async_engine))

    async def job() -> None:
        asyncjob.session().add(Item(name="mine"))
        await asyncjob.session().flush()
        await asyncjob.timed_query(select(Item).where(Item.name == "theirs"), interval=0)

    job_id = await runner.perform(job)
    with pytest.raises(asyncjob.JobFailed, match="before the job writes anything"):
        await runner.wait(job_id, timeout=TIMEOUT)
    assert names(sync_engine) == []


@pytest.mark.parametrize(
    ("retries", "interval"), [(-1, 1), (1.5, 1), (True, 1), (1, -0.1), (1, "6")]
)
async def test_timed_query_bad_arguments(
    make_runner: RunnerFactory, async_engine: AsyncEngine, retries: Any, interval: Any
) -> None:
    """Negative or non-numeric retries and interval are a ValueError."""
    runner = await make_runner(sessionmaker=async_sessionmaker(async_engine))

    async def job() -> None:
        await asyncjob.timed_query(select(Item), retries=retries, interval=interval)

    job_id = await runner.perform(job)
    with pytest.raises(asyncjob.JobFailed, match="ValueError"):
        await runner.wait(job_id, timeout=TIMEOUT)


async def test_timed_query_sync_in_a_sync_job(
    make_runner: RunnerFactory, sync_engine: Engine
) -> None:
    """The sync form waits in the job's thread for a row committed meanwhile."""
    released = _first_select_then_released(sync_engine)
    runner = await make_runner(sync_sessionmaker=sessionmaker(sync_engine))

    def job() -> str:
        found = asyncjob.timed_query_sync(
            select(Item).where(Item.name == "uploaded"), retries=50, interval=0.05
        )
        assert found is not None
        found.name = "processed"
        return "found"

    job_id = await runner.perform(job)
    assert await asyncio.to_thread(released.wait, TIMEOUT)
    with Session(sync_engine) as db, db.begin():
        db.add(Item(name="uploaded"))
    assert await runner.wait(job_id, timeout=TIMEOUT) == "found"
    assert names(sync_engine) == ["processed"]
