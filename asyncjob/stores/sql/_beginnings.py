"""How a job comes into an SQL store: performed (one, many at once, or in
the application's transaction), and, if it is not registered, started by
the process that performed it.

A base of :class:`SQLStore`, apart only to keep each module short.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import and_, event, or_, update

from asyncjob._models import Job, JobState
from asyncjob._serialization import dumps

from ._parts import StorePart

__all__ = ("JobBeginnings",)


class JobBeginnings(StorePart):
    """The ways a job comes in (see :class:`asyncjob.stores.sql.SQLStore`)."""

    async def enqueue(self, job: Job) -> None:
        await self._enqueues.submit(self._row(job))
        if not job.registered:
            self.held.add(job.id)

    async def enqueue_many(self, jobs: list[Job]) -> None:
        rows = []
        for place, job in enumerate(jobs):
            try:
                rows.append(self._row(job))
            except TypeError as exc:
                raise TypeError(f"job {place} of {len(jobs)}: {exc}") from None
        # One statement, not the group commit's batches: all of them, or none.
        await self._insert(rows)
        self.held.update(job.id for job in jobs if not job.registered)

    async def enqueue_in(self, session: Any, job: Job) -> None:
        if not job.registered:
            raise TypeError(
                f"{job.name} is not registered with @asyncjob.job: only registered "
                "jobs can be performed in your transaction, as any worker may run them"
            )
        row = self._row(job)
        await session.execute(
            self.tables.jobs.insert().values(
                **row, state=JobState.queued.value, attempts=0, run_after=self.db.now()
            )
        )
        on_queued = self.on_queued
        if on_queued is not None:  # wake this process's worker once it commits
            event.listen(session.sync_session, "after_commit", lambda _: on_queued(), once=True)

    def _row(self, job: Job) -> dict[str, Any]:
        """The job as :meth:`Writes.insert` takes it."""
        # No arguments is common: no encoder needed.
        args = dumps(list(job.args), f"the arguments of {job.name}") if job.args else "[]"
        kwargs = (
            dumps(dict(job.kwargs), f"the keyword arguments of {job.name}") if job.kwargs else "{}"
        )
        return {
            "id": job.id,
            "name": job.name,
            "registered": job.registered,
            # Not registered: only this process may run it (see _claims.recover).
            "owner": None if job.registered else self.owner,
            "args": args,
            "kwargs": kwargs,
            "enqueued_at": job.enqueued_at,
        }

    async def start(self, job_id: str) -> bool:  # a job not registered, run here
        jobs = self.tables.jobs
        now = time.time()
        # Found running with this very start time, it was this very start,
        # sent again after its answer was lost (see Database.execute).
        this_start = and_(jobs.c.state == JobState.running.value, jobs.c.started_at == now)
        try:
            done = await self.db.execute(
                update(jobs)
                .where(jobs.c.id == job_id, or_(jobs.c.state == JobState.queued.value, this_start))
                .values(
                    state=JobState.running.value,
                    started_at=now,
                    attempts=1,
                    locked_by=self.owner,
                )
            )
        except BaseException:
            # It will not run: no longer renewed, it ends as "worker lost".
            self.held.discard(job_id)
            raise
        started = bool(done.rowcount)
        if started:
            self._signals.notify(job_id)
        return started

    async def _insert(self, rows: list[dict[str, Any]]) -> list[None]:
        return await self.writes.insert(rows, self.lease)
