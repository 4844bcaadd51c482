"""The one seam between the runner and where jobs are kept.

Four interfaces, each the whole contract of what it adds:

- :class:`Store`: every store. A runner records each job's life in it, and
  reads it back for whoever asks.
- :class:`ImmediateStore`: a store that never waits (the memory store). It
  answers a job's hot path synchronously too, and the runner calls that.
- :class:`DurableStore`: a store that several processes share. Registered
  jobs wait in it until a worker claims them, and a worker holds what it
  claimed under a lease.
- :class:`TransactionalStore`: a store that can write in the application's
  own database transaction, so that a job and the rows it is about (or the
  rows a job wrote and its success) are committed together or not at all.

A store implements :class:`Store`, :class:`ImmediateStore` or
:class:`DurableStore`, and may add
:class:`TransactionalStore`. ``asyncjob.testing`` holds the test suite that
checks each contract, for a store of your own.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from asyncjob._core.log import logger
from asyncjob._core.models import (
    Claimed,
    Job,
    JobPage,
    JobQuery,
    JobState,
    JobStatus,
    Outcome,
    Overview,
    ScheduleStatus,
    WorkerStatus,
)

__all__ = (
    "SHARED_STORES",
    "DurableStore",
    "ImmediateStore",
    "Store",
    "TransactionalStore",
    "unknown_store",
)

#: The tasks of DurableStore.finish_soon's default, until they end.
_finishing: set[asyncio.Task[None]] = set()

#: What to give for a store that worker processes share.
SHARED_STORES = (
    "an async database URL (sqlite+aiosqlite:///path/jobs.db, postgresql+asyncpg://user@host/db)"
)


def unknown_store(store: str) -> str:
    """What to say of a store name or URL that no store takes."""
    return f"unknown store {store!r}: give {SHARED_STORES}, or 'memory', or a Store object"


class Store(abc.ABC):
    """Where jobs, their states, progress and results are kept.

    A runner calls its store from the runner's event loop, except
    :meth:`report_progress`, which may come from any thread. Every state
    change goes through the store, so that whatever reads it (this process
    or, for a shared store, another) sees the same story::

        enqueue → queued ─ start ─→ running ─ finish ─→ succeeded | failed | cancelled
                    │                  │  └─ retry ─→ queued (a later attempt)
                    └─ cancel ─→ cancelled    └─ cancel: requested; finish ends it cancelled

    Each transition is atomic and happens at most once: a job that is final
    is never changed again.

    Subclasses implement the abstract methods; :meth:`open` and
    :meth:`close` are optional hooks, :meth:`enqueue_many` and
    :meth:`outcome` have defaults that a store may make faster.
    """

    async def open(self) -> None:  # noqa: B027 - an optional hook
        """Prepare the store. Called once by :meth:`Runner.start`, on the loop
        that will use the store, before any other method."""

    async def close(self) -> None:  # noqa: B027 - an optional hook
        """Release what :meth:`open` took. Called by :meth:`Runner.stop`
        after the last job has ended; no method is called after it but
        :meth:`close` again, which does nothing."""

    @abc.abstractmethod
    async def enqueue(self, job: Job) -> str:
        """Record ``job`` as ``queued``, with no progress yet, and return its id.

        ``job.options`` says in which queue it waits, at which priority, from
        when, and under which unique key: while a job recorded with the same
        ``unique`` key is queued or running, nothing is recorded and that
        job's id is returned instead (atomically: two performs racing on one
        key record one job). When it returns the job is visible to :meth:`get`. Must not keep a
        reference to ``job.func``, ``job.args`` or ``job.kwargs`` beyond what
        it needs to store them (the runner holds them for running).

        Raises:
            TypeError: the store cannot hold the job's arguments (it says
                which); nothing is recorded.
            ValueError: a job with this id exists already; nothing is
                recorded.
        """

    async def enqueue_many(self, jobs: list[Job]) -> list[str]:
        """Record each of ``jobs`` as :meth:`enqueue` does, in one go, and
        return the id each one has (another job's, for a unique key taken).

        A store that can writes them all or none, and checks every job
        before it writes any: with a ``TypeError`` that says which job (by
        its place in ``jobs``, from 0) it cannot hold. The default enqueues
        them one after the other.
        """
        return [await self.enqueue(job) for job in jobs]

    @abc.abstractmethod
    async def start(self, job_id: str) -> bool:
        """Move a ``queued`` job to ``running``, count an attempt and stamp
        ``started_at``.

        Returns ``False``, changing nothing, when the job is no longer queued
        (it was cancelled meanwhile): the runner then does not run it.
        """

    @abc.abstractmethod
    def report_progress(self, job_id: str, value: float, data: Any) -> None:
        """Record ``(value, data)`` as the running job's progress.

        Called from inside the job, on the loop or from a worker thread: it
        must be thread-safe and return quickly without blocking. It may
        apply the change later or coalesce several into one, but the last
        value reported before :meth:`finish` must be stored before the final
        state is. A report for a job that is not running changes nothing.

        Raises:
            TypeError: the store cannot hold ``data`` (before recording
                anything).
        """

    @abc.abstractmethod
    async def finish(
        self,
        job_id: str,
        state: JobState,
        *,
        result: Any = None,
        error: str | None = None,
        traceback: str | None = None,
    ) -> bool:
        """Move a ``running`` job to the final ``state``, stamp
        ``finished_at``, and keep its progress.

        ``result`` goes with ``succeeded``; ``error`` and ``traceback`` with
        ``failed``. A job whose cancel was requested (see :meth:`cancel`)
        ends ``cancelled`` whatever ``state`` says, without a result: the
        runner calls this once the job's code has stopped, however it
        stopped.

        Returns ``False``, changing nothing, when the job is not running (or,
        in a shared store, no longer held by this store): the runner then
        discards the outcome.
        """

    async def finish_as(
        self,
        job_id: str,
        state: JobState,
        *,
        result: Any = None,
        error: str | None = None,
        traceback: str | None = None,
    ) -> JobState | None:
        """:meth:`finish`, and the state it recorded: ``state``, another
        when the store ended the job otherwise (``cancelled``: its cancel
        was requested after its code returned), or ``None`` when it changed
        nothing. The runner tells its hooks (metrics, traces) this state.

        This default trusts :meth:`finish` to record ``state``: a store
        that can tell which state it recorded says so by overriding it.
        """
        written = await self.finish(job_id, state, result=result, error=error, traceback=traceback)
        return state if written else None

    @abc.abstractmethod
    async def retry(self, job_id: str, *, error: str, delay: float) -> bool:
        """Move a failed attempt of a ``running`` job back to ``queued``, due
        in ``delay`` seconds (its ``run_after``), keeping ``error`` in its
        ``errors``, and its unique key: a perform with that key still finds it.

        Returns ``False`` when the job does not go back to the queue: it is
        no longer running here (nothing changes), or its cancel was
        requested (it ends ``cancelled``). A durable store hands the job to
        whichever worker claims it once it is due; any other store leaves
        it to the runner that called, which runs it again after ``delay``.
        """

    @abc.abstractmethod
    async def cancel(self, job_id: str) -> JobState | None:
        """Cancel the job: a ``queued`` job becomes ``cancelled`` at once; a
        ``running`` one has its cancel requested (``cancel_requested`` in its
        status) and stays ``running`` until its runner has stopped its code
        and calls :meth:`finish`.

        Stopping the code is the runner's part, not the store's: a runner in
        this process is told by the return value, a worker elsewhere by
        :meth:`DurableStore.renew`.

        Returns the state the job was in before the call (a final state means
        nothing changed), or ``None`` for an unknown id.
        """

    @abc.abstractmethod
    async def get(self, job_id: str) -> JobStatus | None:
        """The job's current status, or ``None`` for an id the store does
        not know (never performed, or forgotten after it finished)."""

    async def outcome(self, job_id: str) -> Outcome | None:
        """The job's state and, once it has ended, its outcome; ``None`` for
        an unknown id.

        What :meth:`asyncjob.Runner.wait` reads first. The default takes it
        from :meth:`get`; a store may answer more cheaply.
        """
        status = await self.get(job_id)
        return None if status is None else status.outcome()

    @abc.abstractmethod
    async def list_jobs(self, query: JobQuery) -> list[JobStatus]:
        """The jobs that ``query`` selects, newest first: by ``enqueued_at``,
        then by id, both descending, at most ``query.limit`` of them.

        With ``query.before``, only the jobs that come after that job in
        this order (keyset pagination): the cost of a page does not grow
        with its depth, and jobs performed meanwhile do not shift it. A
        ``before`` the store does not know (deleted since), with
        ``query.before_at``: the jobs that come after the place it had
        (:meth:`JobQuery.listed_after`).

        Raises:
            JobNotFound: ``query.before`` names a job the store does not
                know, and ``query.before_at`` is not given.
        """

    async def list_page(self, query: JobQuery) -> JobPage:
        """A page of :meth:`list_jobs`, for a dashboard: its jobs, and where
        the next page starts.

        A store may look at a bounded number of jobs to fill the page, and
        return fewer than ``query.limit`` (none, even) with ``next`` set when
        older jobs are left to look at: a page then costs the same however
        rare the jobs its filters select (the SQL store looks at 20,000 at
        most). This default is :meth:`list_jobs`, whose pages are full
        until the last.
        """
        jobs = await self.list_jobs(query)
        if len(jobs) < query.limit:
            return JobPage(jobs, None)
        return JobPage(jobs, jobs[-1].id, jobs[-1].enqueued_at)

    @abc.abstractmethod
    async def overview(self) -> Overview:
        """What the store holds now, counted up to ``COUNT_CAP`` (10,000) per
        kind of job, and what ended over the last hour, by the store's clock: at
        a cost that does not grow with the jobs queued or kept (see
        :class:`Overview`)."""

    @abc.abstractmethod
    async def tick(self, schedule: ScheduleStatus, job: Job) -> bool:
        """Perform ``job``, the run of the periodic job ``schedule`` for its
        tick ``schedule.last_tick``, unless the store has performed that
        tick, or a later one, already; keep ``schedule`` (its cron and next
        tick) for :meth:`schedules`. True if this call performed it.

        Atomic: of the runners that call it for one tick, however many and
        in whichever processes, one performs it. A schedule the store does
        not know yet is recorded, its tick not performed: its first run is
        its next tick.
        """

    @abc.abstractmethod
    async def schedules(self) -> list[ScheduleStatus]:
        """The schedules the store knows, as the last :meth:`tick` left them."""

    @abc.abstractmethod
    def changes(self) -> AsyncIterator[None]:
        """Yield whenever jobs may have changed: performed, started,
        progressed or ended, here or in any process the store hears of
        (see :meth:`watch`); once for however many changes came while the
        consumer was busy. It follows from this call, not from its first
        iteration. Which jobs, it does not say: for an overview that is read
        again when something moved, rather than every few seconds.
        :class:`~asyncjob.stores.kit.Watchers` has one."""

    @abc.abstractmethod
    def watch(self, job_id: str) -> AsyncIterator[JobStatus]:
        """Yield the job's status now, then again on every change, and stop
        after yielding a final state.

        Changes are pushed, not polled, where the store can. A consumer that
        falls far behind may miss intermediate progress, never the final
        status.

        Raises:
            JobNotFound: the store does not know the job.
        """


class ImmediateStore(Store):
    """A store whose answers never wait: no I/O, nothing to await (the
    memory store).

    It gives the calls of a job's hot path synchronously as well, and the
    runner calls those (``*_nowait``, after ``asyncio.Queue.put_nowait``):
    each would otherwise cost a coroutine that never suspends, and a job
    makes four of them (recorded, started, ended, its outcome read). Its
    coroutine methods of the same name are these, for every other caller;
    a subclass overrides the ``*_nowait`` ones (overriding a coroutine one
    is refused when the class is made: the runner would not call it). A
    store that must await something in those calls derives from
    :class:`Store` instead.
    """

    #: The coroutine methods whose work the ``*_nowait`` ones do.
    _NOWAIT = ("enqueue", "start", "finish", "outcome")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in ImmediateStore._NOWAIT:
            if getattr(cls, name) is not getattr(ImmediateStore, name):
                raise TypeError(
                    f"{cls.__name__} overrides {name}() of an ImmediateStore, which the "
                    f"runner does not call: override {name}_nowait() (it must not "
                    "wait for anything), or derive from Store"
                )

    @abc.abstractmethod
    def enqueue_nowait(self, job: Job) -> str:
        """:meth:`Store.enqueue`, synchronously."""

    @abc.abstractmethod
    def start_nowait(self, job_id: str) -> bool:
        """:meth:`Store.start`, synchronously."""

    @abc.abstractmethod
    def finish_nowait(
        self,
        job_id: str,
        state: JobState,
        *,
        result: Any = None,
        error: str | None = None,
        traceback: str | None = None,
    ) -> bool:
        """:meth:`Store.finish`, synchronously."""

    @abc.abstractmethod
    def outcome_nowait(self, job_id: str) -> Outcome | None:
        """:meth:`Store.outcome`, synchronously."""

    def queued_nowait(self, job_id: str) -> bool:
        """True while the job waits to start: what the engine asks before
        it lines a queued sync job up for its threads, which start it
        later (a job cancelled meanwhile is not). A store may answer it
        faster than through :meth:`outcome_nowait`, as the memory store does."""
        outcome = self.outcome_nowait(job_id)
        return outcome is not None and outcome.state is JobState.queued

    @abc.abstractmethod
    def ending(self, job_id: str) -> asyncio.Future[Outcome] | None:
        """A future of the job's outcome, set when the job ends (set already
        if it has); ``None`` for an unknown id. What :meth:`Runner.wait`
        awaits: :meth:`Store.watch` would build a status at every change of
        the job, for a caller that needs only its end. A future cancelled
        by its caller (a timeout) is dropped by the store."""

    async def enqueue(self, job: Job) -> str:
        return self.enqueue_nowait(job)

    async def start(self, job_id: str) -> bool:
        return self.start_nowait(job_id)

    async def finish(
        self,
        job_id: str,
        state: JobState,
        *,
        result: Any = None,
        error: str | None = None,
        traceback: str | None = None,
    ) -> bool:
        return self.finish_nowait(job_id, state, result=result, error=error, traceback=traceback)

    async def outcome(self, job_id: str) -> Outcome | None:
        return self.outcome_nowait(job_id)


class DurableStore(Store):
    """A store that several processes share: workers claim its registered jobs.

    A job performed with :func:`asyncjob.job`'s registration waits in the
    store until a worker :meth:`claim` s it; the worker holds it under a
    lease that the store renews (:meth:`renew`) while the job runs, and
    hands it back (:meth:`release`) if it stops first. When a worker dies,
    its leases run out and any other worker puts its jobs back in the queue
    (:meth:`recover`): every job runs at least once.

    A job that is not registered (a closure, a lambda) is run by the runner
    that performed it, as with any store, and held by it in the same way:
    when that process dies, the job ends ``failed`` ("worker lost"), since
    no other process could run it.
    """

    @property
    @abc.abstractmethod
    def lease(self) -> float:
        """Seconds a job stays held without renewal: a dead worker's jobs
        run again elsewhere this long after it last renewed."""

    @property
    @abc.abstractmethod
    def poll_interval(self) -> float:
        """Seconds between two looks for queued jobs that the store did not
        announce (performed by another process, where the store has no way
        to be told; or while the way it is told is down)."""

    @abc.abstractmethod
    async def open(
        self,
        on_queued: Callable[[], None] | None = None,
        on_cancel: Callable[[], None] | None = None,
    ) -> None:
        """Prepare the store, as :meth:`Store.open`.

        Args:
            on_queued: a worker's wake-up: the store calls it, on the loop,
                whenever a registered job may be waiting to be claimed
                (performed by another process, handed back, come due). It
                may call it when nothing waits; the worker then claims
                nothing. ``None`` for a runner that does not claim (a
                producer only): the store then need not listen for jobs.
            on_cancel: the store calls it, on the loop, when it learns that
                a job it holds had its cancel requested by another process,
                sooner than its next renewal would tell: the runner then
                calls :meth:`renew` at once. A store that cannot be told
                may never call it (renewals tell all the same).
        """

    def finish_soon(
        self,
        job_id: str,
        state: JobState,
        then: Callable[[], None],
        *,
        result: Any = None,
        error: str | None = None,
        traceback: str | None = None,
    ) -> None:
        """:meth:`finish`, with nobody waiting: call ``then()`` (on the
        loop) once the end is written, or could not be (say so in the log:
        the job then runs again once its lease runs out).

        The worker that ran the job goes on to its next one meanwhile; the
        runner counts the job done at ``then()``, and waits for the ends
        still pending before it closes the store. This default runs
        :meth:`finish` in a task of its own; a store that writes ends in
        batches does better (the SQL store hands them to its group commit:
        no future and no task per job).
        """

        async def finish() -> None:
            try:
                await self.finish(job_id, state, result=result, error=error, traceback=traceback)
            except Exception:  # noqa: BLE001 - the lease runs out, the job runs again
                logger.exception(
                    "could not record how job %s ended; it runs again once its lease runs out",
                    job_id,
                )
            finally:
                then()

        task = asyncio.get_running_loop().create_task(finish())
        _finishing.add(task)  # a task the loop holds only weakly
        task.add_done_callback(_finishing.discard)

    @abc.abstractmethod
    async def claim(
        self,
        limit: int,
        queues: frozenset[str] | None = None,
        limits: Mapping[str, int] | None = None,
    ) -> list[Claimed]:
        """Take up to ``limit`` queued registered jobs that are due, of the
        ``queues`` given (``None``: of every queue), higher priority first
        and, within a priority, in the order they came due; mark them
        ``running``, held by this store object under a lease.

        ``limits`` maps job names to the most of their jobs that may run at
        once across every worker of the store: a claim counts the running
        ones and takes no more than the rest, atomically with respect to
        other claims (two workers claiming at once never exceed a limit
        together). Jobs of a name at its limit stay queued, and the claim
        takes the jobs behind them instead.

        Two workers never claim the same job. Each claimed job counts an
        attempt and is renewed until it is finished, retried or released.
        A job whose stored arguments cannot be read is claimed all the
        same, with :attr:`Claimed.problem` saying why: the worker then
        records it as failed.
        """

    @abc.abstractmethod
    async def next_due(
        self, queues: frozenset[str] | None = None, limits: Mapping[str, int] | None = None
    ) -> float | None:
        """Seconds until the earliest queued registered job of ``queues``
        comes due (0 if one is due now), by the store's clock; ``None`` if
        none is queued. A worker whose claim came back short sleeps this
        long, and :meth:`open`'s ``on_queued`` wakes it sooner for a job due
        earlier.

        The jobs due now whose names are in ``limits`` are left out: that
        claim left them, their names at their limits, and a slot freed
        (announced as a job queued is) wakes the worker for them.
        """

    @abc.abstractmethod
    async def release(self, job_ids: list[str]) -> None:
        """Put the jobs this store holds among ``job_ids`` back in the queue,
        for another worker: they were claimed but not finished here (the
        worker is stopping). The attempt they used does not count."""

    @abc.abstractmethod
    async def renew(self) -> list[str]:
        """The held jobs that their runner must stop, found since the last call.

        The store keeps the leases of the jobs it holds (the ones it claimed,
        and the others it was given to run) from running out, on its own:
        from a thread of its own, say, so that a blocked event loop does not
        lose them. Returns the ids of the jobs whose cancel was requested
        (they stay held until they finish) and of those it no longer holds
        (their lease ran out and another worker took them): the runner stops
        their code.
        """

    @abc.abstractmethod
    async def recover(self) -> int:
        """Deal with the jobs whose lease ran out (their holder died), and
        return how many.

        A registered job goes back to the queue, for any worker (or ends
        ``cancelled``, if its cancel was requested); any other job ends
        ``failed``, its worker lost, since only its own process could run it.
        """

    @abc.abstractmethod
    async def forget_finished(self) -> int:
        """Delete some of the jobs that finished long enough ago, without
        holding locks for long; return how many. Workers call it again and
        again."""

    # -- what operators do ------------------------------------------------------

    @abc.abstractmethod
    async def requeue(self, job_id: str) -> bool:
        """Run again a registered job that failed or was cancelled: queued,
        due now, for its next attempt. The error it ended with joins its
        ``errors``; its result, error, traceback, progress and times are
        cleared. Returns True if it was queued again; False for an unknown
        id, a job that is not registered (only the process that performed
        it could run it) or one that has not failed or been cancelled.

        Raises:
            ValueError: the job's unique key is held by another job now
                (queued, waiting or running); the job stays as it was.
        """

    @abc.abstractmethod
    async def delete(self, job_ids: list[str]) -> int:
        """Delete those of ``job_ids`` that have ended; return how many. A job
        queued or running is never deleted: cancel it first."""

    @abc.abstractmethod
    async def purge(self, states: frozenset[JobState], older_than: float) -> int:
        """Delete the jobs in ``states`` (final states) that ended more than
        ``older_than`` seconds ago by the store's clock, a batch at a time;
        return how many."""

    @abc.abstractmethod
    async def heartbeat(
        self, *, queues: frozenset[str] | None, concurrency: int, running: int
    ) -> None:
        """Record that the worker of this store is alive: the queues it
        takes (``None``: every queue), its concurrency, the jobs it runs.
        Called by a runner that runs jobs, every third of a lease."""

    @abc.abstractmethod
    async def leave(self) -> None:
        """The worker of this store stops: forget its heartbeats."""

    @abc.abstractmethod
    async def workers(self) -> list[WorkerStatus]:
        """The workers that sent a heartbeat within the last day, by id:
        those seen within a lease are ``alive``."""


class TransactionalStore(abc.ABC):
    """A store that can write in the application's own transaction.

    The runner uses it when the application's sessions (``Runner(
    sessionmaker=...)``) are on the store's database: a registered job is
    performed in the application's transaction (:meth:`enqueue_in`), and a
    job's success is recorded in the transaction that holds the job's own
    writes (:meth:`finish_in`), so that both are committed, or neither.
    """

    @abc.abstractmethod
    def shares_database_with(self, engine: Any) -> bool:
        """True when ``engine`` (an application's SQLAlchemy engine) is on
        this store's database."""

    @abc.abstractmethod
    async def enqueue_in(self, session: Any, job: Job) -> str:
        """Record ``job`` through the application's ``AsyncSession``, in its
        transaction, as :meth:`Store.enqueue` does: the job exists, and runs,
        only if that transaction commits. Returns its id, or, for a unique
        key taken, the id of the job that holds it.

        Raises:
            TypeError: the job is not registered (only registered jobs can
                be, since any worker may run them), or its arguments cannot
                be stored.
        """

    @abc.abstractmethod
    async def finish_in(self, session: Any, job_id: str, result: Any) -> None:
        """Record the job's success through ``session`` (an
        ``AsyncSession``), in the transaction that holds the job's writes.

        Raises:
            TypeError: the result cannot be stored (the job then fails, its
                writes rolled back).
            JobLost: the job is no longer this store's to finish (its cancel
                was requested, or another worker took it over): its writes
                must be rolled back.
        """

    @abc.abstractmethod
    def finish_in_sync(self, session: Any, job_id: str, result: Any) -> None:
        """:meth:`finish_in` for a sync job's ``Session``, called from the
        job's thread."""
