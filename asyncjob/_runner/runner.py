"""The runner: what an application holds. It takes jobs, has its engine run
them (and, on a durable store, its worker side claim them), and answers
for them."""

from __future__ import annotations

import asyncio
import enum
import functools
import itertools
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from types import FunctionType, MappingProxyType, TracebackType
from typing import Any, Self, TypeVar

from asyncjob._core import defaults, tracing
from asyncjob._core.callables import describe
from asyncjob._core.errors import JobCancelled, JobFailed, JobNotFound, RunnerNotRunning
from asyncjob._core.log import logger
from asyncjob._core.models import (
    MAX_JOB_ID_LENGTH,
    MAX_LISTED,
    Job,
    JobPage,
    JobQuery,
    JobState,
    JobStatus,
    Outcome,
    Overview,
    Progress,
    ScheduleStatus,
    WorkerStatus,
    ended,
    made,
    new_job_id,
    timestamp_to_datetime,
)
from asyncjob._core.registry import JobDefinition, Schedule, definition_of, lookup
from asyncjob._core.registry import schedules as registered_schedules
from asyncjob._core.spec import DEFAULT_QUEUE, JobSpec, check_queue
from asyncjob._engine.engine import Engine, FinishIn, FinishInSync
from asyncjob._engine.hooks import JobHooks, JobInfo, info, observe
from asyncjob._engine.sessions import JobScope, Sessions
from asyncjob._worker.maintenance import Maintenance
from asyncjob._worker.producer import STOP_TIMEOUT, Producer
from asyncjob._worker.scheduler import Scheduler
from asyncjob.stores import DurableStore, ImmediateStore, Store, TransactionalStore, resolve_store

from . import crossloop
from .options import RunnerOptions

__all__ = ("Phase", "Runner", "current")

T = TypeVar("T")

# Most jobs take no keyword arguments: one shared empty mapping rather
# than an empty dict per queued job.
_NO_KWARGS: Mapping[str, Any] = MappingProxyType({})


