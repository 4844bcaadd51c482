"""A database session per job, in a transaction that follows the job's outcome.

The runner is given the application's session factories: an
``async_sessionmaker`` for coroutine jobs, a ``sessionmaker`` for sync jobs.
Each job then runs with a session of its own, committed when the job
returns and rolled back when it raises or is cancelled, and always closed.
This module is the one place where that happens, so that a store that keeps
its jobs in the same database can make a job's writes and its final state
one transaction.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import (
    AbstractAsyncContextManager,
    AbstractContextManager,
    asynccontextmanager,
    contextmanager,
)
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from asyncjob._core.errors import NotInJob

from .context import current
from .job_context import JobContext

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
    from sqlalchemy.orm import Session, sessionmaker

__all__ = (
    "JobScope",
    "Sessions",
    "check_retries",
    "refuse_if_written",
    "scoped",
    "session",
    "timed_query",
    "timed_query_sync",
    "track_writes",
)

_WROTE = "asyncjob.wrote"

T = TypeVar("T")


class JobScope(Protocol):
    """What wraps each job: a session and transaction, or anything like them.

    :class:`Sessions` is the runner's own; the TurboGears2 layer brings one
    that runs sync jobs in a zope transaction.
    """

    @property
    def wraps_async(self) -> bool:
        """True when coroutine jobs run inside :meth:`for_async_job`."""

    @property
    def wraps_sync(self) -> bool:
        """True when sync jobs run inside :meth:`for_sync_job`."""

    def for_async_job(self, ctx: JobContext) -> AbstractAsyncContextManager[None]:
        """Wraps a coroutine job, on the loop. An exception from the job
        comes through it; ``ctx.cancelled`` tells a cancelled job."""

    def for_sync_job(self, ctx: JobContext) -> AbstractContextManager[None]:
        """Wraps a sync job, in the job's thread."""


class Sessions:
    """The session factories a runner gives its jobs.

    Args:
        async_maker: an :class:`~sqlalchemy.ext.asyncio.async_sessionmaker`,
            for coroutine jobs.
        sync_maker: a :class:`~sqlalchemy.orm.sessionmaker`, for sync jobs.

    Raises:
        TypeError: a factory is of the wrong kind.
    """

    def __init__(self, async_maker: Any = None, sync_maker: Any = None) -> None:
        self.async_maker: async_sessionmaker[AsyncSession] | None = async_maker
        self.sync_maker: sessionmaker[Session] | None = sync_maker
        if async_maker is None and sync_maker is None:
            return
        # SQLAlchemy's ORM is imported only by runners that give sessions: a
        # worker's SQL store needs its Core alone (8 MB less).
        from sqlalchemy.ext.asyncio import async_sessionmaker
        from sqlalchemy.orm import sessionmaker

        if async_maker is not None and not isinstance(async_maker, async_sessionmaker):
            raise TypeError(
                "sessionmaker must be an sqlalchemy.ext.asyncio.async_sessionmaker "
                f"(for coroutine jobs), not {type(async_maker).__name__}; give a sync "
                "sqlalchemy.orm.sessionmaker as sync_sessionmaker="
            )
        if sync_maker is not None and not isinstance(sync_maker, sessionmaker):
            raise TypeError(
                "sync_sessionmaker must be an sqlalchemy.orm.sessionmaker (for sync "
                f"jobs), not {type(sync_maker).__name__}"
            )

    @property
    def wraps_async(self) -> bool:
        """True when coroutine jobs run inside :meth:`for_async_job`."""
        return self.async_maker is not None

    @property
    def wraps_sync(self) -> bool:
        """True when sync jobs run inside :meth:`for_sync_job`."""
        return self.sync_maker is not None

    @asynccontextmanager
    async def for_async_job(self, ctx: JobContext) -> AsyncIterator[None]:
        """Give a coroutine job its session; commit only if it returns uncancelled."""
        if self.async_maker is None:
            yield
            return
        async with self.async_maker() as db:
            track_writes(db.sync_session)
            ctx.session = db
            try:
                yield
            except BaseException:
                await db.rollback()
                raise
            if ctx.cancelled:
                await db.rollback()
            else:
                await db.commit()

    @contextmanager
    def for_sync_job(self, ctx: JobContext) -> Iterator[None]:
        """The same for a sync job, in its thread."""
        if self.sync_maker is None:
            yield
            return
        with self.sync_maker() as db:
            track_writes(db)
            ctx.session = db
            try:
                yield
            except BaseException:
                db.rollback()
                raise
            if ctx.cancelled:
                db.rollback()
            else:
                db.commit()


