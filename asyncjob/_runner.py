"""The runner: takes jobs, runs them, and answers for them."""

from __future__ import annotations

import asyncio
import enum
import functools
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from types import MappingProxyType, TracebackType
from typing import Any, Self, TypeVar

from . import _current, _loops
from ._callables import describe
from ._errors import JobCancelled, JobFailed, JobNotFound, RunnerNotRunning
from ._execution import Executor
from ._fetcher import Fetcher
from ._models import Job, JobState, JobStatus, Outcome, Progress
from ._options import RunnerOptions
from ._policy import FinishIn
from ._registry import registered_name
from ._sessions import JobScope, Sessions
from ._shutdown import shut_down
from ._workers import WorkerPool
from .stores import Store, resolve_store

__all__ = ("Runner",)

T = TypeVar("T")

_NO_KWARGS: Mapping[str, Any] = MappingProxyType({})


class _Phase(enum.Enum):
    new = "new"
    running = "running"
    stopping = "stopping"
    stopped = "stopped"


class Runner:
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
        self._phase = _Phase.new
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor = Executor(self._store, self.options.threads, job_scope or sessions)
        self._pool = WorkerPool(self._executor, self.options.concurrency)
        self._executor.resubmit = self._pool.submit_later
        self._executor.finish_in = _finish_in_session(self._store, sessions)
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
        return self._phase is _Phase.running

    # -- life cycle -------------------------------------------------------

    async def start(self) -> None:
        """Open the store and start taking jobs.

        Raises:
            RuntimeError: the runner was started before.
        """
        if self._phase is not _Phase.new:
            raise RuntimeError(
                f"this runner is {self._phase.value}: a runner starts once; "
                "create a new Runner to start again"
            )
        self._loop = asyncio.get_running_loop()
        await self._store.open()
        # Jobs run in a copy of the context the runner was started in, as
        # they would in tasks created here.
        self._pool.start()
        self._executor.start(self.options.concurrency)
        if self._store.durable:
            self._start_fetching()
        self._phase = _Phase.running
        _current.push(self)

    async def stop(self) -> None:
        """Stop gracefully; idempotent.

        At once, :meth:`perform` starts refusing jobs and the jobs still
        queued are cancelled. Running jobs get ``grace_period`` seconds to
        finish; those still running then are cancelled (coroutine jobs get
        :class:`asyncio.CancelledError`, sync jobs :class:`JobCancelled` from
        their next ``set_progress``). Last, the store is closed.
        """
        if self._phase is _Phase.new:
            self._phase = _Phase.stopped
            self._stopped.set()
            return
        if self._phase is not _Phase.running:
            await self._on_loop(self._stopped.wait())
            return
        self._phase = _Phase.stopping
        _current.remove(self)
        try:
            await self._on_loop(self._shut_down())
        finally:
            self._phase = _Phase.stopped
            self._stopped.set()

    async def _shut_down(self) -> None:
        if self._fetching is not None:
            self._fetching.cancel()
            await asyncio.gather(self._fetching, return_exceptions=True)
        await shut_down(
            self._store, self._pool, self._executor, self.options.grace_period, self._cancel_here
        )

    def _start_fetching(self) -> None:
        store = self._store
        self._fetcher = Fetcher(
            store,
            self._pool,
            poll_interval=getattr(store, "poll_interval", 1.0),
            lease=getattr(store, "lease", 30.0),
            on_lost=self._executor.interrupt,
        )
        self._pool.on_free = self._fetcher.wake
        fetching = self._fetcher.run(claim=not self.producer_only)
        self._fetching = asyncio.get_running_loop().create_task(fetching)

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

    # -- performing -------------------------------------------------------

    async def perform(self, func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> str:
        """Queue ``func(*args, **kwargs)`` to run in the background.

        Returns the new job's id as soon as the job is recorded, without
        waiting for it to start. ``func`` may be a coroutine function or any
        other callable (run in the thread pool); partials, bound methods and
        callable objects are told apart here, once.

        Raises:
            TypeError: ``func`` is not callable.
            RunnerNotRunning: the runner is not started, or is stopping.
        """
        if not callable(func):
            raise TypeError(
                f"perform() needs a callable as its first argument, not "
                f"{type(func).__name__} ({func!r})"
            )
        # Most jobs take no keyword arguments: keep one shared empty mapping
        # rather than an empty dict per queued job.
        job = self._new_job(os.urandom(16).hex(), func, args, kwargs or _NO_KWARGS)
        if asyncio.get_running_loop() is self._loop:
            return await self._enqueue(job)
        return await self._on_loop(self._enqueue(job))

    async def perform_in(
        self, session: Any, func: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> str:
        """:meth:`perform`, in the application's transaction.

        ``session`` is the application's SQLAlchemy ``AsyncSession``, on
        the store's own database: the job is written in its transaction, so
        it exists, and runs, only if the application commits; a rollback
        leaves no trace of it. ``func`` must be registered with
        :func:`asyncjob.job` (any worker of the store may run it).

        Raises:
            TypeError: the store is not an SQL store, or ``func`` is not
                registered, or not callable.
            RunnerNotRunning: the runner is not started, or is stopping.
        """
        if not callable(func):
            raise TypeError(f"perform_in() needs a callable, not {type(func).__name__}")
        job = self._new_job(os.urandom(16).hex(), func, args, kwargs or _NO_KWARGS)
        await self._store.enqueue_in(session, job)
        return job.id

    def _new_job(
        self,
        job_id: str,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
    ) -> Job:
        """The job to perform, with the id chosen by the caller: the id of a
        job handed over later (after a commit) must be known first."""
        self._check_running()
        name, is_async = describe(func)
        registered = registered_name(func)
        if registered is not None:
            name = registered
        return Job(job_id, name, func, args, kwargs, is_async, time.time(), registered is not None)

    def _check_running(self) -> None:
        if self._phase is not _Phase.running:
            raise RunnerNotRunning(
                f"this runner is {self._phase.value} and takes no jobs: perform() "
                "works between start() and stop() (inside 'async with runner:')"
            )

    async def _enqueue(self, job: Job) -> str:
        self._check_running()  # again: a call from another loop may cross stop()
        await self._store.enqueue(job)
        if job.registered and self._store.durable:
            # It waits in the store for a worker: this runner's, if it is one.
            if self._fetcher is not None and not self.producer_only:
                self._fetcher.wake()
            return job.id
        if self._phase is not _Phase.running:
            await self._store.cancel(job.id)  # stop() began while it was written
            self._check_running()
        self._pool.submit(job)
        return job.id

    async def join(self, timeout: float | None = None) -> None:
        """Wait until no job of this runner is queued or running.

        Meant for tests and scripts: perform, then ``await runner.join()``,
        then check what the jobs did.

        Raises:
            TimeoutError: ``timeout`` seconds passed first.
        """
        async with asyncio.timeout(timeout):
            await self._on_loop(self._pool.join())

    # -- asking about jobs ------------------------------------------------

    async def status(self, job_id: str) -> JobStatus:
        """The job's current :class:`JobStatus`.

        Raises:
            JobNotFound: no job has this id (or it was forgotten).
        """
        status = await self._read(self._store.get, job_id)
        if status is None:
            raise JobNotFound(job_id)
        return status

    async def get_progress(self, job_id: str) -> Progress | None:
        """The job's progress, with ``tgext.asyncjob``'s meaning.

        ``(-1, None)`` while the job has not reported any progress yet;
        ``(value, data)`` as last given to :func:`asyncjob.set_progress`;
        ``None`` once the job has ended, and for an unknown id.
        """
        status = await self._read(self._store.get, job_id)
        if status is None or status.is_final:
            return None
        if status.progress is None:
            return (-1, None)
        return (status.progress, status.data)

    async def wait(self, job_id: str, timeout: float | None = None) -> Any:
        """Wait for the job to end and return its result.

        Raises:
            JobFailed: the job raised; the text has the original error.
            JobCancelled: the job was cancelled.
            JobNotFound: no job has this id.
            TimeoutError: ``timeout`` seconds passed first (the job goes on).
        """
        outcome = await self._read(self._store.outcome, job_id)
        if outcome is None:
            raise JobNotFound(job_id)
        if not outcome.state.is_final:
            async with asyncio.timeout(timeout):
                async for status in self.watch(job_id):
                    if status.is_final:
                        outcome = status.outcome()
        return _result(job_id, outcome)

    async def watch(self, job_id: str) -> AsyncIterator[JobStatus]:
        """Yield the job's status now and on every change; stop after the
        final one.

        Changes are pushed to the watcher as they happen; many watchers of
        one job are fine. A watcher that falls far behind may miss
        intermediate progress, never the final status.

        Raises:
            JobNotFound: no job has this id.
        """
        if self._loop is None or self._on_own_loop():
            async for status in self._store.watch(job_id):
                yield status
            return
        source = functools.partial(self.watch, job_id)
        async for status in _loops.relay(self._loop, source, _is_final):
            yield status

    async def cancel(self, job_id: str) -> bool:
        """Cancel the job; returns True if it was queued or running.

        Its state is ``cancelled`` as soon as this returns: a queued job
        never starts; a running coroutine job gets
        :class:`asyncio.CancelledError` at its current ``await`` (it may
        clean up); a running sync job gets :class:`JobCancelled` from its
        next :func:`asyncjob.set_progress`, since a thread cannot be stopped
        from outside. A job that has ended, or an unknown id, gives False.
        """
        return await self._on_loop(self._cancel_here(job_id))

    async def _cancel_here(self, job_id: str) -> bool:
        before = await self._store.cancel(job_id)
        if before is JobState.running:
            self._executor.interrupt(job_id)
        return before in (JobState.queued, JobState.running)

    # -- loops ------------------------------------------------------------

    def _on_own_loop(self) -> bool:
        return _loops.is_current(self._loop)

    async def _read(self, method: Callable[[str], Awaitable[T]], job_id: str) -> T:
        """``await method(job_id)``: a store read, on the runner's loop."""
        if asyncio.get_running_loop() is self._loop:
            return await method(job_id)
        return await self._on_loop(method(job_id))

    async def _on_loop(self, awaitable: Awaitable[T]) -> T:
        """Await ``awaitable`` on the runner's loop, from whichever loop calls."""
        return await _loops.call_on(self._loop, awaitable)


def _finish_in_session(store: Store, sessions: Sessions) -> FinishIn | None:
    """The store's way of recording a job's success in the job's own session,
    when the runner's sessions are on the store's own database."""
    maker = sessions.async_maker
    finish_in = getattr(store, "finish_in", None)
    shares = getattr(store, "shares_database_with", None)
    if maker is None or finish_in is None or shares is None:
        return None
    engine = maker.kw.get("bind")
    if engine is None or not shares(engine):
        return None
    result: FinishIn = finish_in
    return result


def _is_final(status: JobStatus) -> bool:
    return status.is_final


def _result(job_id: str, outcome: Outcome) -> Any:
    if outcome.state is JobState.succeeded:
        return outcome.result
    if outcome.state is JobState.failed:
        raise JobFailed(job_id, outcome.error or "unknown error", outcome.traceback)
    raise JobCancelled(job_id)
