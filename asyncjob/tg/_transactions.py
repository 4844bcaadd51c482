"""Sync jobs in a transaction of their own, as in ``tgext.asyncjob``."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from types import ModuleType
from typing import Any

from asyncjob._core.errors import NotInJob
from asyncjob._engine.context import current
from asyncjob._engine.job_context import JobContext
from asyncjob._engine.sessions import Sessions, check_retries, refuse_if_written, track_writes

__all__ = ("TransactionScope", "active_transaction", "timed_query")


def _transaction_module() -> ModuleType | None:
    try:
        import transaction
    except ImportError:
        return None
    module: ModuleType = transaction
    return module


def active_transaction() -> Any:
    """The zope transaction begun in this thread (a request's), or None.

    ``transaction.get()`` would create one where none was begun, so the
    thread's manager is asked whether it holds one.
    """
    transaction = _transaction_module()
    if transaction is None:
        return None
    # ThreadTransactionManager.manager is this thread's TransactionManager;
    # its _txn is the transaction begun and not yet ended, if any.
    return getattr(transaction.manager.manager, "_txn", None)


class TransactionScope:
    """Wraps each sync job the way ``tgext.asyncjob`` did.

    With the ``transaction`` package (the zope transaction manager that
    TurboGears2 uses), the job runs in a zope transaction of its own,
    committed when it returns, aborted when it raises or is cancelled. The
    scoped ``DBSession`` follows the same way when it is not joined to that
    transaction (a plain scoped session, or no ``transaction`` package).
    Then ``DBSession.remove()``, so that the next job starts afresh.

    Coroutine jobs get what ``sessions`` gives them.

    Args:
        dbsession: returns the application's scoped session (or None), read
            when each job starts, so that the configuration may come later.
        sessions: the runner's own session factories, for coroutine jobs.
    """

    def __init__(self, dbsession: Callable[[], Any], sessions: Sessions) -> None:
        self._dbsession = dbsession
        self._sessions = sessions

    @property
    def wraps_async(self) -> bool:
        return self._sessions.wraps_async

    @property
    def wraps_sync(self) -> bool:
        return True

    @asynccontextmanager
    async def for_async_job(self, ctx: JobContext) -> AsyncIterator[None]:
        async with self._sessions.for_async_job(ctx):
            yield

    @contextmanager
    def for_sync_job(self, ctx: JobContext) -> Iterator[None]:
        dbsession = self._dbsession()
        session = dbsession() if dbsession is not None else None
        transaction = _transaction_module()
        if session is not None:
            track_writes(session)
        if transaction is not None:
            transaction.begin()
        try:
            yield
        except BaseException:
            _end(transaction, session, commit=False)
            raise
        else:
            _end(transaction, session, commit=not ctx.cancelled)
        finally:
            if dbsession is not None:
                dbsession.remove()


def _end(transaction: Any, session: Any, *, commit: bool) -> None:
    """End a job's unit of work: the zope transaction, then the session
    itself if it is still in a transaction: one that zope.sqlalchemy does
    not manage (a plain scoped session, in Flask say) is not joined to the
    zope transaction, and would otherwise lose its writes."""
    if transaction is not None:
        if commit:
            transaction.commit()
        else:
            transaction.abort()
    if session is not None and session.in_transaction():
        if commit:
            session.commit()
        else:
            session.rollback()


def timed_query(query: Any, retries: int = 10, interval: float = 6) -> Any:
    """``tgext.asyncjob``'s ``asyncjob_timed_query``, without its blind spot.

    Tries ``query.first()`` until it finds a row: once, then at most
    ``retries`` more times, ``interval`` seconds apart; returns ``query``
    either way. Between tries the job's transaction is ended (aborted, then
    begun anew), so each try sees rows committed meanwhile, at any
    isolation level, and no transaction stays open while it waits.

    Raises:
        NotInJob: called outside a job.
        RuntimeError: the job wrote in its session before a retry was needed.
        ValueError: ``retries`` or ``interval`` is negative.
    """
    check_retries(retries, interval)
    if current.get() is None:
        raise NotInJob(
            "asyncjob_timed_query() was called outside a job: it waits, in a "
            "background job, for rows the request that performed it commits"
        )
    transaction = _transaction_module()
    for attempt in range(retries + 1):
        if query.first() is not None or attempt == retries:
            return query
        session = query.session
        refuse_if_written(session)
        if transaction is not None and active_transaction() is not None:
            transaction.abort()
            transaction.begin()
        if session.in_transaction():  # not joined to the zope transaction
            session.rollback()
        time.sleep(interval)
    raise AssertionError("unreachable")  # pragma: no cover
