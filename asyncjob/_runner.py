"""The runner: takes jobs, runs them, and answers for them."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any, Self, TypeVar

from . import _current, _policy
from ._execution import Executor
from ._fetcher import Fetcher
from ._options import RunnerOptions
from ._performing import Performing, Phase
from ._queries import JobQueries
from ._sessions import JobScope, Sessions
from ._shutdown import shut_down
from ._workers import WorkerPool
from .stores import Store, resolve_store

__all__ = ("Runner",)

T = TypeVar("T")


class Runner(Performing, JobQueries):
    """Runs jobs in the background of an asyncio application.

    Use it as an async context manager (or call :meth:`start` and
    :meth:`stop`)::

        async with asyncjob.Runner() as runner:
            job_id = await runner.perform(resize, "photo.jpg", width=640)

    Performed jobs wait in a first-in, first-out queue. At most
    ``concurrency`` run at once: coroutine functions on this event loop,
    other callables in a pool of ``threads`` threads, so that they never
    block the loop.

    A runner lives once: after :meth:`stop` it cannot be started again.
    Its methods may be awaited from any event loop or thread's loop; calls
    from another loop are carried over to the runner's own.

    Args:
        store: ``"memory"`` (the default), an SQLAlchemy async URL
            (``"sqlite+aiosqlite:///path/jobs.db"``,
            ``"postgresql+asyncpg://user@host/db"``: see
            :class:`asyncjob.stores.sql.SQLStore`), or a
            :class:`~asyncjob.stores.Store`.
        concurrency: how many jobs may run at once (at least 1).
        sessionmaker: an SQLAlchemy ``async_sessionmaker``: each coroutine
            job then gets its own session (:func:`asyncjob.session`), in a
            transaction committed when the job returns and rolled back when
            it raises or is cancelled.
        sync_sessionmaker: a ``sessionmaker``, the same for sync jobs.
        job_scope: instead of the two above, an object that wraps each job
            as it likes (see :class:`asyncjob.JobScope`); the
            TurboGears2 layer uses one for zope transactions.
        threads: size of the thread pool for sync jobs (at least 1); by
            default ``min(concurrency, 40)``. See :doc:`threads`.
        grace_period: seconds that :meth:`stop` lets running jobs finish
            before it cancels them (or, with a durable store, hands
            registered jobs back to its queue).
        producer_only: with a durable store, only perform: registered jobs
            are left to the store's workers (a web process, say). Jobs that
            are not registered still run here.

    Raises:
        ValueError: an option is out of range.
        TypeError: an option has the wrong type.
    """

    def __init__(
        self,
        store: str | Store = "memory",
        *,
        concurrency: int = 10,
        sessionmaker: Any = None,
        sync_sessionmaker: Any = None,
        job_scope: JobScope | None = None,
        threads: int | None = None,
        grace_period: float = 10.0,
        producer_only: bool = False,
    ) -> None:
        self.options = RunnerOptions.validate(
            concurrency=concurrency, threads=threads, grace_period=grace_period
        )
        sessions = Sessions(sessionmaker, sync_sessionmaker)
        if job_scope is not None and (sessions.wraps_async or sessions.wraps_sync):
            raise ValueError(
                "give either job_scope= or sessionmaker=/sync_sessionmaker=, not both: "
                "a job scope decides itself what wraps each job"
            )
        self._store = resolve_store(store)
        if producer_only and not self._store.durable:
            raise ValueError(
                "producer_only=True needs a store that workers share (an SQL store): "
                "with this store, no other process could run the jobs"
            )
        self._phase = Phase.new
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor = Executor(self._store, self.options.threads, job_scope or sessions)
        self._pool = WorkerPool(self._executor, self.options.concurrency)
        self._executor.resubmit = self._pool.submit_later
        self._executor.ended = self._pool.ended
        self._executor.finish_in = _policy.finish_in_session(self._store, sessions.async_maker)
        self._executor.finish_in_sync = _policy.finish_in_sync_session(
            self._store, sessions.sync_maker
        )
        self._stopped = asyncio.Event()
        self.producer_only = producer_only
        self._fetcher: Fetcher | None = None
        self._fetching: asyncio.Task[None] | None = None

    @property
    def store(self) -> Store:
        """The store this runner keeps its jobs in."""
        return self._store

    @property
    def running(self) -> bool:
        """True between :meth:`start` and the beginning of :meth:`stop`."""
        return self._phase is Phase.running

    # -- life cycle -------------------------------------------------------

    async def start(self) -> None:
        """Open the store and start taking jobs.

        Raises:
            RuntimeError: the runner was started before.
        """
        if self._phase is not Phase.new:
            raise RuntimeError(
                f"this runner is {self._phase.value}: a runner starts once; "
                "create a new Runner to start again"
            )
        self._loop = asyncio.get_running_loop()
        if self._store.durable:
            self._fetcher = self._new_fetcher()
        await self._store.open()
        # Jobs run in a copy of the context the runner was started in, as
        # they would in tasks created here.
        self._pool.start()
        self._executor.start(self.options.concurrency)
        if self._fetcher is not None:
            fetching = self._fetcher.run()
            self._fetching = asyncio.get_running_loop().create_task(fetching)
        self._phase = Phase.running
        _current.push(self)

    async def stop(self) -> None:
        """Stop gracefully; idempotent.

        At once, :meth:`perform` starts refusing jobs and the jobs still
        queued are cancelled. Running jobs get ``grace_period`` seconds to
        finish; those still running then are cancelled (coroutine jobs get
        :class:`asyncio.CancelledError`, sync jobs :class:`JobCancelled` from
        their next ``set_progress``). Last, the store is closed.
        """
        if self._phase is Phase.new:
            self._phase = Phase.stopped
            self._stopped.set()
            return
        if self._phase is not Phase.running:
            await self._on_loop(self._stopped.wait())
            return
        self._phase = Phase.stopping
        _current.remove(self)
        try:
            await self._on_loop(self._shut_down())
        finally:
            self._phase = Phase.stopped
            self._stopped.set()

    async def _shut_down(self) -> None:
        claimed_ahead: list[str] = []
        if self._fetching is not None and self._fetcher is not None:
            self._fetching.cancel()
            await asyncio.gather(self._fetching, return_exceptions=True)
            claimed_ahead = self._fetcher.take_waiting()
        await shut_down(
            self._store,
            self._pool,
            self._executor,
            self.options.grace_period,
            self._cancel_here,
            claimed_ahead,
        )

    def _new_fetcher(self) -> Fetcher:
        """The fetcher of a durable store: made before the store opens, so
        that a worker's store knows from the start that it claims."""
        store = self._store
        fetcher = Fetcher(
            store,
            self._pool,
            claims=not self.producer_only,
            poll_interval=getattr(store, "poll_interval", 1.0),
            lease=getattr(store, "lease", 30.0),
            on_lost=self._executor.interrupt,
        )
        self._pool.on_free = fetcher.wake
        return fetcher

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def join(self, timeout: float | None = None) -> None:
        """Wait until no job of this runner is queued or running.

        Meant for tests and scripts: perform, then ``await runner.join()``,
        then check what the jobs did.

        Raises:
            TimeoutError: ``timeout`` seconds passed first.
        """
        async with asyncio.timeout(timeout):
            await self._on_loop(self._pool.join())