async def scoped(scope: JobScope, ctx: JobContext, body: Callable[[], Awaitable[T]]) -> T:
    """Await ``body()`` inside ``scope.for_async_job(ctx)``.

    The engine enters a coroutine job's scope through this function rather
    than with an ``async with`` of its own, so that its module can be
    compiled by mypyc: a compiled ``async with`` mishandles the exception
    of a cancelled job when the context manager awaits (a rollback) before
    it raises it again, and the process crashes (bench/README.md, "Compiled
    with mypyc"). This module stays interpreted.
    """
    async with scope.for_async_job(ctx):
        return await body()


def track_writes(db: Session) -> None:
    """Note in ``db.info`` when the job writes, so timed_query knows whether
    it may end the transaction between tries."""
    from sqlalchemy import event

    def wrote(*_: Any) -> None:
        db.info[_WROTE] = True

    event.listen(db, "after_flush", wrote)
    event.listen(db, "after_bulk_update", wrote)
    event.listen(db, "after_bulk_delete", wrote)
    event.listen(db, "do_orm_execute", lambda state: None if state.is_select else wrote())
    db.info[_WROTE] = False


def session() -> Any:
    """The running job's database session.

    An :class:`~sqlalchemy.ext.asyncio.AsyncSession` in a coroutine job, a
    :class:`~sqlalchemy.orm.Session` in a sync job. Its transaction is
    committed when the job returns and rolled back when it raises or is
    cancelled: do not commit it yourself unless you mean to split the job's
    work in several transactions.

    Raises:
        NotInJob: called outside a job, or the runner was given no session
            factory for this kind of job (it is a ``RuntimeError``).
    """
    ctx = current.get()
    if ctx is None:
        raise NotInJob(
            "asyncjob.session() was called outside a job: it gives the running "
            "job its database session"
        )
    if ctx.session is None:
        kind, option = (
            ("coroutine", "sessionmaker") if ctx.is_async else ("sync", "sync_sessionmaker")
        )
        raise NotInJob(
            f"this {kind} job has no database session: give the runner "
            f"{option}=... to have one for every {kind} job"
        )
    return ctx.session


def check_retries(retries: object, interval: object) -> None:
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be an int >= 0, not {retries!r}")
    if not isinstance(interval, int | float) or not interval >= 0:
        raise ValueError(f"interval must be a number of seconds >= 0, not {interval!r}")


def refuse_if_written(db: Session) -> None:
    if db.info.get(_WROTE) or db.new or db.dirty or db.deleted:
        raise RuntimeError(
            "timed_query() must end the job's transaction between tries, so that "
            "each try sees rows committed meanwhile, but this job has already "
            "written in it: call timed_query() before the job writes anything"
        )


async def timed_query(stmt: Any, retries: int = 10, interval: float = 6) -> Any:
    """Wait for a row that another transaction may not have committed yet.

    Runs the select ``stmt`` in the job's session until it returns a row:
    once, then at most ``retries`` more times, ``interval`` seconds apart.
    Returns the first row's first object (``scalars().first()``), or
    ``None`` when time runs out. Between tries the job's transaction is
    ended, so that no transaction stays open while it waits and each try
    sees what was committed meanwhile, whatever the isolation level.

    Raises:
        NotInJob: outside a coroutine job with a session.
        RuntimeError: the job wrote in its session before a retry was needed.
        ValueError: ``retries`` or ``interval`` is negative.
    """
    check_retries(retries, interval)
    db: AsyncSession = session()
    for attempt in range(retries + 1):
        found = (await db.execute(stmt)).scalars().first()
        if found is not None or attempt == retries:
            return found
        refuse_if_written(db.sync_session)
        await db.rollback()
        await asyncio.sleep(interval)
    raise AssertionError("unreachable")  # pragma: no cover


def timed_query_sync(stmt: Any, retries: int = 10, interval: float = 6) -> Any:
    """:func:`timed_query` for sync jobs, in the job's sync session."""
    check_retries(retries, interval)
    db: Session = session()
    for attempt in range(retries + 1):
        found = db.execute(stmt).scalars().first()
        if found is not None or attempt == retries:
            return found
        refuse_if_written(db)
        db.rollback()
        time.sleep(interval)
    raise AssertionError("unreachable")  # pragma: no cover