class Phase(enum.Enum):
    """Where a runner is in its life."""

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
        queues: the queues whose registered jobs this runner claims from a
            durable store (default: every queue). Jobs that are not
            registered run where they are performed, whatever their queue.
        hooks: :class:`asyncjob.JobHooks` told of each job's life.

    Raises:
        ValueError: an option is out of range.
        TypeError: an option has the wrong type.
    """

    def __init__(
        self,
        store: str | Store = "memory",
        *,
        concurrency: int = defaults.CONCURRENCY,
        sessionmaker: Any = None,
        sync_sessionmaker: Any = None,
        job_scope: JobScope | None = None,
        threads: int | None = None,
        grace_period: float = defaults.GRACE_PERIOD,
        producer_only: bool = False,
        queues: Iterable[str] | None = None,
        hooks: Iterable[JobHooks] = (),
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
        self._hooks = tuple(hooks)
        for hook in self._hooks:
            if not isinstance(hook, JobHooks):
                raise TypeError(f"hooks must be asyncjob.JobHooks, not {type(hook).__name__}")
        self._store = resolve_store(store)
        self._durable = self._store if isinstance(self._store, DurableStore) else None
        if producer_only and self._durable is None:
            raise ValueError(
                "producer_only=True needs a store that workers share (an SQL store): "
                "with this store, no other process could run the jobs"
            )
        self.producer_only = producer_only
        #: The queues this runner takes jobs from (``None``: every queue).
        self.queues: frozenset[str] | None = _queues(queues)
        self._phase = Phase.new
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped = asyncio.Event()
        #: Set when a registered job may be waiting to be claimed.
        self._wakeup = asyncio.Event()
        claims = self._durable is not None and not producer_only
        finish_in, finish_in_sync = _finishing_in(self._store, sessions)
        self._engine = Engine(
            self._store,
            concurrency=self.options.concurrency,
            threads=self.options.threads,
            scope=job_scope or sessions,
            hooks=self._hooks,
            finish_in=finish_in,
            finish_in_sync=finish_in_sync,
            on_free=self._wakeup.set if claims else None,
        )
        # A store that never waits answers the hot path without a coroutine.
        self._immediate = self._engine.immediate
        self._producer: Producer | None = None
        self._maintenance: Maintenance | None = None
        if self._durable is not None:
            if claims:
                self._producer = Producer(self._durable, self._engine, self._wakeup, self.queues)
            self._maintenance = Maintenance(
                self._durable,
                self._engine,
                self._producer,
                on_recovered=self._wakeup.set,
                queues=self.queues,
            )
        self._background: list[asyncio.Task[None]] = []
        self._producing: asyncio.Task[None] | None = None

    @property
    def store(self) -> Store:
        """The store this runner keeps its jobs in."""
        return self._store

    @property
    def hooks(self) -> tuple[JobHooks, ...]:
        """The hooks given to the runner, in their order."""
        return self._hooks

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
        self._loop = loop = asyncio.get_running_loop()
        if self._durable is not None and self._maintenance is not None:
            # A worker's store listens for new jobs from the start.
            on_queued = self._wakeup.set if self._producer is not None else None
            await self._durable.open(on_queued, self._maintenance.wake)
            await self._maintenance.heartbeat()  # listed among the workers once started
        else:
            await self._store.open()
        # Jobs run in a copy of the context the runner was started in, as
        # they would in tasks created here.
        self._engine.start()
        for side in (self._producer, self._maintenance, self._scheduler()):
            if side is not None:
                self._background.append(loop.create_task(side.run()))
        # The producer, first of them, is stopped gently: see Producer.stop.
        self._producing = self._background[0] if self._producer is not None else None
        self._phase = Phase.running
        with _lock:
            _running.append(self)

    def _scheduler(self) -> Scheduler | None:
        """What performs the periodic jobs of the queues this runner takes,
        if it runs jobs and there are any."""
        if self.producer_only:
            return None
        kept = [
            schedule
            for schedule in registered_schedules()
            if self.queues is None or self._definition(schedule).queue_name in self.queues
        ]
        if not kept:
            return None

        def new_job(schedule: Schedule, job_id: str) -> Job:
            return self._new_job(job_id, self._definition(schedule).func, (), {}, "periodic")

        async def performed(job: Job) -> None:
            await self._announce([job])

        return Scheduler(self._store, kept, new_job, performed)

    @staticmethod
    def _definition(schedule: Schedule) -> JobDefinition:
        definition = lookup(schedule.name)
        assert definition is not None, "a periodic job is registered"
        return definition

    async def stop(self) -> None:
        """Stop gracefully; idempotent.

        At once, :meth:`perform` starts refusing jobs and the jobs still
        queued are cancelled (or, claimed from a durable store, handed back
        to it). Running jobs get ``grace_period`` seconds to finish; those
        still running then are stopped: coroutine jobs get
        :class:`asyncio.CancelledError` and are waited for while they unwind,
        sync jobs get :class:`JobCancelled` from their next ``set_progress``
        and are left to their threads, their cancel requested. Last, the
        store is closed.
        """
        if self._phase is Phase.new:
            self._phase = Phase.stopped
            self._stopped.set()
            return
        if self._phase is not Phase.running:
            await self._on_loop(self._stopped.wait())
            return
        self._phase = Phase.stopping
        with _lock:
            if self in _running:
                _running.remove(self)
        try:
            await self._on_loop(self._shut_down())
        finally:
            self._phase = Phase.stopped
            self._stopped.set()

    async def _shut_down(self) -> None:
        """The steps of :meth:`stop`, on the runner's loop."""
        if self._producer is not None and self._producing is not None:
            self._producer.stop()
            await asyncio.wait({self._producing}, timeout=STOP_TIMEOUT)
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        engine, grace = self._engine, self.options.grace_period
        prefetched = self._producer.take_prefetched() if self._producer is not None else []
        queued = engine.take_queued()
        if self._durable is not None:
            await self._durable.release([*prefetched, *(job.id for job in queued if job.claimed)])
        for job in queued:
            if not job.claimed:
                await self._cancel_here(job.id)
        late = await engine.drain(grace)
        if late:
            logger.warning(
                "stopping %d job(s) still running after the %.1f s grace period: %s",
                len(late),
                grace,
                ", ".join(late),
            )
            claimed = set(engine.claimed_running())
            for job_id in late:
                if job_id not in claimed:
                    await self._store.cancel(job_id)
            back = [job_id for job_id in late if job_id in claimed]
            running = await engine.stop_late(late, max(1.0, grace), hand_back=back)
            if self._durable is not None and back:
                # They run again elsewhere (at least once), but only once
                # their code has stopped here: handed back before, another
                # worker ran them while they unwound here, past their limit.
                # Those still running (a sync job's thread) run again once
                # their lease has run out.
                await self._durable.release([job_id for job_id in back if job_id not in running])
        if self._maintenance is not None:
            await self._maintenance.leave()
        await engine.close(STOP_TIMEOUT)
        await self._store.close()

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
            await self._on_loop(self._engine.join())

    # -- performing ---------------------------------------------------------

    async def perform(
        self, func: Callable[..., Any] | JobSpec, /, *args: Any, **kwargs: Any
    ) -> str:
        """Queue ``func(*args, **kwargs)`` to run in the background.

        Returns the new job's id as soon as the job is recorded, without
        waiting for it to start. ``func`` may be a coroutine function or any
        other callable (run in the thread pool); partials, bound methods and
        callable objects are told apart here, once. It may also be
        :func:`asyncjob.using`'s spec, to perform it later, before others,
        in a queue, once per key, or in the application's transaction.

        Returns the id of the job already queued or running with the same
        ``unique`` key, if there is one: nothing is recorded then.

        Raises:
            TypeError: ``func`` is not callable.
            ValueError: the job would wait in a queue that no runner takes
                (on a store that only this runner reads).
            RunnerNotRunning: the runner is not started, or is stopping.
        """
        job = self._new_job(new_job_id(), func, args, kwargs or _NO_KWARGS, "perform()")
        if isinstance(func, JobSpec) and func.transaction is not None:
            return (await self._enqueue_in(func.transaction, [job]))[0]
        if asyncio.get_running_loop() is self._loop:
            if self._immediate is not None:
                return self._enqueue_nowait(job, self._immediate)
            return await self._enqueue(job)
        return await self._on_loop(self._enqueue(job))

    async def perform_as(
        self, job_id: str, func: Callable[..., Any] | JobSpec, /, *args: Any, **kwargs: Any
    ) -> str:
        """:meth:`perform`, under an id chosen beforehand.

        For integrations that must hand out a job's id before the job is
        recorded (the TurboGears2 layer, which performs once the request's
        transaction commits). Make the id with :func:`asyncjob.new_job_id`.

        Raises:
            TypeError: ``job_id`` is not a string, or ``func`` not callable.
            ValueError: ``job_id`` is empty or too long, or a job with this
                id exists already.
            RunnerNotRunning: the runner is not started, or is stopping.
        """
        if not isinstance(job_id, str):
            raise TypeError(f"a job id is a string, not {type(job_id).__name__}")
        if not 0 < len(job_id) <= MAX_JOB_ID_LENGTH or not job_id.isprintable():
            raise ValueError(
                f"a job id has 1 to {MAX_JOB_ID_LENGTH} printable characters, not {job_id!r}: "
                "make one with asyncjob.new_job_id()"
            )
        job = self._new_job(job_id, func, args, kwargs or _NO_KWARGS, "perform_as()")
        if isinstance(func, JobSpec) and func.transaction is not None:
            return (await self._enqueue_in(func.transaction, [job]))[0]
        return await self._on_loop(self._enqueue(job))

    async def perform_many(
        self,
        func: Callable[..., Any] | JobSpec,
        arguments: Iterable[Sequence[Any] | Mapping[str, Any]],
        /,
    ) -> list[str]:
        """Queue ``func`` once for each item of ``arguments``, all in one write.

        Each item is a tuple (or list) of positional arguments, or a dict of
        keyword arguments::

            ids = await runner.perform_many(resize, [("a.jpg", 64), ("b.jpg", 64)])
            ids = await runner.perform_many(notify, [{"user": 1}, {"user": 2}])

        Returns the new jobs' ids, in the order of ``arguments``, once all
        are recorded. An SQL store writes them in one statement: all of
        them, or none if it fails; performing thousands this way costs a
        little more than performing one. Every item is checked before
        anything is written. ``func`` may be :func:`asyncjob.using`'s spec:
        its options go with every item.

        Raises:
            TypeError: ``func`` is not callable, an item is neither a tuple
                nor a dict (a string, say), or an item's arguments cannot be
                stored (the message says which item).
            RunnerNotRunning: the runner is not started, or is stopping.
        """
        first = self._new_job(new_job_id(), func, (), _NO_KWARGS, "perform_many()")
        calls = [_call_of(item, i) for i, item in enumerate(arguments)]
        if not calls:
            return []
        # The first job but for the id and the arguments (a named tuple's
        # _replace cost 1.5 us a job, a tenth of a fast enqueue's CPU).
        name, target, is_async, at, registered = (
            first.name, first.func, first.is_async, first.enqueued_at, first.registered
        )  # fmt: skip
        options, trace = first.options, first.trace
        jobs = [
            Job(new_job_id(), name, target, args, kwargs, is_async, at, registered,
                options=options, trace=trace)
            for args, kwargs in calls
        ]  # fmt: skip
        if isinstance(func, JobSpec) and func.transaction is not None:
            return await self._enqueue_in(func.transaction, jobs)
        if asyncio.get_running_loop() is self._loop:
            return await self._enqueue_many(jobs)
        return await self._on_loop(self._enqueue_many(jobs))

    async def _enqueue_in(self, session: Any, jobs: list[Job]) -> list[str]:
        """Write the jobs through the application's session, in its
        transaction (``using(func, transaction=session)``), on the caller's
        loop: the session's. Workers take them once it commits."""
        if not isinstance(self._store, TransactionalStore):
            raise TypeError(
                f"{type(self._store).__name__} cannot write a job in your transaction: "
                "using(..., transaction=) needs an SQL store on the session's database"
            )
        ids = [await self._store.enqueue_in(session, job) for job in jobs]
        new = [info(job) for job, recorded in zip(jobs, ids, strict=True) if recorded == job.id]
        if new:
            for hook in self._hooks:
                await hook.enqueued(new)
        return ids

    def _new_job(
        self,
        job_id: str,
        func: Callable[..., Any] | JobSpec,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        call: str,
    ) -> Job:
        """The job to perform; ``call`` names the method in errors."""
        spec: JobSpec | None
        target: Callable[..., Any]
        if type(func) is FunctionType:  # most performs: a plain function, no options
            spec, target = None, func
        else:
            spec, target = (func, func.func) if isinstance(func, JobSpec) else (None, func)
            if not callable(target):
                raise TypeError(
                    f"{call} needs a callable (or asyncjob.using()'s spec) as its first "
                    f"argument, not {type(func).__name__} ({func!r:.60})"
                )
        if self._phase is not Phase.running:
            self._check_running()
        name, is_async = describe(target)
        definition = definition_of(target)
        if definition is None:
            options = None if spec is None else spec.options()
            registered = False
        else:
            name = definition.name
            options = (
                definition.options()
                if spec is None
                else spec.options(definition.queue, definition.priority)
            )
            registered = True
            if self._durable is None and self.queues is not None:
                # Only this runner can run it (jobs that are not registered
                # run here, whatever their queue).
                queue = DEFAULT_QUEUE if options is None else options.queue
                if queue not in self.queues:
                    raise ValueError(
                        f"this runner takes the queues {sorted(self.queues)}, and no other "
                        f"runner could take this job from the queue {queue!r}: perform it "
                        "to one of them, or give the runner that queue too"
                    )
        job = made(Job, (job_id, name, target, args, kwargs, is_async, time.time(), registered,
                         False, 1, options, None))  # fmt: skip
        return job if tracing.active is None else tracing.with_context(job)

    def _check_running(self) -> None:
        if self._phase is not Phase.running:
            raise RunnerNotRunning(
                f"this runner is {self._phase.value} and takes no jobs: perform() "
                "works between start() and stop() (inside 'async with runner:')"
            )

    def _enqueue_nowait(self, job: Job, store: ImmediateStore) -> str:
        """:meth:`_enqueue` on the runner's loop, into a store that never
        waits: nothing comes between the check that the runner runs (in
        :meth:`_new_job`) and the hand-over, which therefore succeeds."""
        recorded = store.enqueue_nowait(job)
        if recorded != job.id:
            return recorded  # the job queued or running with its unique key
        if job.options is None and self._durable is None:
            # To start at once, here: _hand_over's general path (a batch,
            # delays, a durable store's workers, the phase checked again)
            # cost 0.5 us a job more, measured.
            self._engine.submit(job)
        else:
            handed = self._hand_over((job,))
            assert handed
        return job.id

    async def _enqueue(self, job: Job) -> str:
        self._check_running()  # again: a call from another loop may cross stop()
        if self._immediate is not None:
            recorded = self._immediate.enqueue_nowait(job)
        elif self._hooks:
            recorded = (await self._told_and_written([job], self._store.enqueue(job)))[0]
        else:
            recorded = await self._store.enqueue(job)
        if recorded != job.id:
            return recorded  # the job queued or running with its unique key
        if not self._hand_over((job,)):
            await self._refuse((job,))
        return job.id

    async def _enqueue_many(self, jobs: list[Job]) -> list[str]:
        self._check_running()
        if self._hooks:
            ids = await self._told_and_written(jobs, self._store.enqueue_many(jobs))
        else:
            ids = await self._store.enqueue_many(jobs)
        new = [job for job, recorded in zip(jobs, ids, strict=True) if recorded == job.id]
        if new and not self._hand_over(new):
            await self._refuse(new)
        return ids

    async def _told_and_written(
        self, jobs: list[Job], write: Awaitable[str | list[str]]
    ) -> list[str]:
        """Tell the hooks of ``jobs``, then write them: a hook that keeps a
        record of its own (a progress tracker) must know a job before any
        worker can end it. Those that were not written after all (their
        unique key held by another job, or the write failed) the hooks are
        told of as ending."""
        about = [info(job) for job in jobs]
        for hook in self._hooks:
            await hook.enqueued(about)
        ids: list[str] = []
        try:
            written = await write
            ids = [written] if isinstance(written, str) else written
        finally:
            for job, recorded in itertools.zip_longest(jobs, ids):
                if recorded != job.id:
                    for hook in self._hooks:
                        await hook.ending(job.id)
        return ids

    async def _announce(self, jobs: list[Job]) -> None:
        """Tell the hooks of jobs just recorded (by a periodic tick), then
        hand them over."""
        if self._hooks:
            about = [info(job) for job in jobs]
            for hook in self._hooks:
                await hook.enqueued(about)
        if not self._hand_over(jobs):
            await self._refuse(jobs)

    def _hand_over(self, jobs: Sequence[Job]) -> bool:
        """Jobs just recorded, to whoever runs them; False, handing over
        nothing, when this runner would run them but stop() began while
        they were written."""
        if jobs[0].registered and self._durable is not None:
            # They wait in the store for a worker: this runner's, if it is one.
            if self._producer is not None:
                self._wakeup.set()
            return True
        if self._phase is not Phase.running:
            return False
        options = jobs[0].options
        wait = 0.0 if options is None else options.starts_in(jobs[0].enqueued_at)
        for job in jobs:
            if wait > 0:
                self._engine.submit_later(job, wait)
            else:
                self._engine.submit(job)
        return True

    async def _refuse(self, jobs: Sequence[Job]) -> None:
        """Cancel jobs recorded as stop() began, and say why."""
        for job in jobs:
            await self._store.cancel(job.id)
        self._check_running()

    # -- answering ------------------------------------------------------------

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

        ``(-1, None)`` while the job is queued (waiting to start, or to start
        again after a failed attempt) or has not reported any progress
        yet; ``(value, data)`` as last given to :func:`asyncjob.set_progress`
        while it runs; ``None`` once the job has ended, and for an unknown id.
        """
        status = await self._read(self._store.get, job_id)
        if status is None or status.is_final:
            return None
        if status.progress is None or status.state is JobState.queued:
            return (-1, None)
        return (status.progress, status.data)

    async def wait(self, job_id: str, timeout: float | None = None) -> Any:
        """Wait for the job to end and return its result.

        A cancelled job has ended once its code has stopped: ``wait`` raises
        :class:`JobCancelled` only then, so that what follows never races
        the job.

        Raises:
            JobFailed: the job raised; the text has the original error.
            JobCancelled: the job was cancelled.
            JobNotFound: no job has this id.
            TimeoutError: ``timeout`` seconds passed first (the job goes on).
        """
        if self._immediate is not None and asyncio.get_running_loop() is self._loop:
            outcome = self._immediate.outcome_nowait(job_id)
            # Succeeded tested first: it is the common answer, and a member
            # property of an enum (is_final) is a Python descriptor, 0.25 us.
            if (
                outcome is not None
                and outcome.state is not JobState.succeeded
                and not outcome.state.is_final
            ):
                outcome = await self._ending(self._immediate, job_id, timeout)
        else:
            outcome = await self._read(self._store.outcome, job_id)
        if outcome is None:
            raise JobNotFound(job_id)
        if outcome.state is JobState.succeeded:
            return outcome.result
        if not outcome.state.is_final:
            last: JobStatus | None = None
            try:
                async with asyncio.timeout(timeout):
                    async for last in self.watch(job_id):
                        if last.is_final:
                            outcome = last.outcome()
            except TimeoutError:
                raise TimeoutError(self._not_ended(job_id, timeout, last)) from None
            if not outcome.state.is_final:
                # Deleted while watched (by hand, or ended and then deleted
                # by retention between two looks): it was said cancelled.
                raise JobNotFound(job_id)
        return _result(job_id, outcome)

    async def _ending(
        self, store: ImmediateStore, job_id: str, timeout: float | None
    ) -> Outcome | None:
        """:meth:`wait` for a job of a store that never waits: its end,
        without a status built at each of its changes, as watching would."""
        ending = store.ending(job_id)
        if ending is None:
            return None  # forgotten meanwhile: not found
        if timeout is None:
            return await ending
        try:
            async with asyncio.timeout(timeout):
                return await ending
        except TimeoutError:
            last = await store.get(job_id)
            raise TimeoutError(self._not_ended(job_id, timeout, last)) from None

    def _not_ended(self, job_id: str, timeout: float | None, last: JobStatus | None) -> str:
        """Why :meth:`wait` gave up: the job, its state, and what may be wrong."""
        state = "unknown" if last is None else last.state.value
        why = f"job {job_id} has not ended within {timeout:g} s: it is {state}"
        if last is None or last.state is not JobState.queued:
            return why
        definition = lookup(last.name)
        if definition is not None and self._durable is not None:
            return (
                f"{why}, waiting for a worker of its store: if none is running, start "
                f"one, asyncjob worker --store URL --import {definition.func.__module__}"
            )
        return f"{why}, waiting for one of this runner's {self.options.concurrency} slots"

    def watch(self, job_id: str) -> AsyncIterator[JobStatus]:
        """Yield the job's status now and on every change; stop after the
        final one.

        Changes are pushed to the watcher as they happen; many watchers of
        one job are fine. A watcher that falls far behind may miss
        intermediate progress, never the final status.

        Raises:
            JobNotFound: no job has this id (when iterated).
        """
        source = functools.partial(self._store.watch, job_id)
        return crossloop.follow(self._current_loop, source, ended)

    def changes(self) -> AsyncIterator[None]:
        """Yield whenever the store's jobs may have changed, here or, where
        the store hears of them, in other processes; once for however many
        came while the caller was busy. Which jobs, it does not say: for an
        overview that is read again when something moved (the dashboard's),
        rather than every few seconds. Never ends: stop iterating."""
        return crossloop.follow(self._current_loop, self._store.changes, _never)

    def _current_loop(self) -> asyncio.AbstractEventLoop | None:
        return self._loop

    async def jobs(
        self,
        state: JobState | str | Iterable[JobState | str] | None = None,
        name: str | None = None,
        queue: str | None = None,
        limit: int = 100,
        *,
        before: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        before_at: datetime | None = None,
    ) -> list[JobStatus]:
        """The jobs in the store, newest first, filtered.

        Args:
            state: only jobs in this state, or in one of these states.
            name: only jobs of this name (see :attr:`JobStatus.name`).
            queue: only jobs of this queue.
            limit: at most this many (1 to 1,000).
            before: the id of the last job of the previous page: only jobs
                after it. Pages stay cheap however deep they go.
            since: only jobs performed at or after this time (an aware
                datetime).
            until: only jobs performed before this time.
            before_at: the ``enqueued_at`` of the job ``before``: with it,
                the page after that job is found even if the job has been
                deleted (or the memory store has forgotten it) since the
                previous page was read.

        Raises:
            ValueError: a state is unknown, ``limit`` out of range, a time
                naive (without a time zone), or ``before_at`` given without
                ``before``.
            TypeError: an argument has the wrong type.
            JobNotFound: ``before`` names no job the store knows, and no
                ``before_at`` says where it stood.
        """
        query = _job_query(state, name, queue, limit, before, since, until, before_at)
        return await self._read(self._store.list_jobs, query)

    async def jobs_page(
        self,
        state: JobState | str | Iterable[JobState | str] | None = None,
        name: str | None = None,
        queue: str | None = None,
        limit: int = 100,
        *,
        before: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        before_at: datetime | None = None,
    ) -> JobPage:
        """A page of :meth:`jobs`, and where the next one starts, at a cost
        that does not grow with the jobs the store holds, however rare the
        jobs its filters select: what a dashboard pages through. A page may
        hold fewer jobs than ``limit`` (none, even) while ``next`` says
        older ones are left to look at (see :meth:`Store.list_page`). It
        takes the arguments of :meth:`jobs`, and raises its errors; the
        next page's ``before`` and ``before_at`` are the page's ``next`` and
        ``next_at``.
        """
        query = _job_query(state, name, queue, limit, before, since, until, before_at)
        return await self._read(self._store.list_page, query)

    async def schedules(self) -> list[ScheduleStatus]:
        """The periodic jobs, by name: those registered here, and those the
        store knows from any process, with their last tick performed and
        their next one."""
        now = time.time()
        known = {status.name: status for status in await self._on_loop(self._store.schedules())}
        for schedule in registered_schedules():
            if schedule.name not in known:  # no runner has kept it yet
                next_tick = timestamp_to_datetime(schedule.cron.next_after(now))
                known[schedule.name] = ScheduleStatus(
                    schedule.name, schedule.cron.expression, None, next_tick
                )
        return sorted(known.values(), key=lambda status: status.name)

    async def cancel(self, job_id: str) -> bool:
        """Cancel the job; returns True if it was queued or running.

        Returns at once. A queued job never starts: it is ``cancelled`` when
        this returns. A running job is stopped: a coroutine job gets
        :class:`asyncio.CancelledError` at its current ``await`` (it may
        clean up), a sync job :class:`JobCancelled` from its next
        :func:`asyncjob.set_progress`, since a thread cannot be stopped from
        outside. It stays ``running``, with ``cancel_requested`` in its
        status, until its code has stopped; only then is it ``cancelled``,
        for :meth:`wait` and :meth:`watch` too. A job running in another
        process learns of it at its worker's next lease renewal. A job that
        has ended, or an unknown id, gives False.
        """
        return await self._on_loop(self._cancel_here(job_id))

    async def _cancel_here(self, job_id: str) -> bool:
        self._engine.settle(job_id)  # a job lined up for a thread: queued or running
        status = None
        if self._hooks:  # hooks hear of an end before it is recorded
            status = await self._store.get(job_id)
            if status is not None and status.state is JobState.queued:
                for hook in self._hooks:
                    await hook.ending(job_id)
        before = await self._store.cancel(job_id)
        if before is JobState.queued and status is not None:
            about = JobInfo(status.id, status.name, status.queue, status.attempts + 1)
            observe(self._hooks, "finished", about, JobState.cancelled, None, None)
        if before is JobState.queued:
            self._engine.forget(job_id)  # if it waits for its time here
        elif before is JobState.running:
            if self._maintenance is not None:
                await self._maintenance.stop(job_id)
            else:
                self._engine.interrupt(job_id)
        return before in (JobState.queued, JobState.running)

    # -- what operators do (shared stores) --------------------------------------------

    async def retry(self, job_id: str) -> bool:
        """Run again a job that failed or was cancelled: it is queued, due
        now, for one more attempt, and any worker of the store takes it.
        Its last error joins :attr:`JobStatus.errors`. Returns False if the
        job has not failed or been cancelled (it is queued, running or
        succeeded), or is not registered (only the process that performed
        it could run it).

        Raises:
            JobNotFound: no job has this id.
            ValueError: the job's unique key is held by another job now.
            RuntimeError: the store is not shared (``"memory"`` keeps no
                job's function and arguments once it has run).
        """
        store = self._shared_store("retry a job")
        if not await self._on_loop(store.requeue(job_id)):
            await self.status(job_id)  # JobNotFound, if it is that
            return False
        return True

    async def delete(self, job_ids: Iterable[str]) -> int:
        """Delete the jobs of ``job_ids`` that have ended, and return how
        many; a job queued or running is left alone (cancel it first).

        Raises:
            RuntimeError: the store is not shared (``"memory"`` forgets
                ended jobs by itself, after ``keep_finished``).
        """
        ids = [job_ids] if isinstance(job_ids, str) else list(job_ids)
        return await self._on_loop(self._shared_store("delete jobs").delete(ids))

    async def purge(
        self,
        older_than: float | timedelta,
        states: Iterable[JobState | str] = (JobState.succeeded, JobState.cancelled),
    ) -> int:
        """Delete the jobs in ``states`` that ended more than ``older_than``
        ago (seconds, or a timedelta), and return how many: a batch at a
        time, so that workers and producers are never held up for long.
        Failed jobs are kept unless named: their errors are what people
        come back for.

        Raises:
            ValueError: a state is not a final one, or ``older_than`` < 0.
            RuntimeError: the store is not shared.
        """
        seconds: object = (
            older_than.total_seconds() if isinstance(older_than, timedelta) else older_than
        )
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds >= 0:
            raise ValueError(f"older_than must be seconds >= 0 or a timedelta, not {older_than!r}")
        chosen = frozenset(JobState(state) for state in states)
        if not chosen or not all(state.is_final for state in chosen):
            raise ValueError(
                f"only jobs that ended can be purged: states among succeeded, failed, "
                f"cancelled, not {sorted(state.value for state in chosen)}"
            )
        return await self._on_loop(self._shared_store("purge jobs").purge(chosen, float(seconds)))

    async def overview(self) -> Overview:
        """What the store holds now (jobs waiting, delayed and running, by
        queue; since when the longest-waiting job is due) and what ended
        over the last hour, a minute at a time: what a dashboard shows.
        Counts stop at 10,000, so that reading it costs no more with a
        million jobs queued."""
        return await self._on_loop(self._store.overview())

    async def workers(self) -> list[WorkerStatus]:
        """The workers of the store (the runners that run its jobs, in any
        process), as their heartbeats tell: host, pid, queues, concurrency,
        jobs held. Those gone for a lease are not ``alive``; those gone for
        a day are not listed. An empty list on the memory store."""
        if self._durable is None:
            return []
        return await self._on_loop(self._durable.workers())

    def _shared_store(self, what: str) -> DurableStore:
        if self._durable is None:
            raise RuntimeError(
                f"cannot {what} in a memory store: give the runner a shared store "
                "(an SQLite file or PostgreSQL)"
            )
        return self._durable

    async def _read(self, method: Callable[[Any], Awaitable[T]], arg: Any) -> T:
        """``await method(arg)``: a store read, on the runner's loop."""
        if asyncio.get_running_loop() is self._loop:
            return await method(arg)
        return await self._on_loop(method(arg))

    async def _on_loop(self, awaitable: Awaitable[T]) -> T:
        """Await ``awaitable`` on the runner's loop, from whichever loop calls."""
        return await crossloop.call_on(self._loop, awaitable)


# -- the runner that module-level calls use -------------------------------------

_lock = threading.Lock()  # runners start and stop on any thread's loop
_running: list[Runner] = []


def current() -> Runner:
    """The most recently started runner that is still running, which
    module-level calls such as :func:`asyncjob.perform` use.

    Raises:
        RunnerNotRunning: none is running, saying how to start one.
    """
    with _lock:
        if _running:
            return _running[-1]
    raise RunnerNotRunning(
        "no asyncjob runner is running in this process: start one first, e.g. "
        "'async with asyncjob.Runner():' in your application's lifespan"
    )


# -- helpers ---------------------------------------------------------------------


def _finishing_in(store: Store, sessions: Sessions) -> tuple[FinishIn | None, FinishInSync | None]:
    """The store's ways of recording a job's success in the job's own
    session, for the kinds of job whose sessions are on the store's database."""
    if not isinstance(store, TransactionalStore):
        return None, None

    def shared(maker: Any) -> bool:
        engine = None if maker is None else maker.kw.get("bind")
        return engine is not None and store.shares_database_with(engine)

    return (
        store.finish_in if shared(sessions.async_maker) else None,
        store.finish_in_sync if shared(sessions.sync_maker) else None,
    )


def _check_callable(func: object, call: str) -> None:
    if not callable(func):
        raise TypeError(
            f"{call} needs a callable as its first argument, not {type(func).__name__} ({func!r})"
        )


def _queues(queues: object) -> frozenset[str] | None:
    """``Runner(queues=...)``, checked."""
    if queues is None:
        return None
    if isinstance(queues, str) or not isinstance(queues, Iterable):
        raise TypeError(f"queues must be a list of queue names, not {queues!r:.60}")
    names = frozenset(check_queue(queue, "a queue name") for queue in queues)
    if not names:
        raise ValueError("queues must name at least one queue (or be None: every queue)")
    return names


def _call_of(item: object, index: int) -> tuple[tuple[Any, ...], Mapping[str, Any]]:
    """An item of :meth:`Runner.perform_many`'s arguments, as ``(args, kwargs)``."""
    if isinstance(item, tuple | list):
        return tuple(item), _NO_KWARGS
    if isinstance(item, Mapping) and all(isinstance(key, str) for key in item):
        return (), dict(item) or _NO_KWARGS
    hint = f": write ({item!r},) for one positional argument" if isinstance(item, str) else ""
    raise TypeError(
        f"perform_many(): item {index} is {type(item).__name__} ({item!r:.60}), not a tuple "
        f"of positional arguments or a dict of keyword arguments{hint}"
    )


def _job_query(
    state: object,
    name: object,
    queue: object,
    limit: object,
    before: object,
    since: object = None,
    until: object = None,
    before_at: object = None,
) -> JobQuery:
    """The query of :meth:`Runner.jobs`, each argument checked."""
    states = None
    if state is not None:
        given = [state] if isinstance(state, str) else state
        if not isinstance(given, Iterable):
            raise TypeError(f"state must be a JobState or a list of them, not {state!r}")
        try:
            states = frozenset(JobState(s) for s in given)
        except ValueError:
            allowed = ", ".join(s.value for s in JobState)
            raise ValueError(f"unknown state in {state!r}: the states are {allowed}") from None
    if name is not None and not isinstance(name, str):
        raise TypeError(f"name must be a string, not {type(name).__name__}")
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise TypeError(f"limit must be an int, not {type(limit).__name__}")
    if not 1 <= limit <= MAX_LISTED:
        raise ValueError(
            f"limit must be from 1 to {MAX_LISTED}, not {limit}: page through more with before="
        )
    if before is not None and not isinstance(before, str):
        raise TypeError(f"before must be a job id, not {type(before).__name__}")
    if queue is not None:
        queue = check_queue(queue, "queue")
    if before_at is not None and before is None:
        raise ValueError("before_at goes with before: it says where that job stood")
    return JobQuery(
        states,
        name,
        queue,
        limit,
        before,
        _moment(since, "since"),
        _moment(until, "until"),
        _moment(before_at, "before_at", exact=True),
    )


def _moment(moment: object, what: str, *, exact: bool = False) -> float | None:
    """An aware datetime of :meth:`Runner.jobs` as seconds since the epoch,
    compared to the microsecond, as :class:`JobStatus` gives times: a store
    keeps a float, which its datetime rounds, so that ``since=`` a job's own
    ``enqueued_at`` would otherwise leave it out half the time. ``exact``:
    as it is (``before_at``, which :meth:`JobQuery.listed_after` compares)."""
    if moment is None:
        return None
    if not isinstance(moment, datetime):
        raise TypeError(f"{what} must be a datetime, not {type(moment).__name__}")
    if moment.utcoffset() is None:
        raise ValueError(
            f"{what} must be an aware datetime (with a time zone), not the naive {moment!r}: "
            "use datetime.now(timezone.utc), say"
        )
    return moment.timestamp() if exact else moment.timestamp() - 0.5e-6


def _never(_: object) -> bool:
    return False


def _result(job_id: str, outcome: Outcome) -> Any:
    if outcome.state is JobState.succeeded:
        return outcome.result
    if outcome.state is JobState.failed:
        raise JobFailed(job_id, outcome.error or "unknown error", outcome.traceback)
    raise JobCancelled(job_id)
