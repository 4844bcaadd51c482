"""The one seam between the runner and where jobs are kept."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Callable
from typing import Any

from asyncjob._models import Claimed, Job, JobState, JobStatus, Outcome

__all__ = ("Store",)


class Store(abc.ABC):
    """Where jobs, their states, progress and results are kept.

    A runner calls its store from the runner's event loop, except
    :meth:`report_progress`, which may come from any thread. Every state
    change goes through the store, so whatever reads the store (this process
    or, for a shared store, another) sees the same story:
    ``enqueue`` → ``start`` → ``finish``, or ``cancel`` at any point before
    the end. Each transition is atomic and happens at most once: a job that
    is already final is never changed again.

    Subclasses implement the abstract methods; :meth:`open` and
    :meth:`close` are optional hooks.

    A *durable* store (``durable = True``) is shared by several processes:
    registered jobs wait in it until a worker :meth:`claim` s them, and a
    worker holds what it claimed by a lease that :meth:`renew` extends.
    """

    #: True for a store that several workers share (see :meth:`claim`).
    durable: bool = False

    #: Durable stores call it, on the loop, when a registered job may be
    #: waiting to be claimed (performed by another process, say). A runner
    #: that claims sets it before :meth:`open`, to look for jobs at once
    #: rather than at its next poll; a store may listen for new jobs only
    #: when it is set.
    on_queued: Callable[[], None] | None = None

    async def open(self) -> None:  # noqa: B027 - an optional hook
        """Prepare the store. Called once by :meth:`Runner.start`, on the loop
        that will use the store, before any other method."""

    async def close(self) -> None:  # noqa: B027 - an optional hook
        """Release what :meth:`open` took. Called once by :meth:`Runner.stop`
        after the last job has ended; no method is called after it."""

    @abc.abstractmethod
    async def enqueue(self, job: Job) -> None:
        """Record ``job`` as ``queued``, with no progress yet.

        When it returns the job is visible to :meth:`get`. Must not keep a
        reference to ``job.func``, ``job.args`` or ``job.kwargs`` beyond what
        it needs to store them (the runner holds them for running).
        """

    async def enqueue_many(self, jobs: list[Job]) -> None:
        """Record each of ``jobs`` as :meth:`enqueue` does, in one go.

        A store that can writes them all or none, and checks every job
        before it writes any: with a ``TypeError`` that says which job (by
        its place in ``jobs``, from 0) it cannot hold. The default enqueues
        them one after the other.
        """
        for job in jobs:
            await self.enqueue(job)

    async def enqueue_in(self, session: Any, job: Job) -> None:
        """Record ``job`` through the application's SQLAlchemy ``AsyncSession``,
        in its transaction: the job exists only if that transaction commits.

        Only SQL stores on the session's database can; the default refuses.

        Raises:
            TypeError: this store cannot, or the job is not registered.
        """
        raise TypeError(
            f"{type(self).__name__} cannot write a job in your transaction: "
            "perform_in() needs an SQL store on the session's database"
        )

    @abc.abstractmethod
    async def start(self, job_id: str) -> bool:
        """Move a ``queued`` job to ``running`` and stamp ``started_at``.

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
        state is. Raises ``TypeError`` for data the store cannot hold,
        before recording anything.
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
        """Move a ``running`` job to the final ``state`` and stamp ``finished_at``.

        ``result`` goes with ``succeeded``; ``error`` and ``traceback`` with
        ``failed``. Progress is kept. Returns ``False``, changing nothing,
        when the job was already final (cancelled while it ran): the
        runner then discards the outcome.
        """

    @abc.abstractmethod
    async def retry(self, job_id: str, *, error: str, delay: float) -> bool:
        """Move a failed attempt of a ``running`` job back to ``queued``, to
        start again in ``delay`` seconds, keeping ``error`` in its errors.

        Returns ``False``, changing nothing, when the job was no longer
        running here (cancelled meanwhile). A durable store hands the job to
        whichever worker claims it after the delay; otherwise the runner
        that called it runs it again.
        """

    @abc.abstractmethod
    async def cancel(self, job_id: str) -> JobState | None:
        """Move a ``queued`` or ``running`` job to ``cancelled`` at once.

        Returns the state the job was in before the call (a final state
        means nothing changed), or ``None`` for an unknown id. Stopping the
        running code is the runner's part, not the store's.
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

    async def claim(self, limit: int) -> list[Claimed]:
        """Durable stores: take up to ``limit`` queued registered jobs, oldest
        first, and mark them ``running``, held by this store object.

        Two workers never claim the same job. Each claimed job counts an
        attempt. The default, for stores that are not durable, claims nothing.
        """
        return []

    async def release(self, job_ids: list[str]) -> None:  # noqa: B027 - optional
        """Durable stores: put jobs this store holds back in the queue, for
        another worker (they were claimed but not finished here)."""

    async def renew(self) -> list[str]:
        """Durable stores: extend the lease of every job this store holds.

        Returns the ids of the jobs it no longer holds (cancelled, or taken
        back after the lease ran out), which the runner must stop.
        """
        return []

    async def recover(self) -> int:
        """Durable stores: put back in the queue the jobs whose holder's
        lease ran out (its worker died). Returns how many."""
        return 0

    async def forget_finished(self) -> int:
        """Durable stores: delete some of the jobs that finished long enough
        ago, in a short statement; called again and again by the workers.
        Returns how many."""
        return 0

    @abc.abstractmethod
    def watch(self, job_id: str) -> AsyncIterator[JobStatus]:
        """Yield the job's status now, then again on every change, and stop
        after yielding a final state.

        Changes are pushed, not polled, where the store can. A consumer that
        falls far behind may miss intermediate progress, never the final
        status. Raises :class:`asyncjob.JobNotFound` for an unknown id.
        """
