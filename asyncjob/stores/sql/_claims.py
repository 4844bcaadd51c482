"""Sharing registered jobs between workers: claimed jobs, leases, recovery.

A worker claims queued registered jobs in one atomic statement (see
``_writes``). A claimed job is held under a lease that its worker renews;
once a lease runs out (the worker died), any worker puts the job back in
the queue, and it runs again: at least once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, select, update

from asyncjob._models import Claimed, JobState
from asyncjob._serialization import loads

from ._engine import Database
from ._schema import Tables

__all__ = ("PURGE_BATCH", "WORKER_LOST", "claimed", "purge", "recover", "release", "renew")

_QUEUED = JobState.queued.value
_RUNNING = JobState.running.value


def claimed(row: Sequence[Any]) -> Claimed:
    """A claimed job's row (id, name, args, kwargs, enqueued_at, attempts),
    decoded; a row it cannot decode says why."""
    job_id, name, args_text, kwargs_text, enqueued_at, attempts = row
    try:
        # No arguments is the most common case: no decoder needed.
        args = [] if args_text == "[]" else loads(args_text)
        kwargs = {} if kwargs_text == "{}" else loads(kwargs_text)
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise ValueError("arguments must be a JSON array and an object")
    except ValueError as exc:
        problem = f"job {job_id} has stored arguments asyncjob cannot read: {exc}"
        return Claimed(job_id, name, (), {}, enqueued_at, attempts, problem)
    return Claimed(job_id, name, tuple(args), kwargs, enqueued_at, attempts)


async def release(db: Database, tables: Tables, owner: str, job_ids: list[str]) -> None:
    """Put back in the queue the jobs ``owner`` holds among ``job_ids``."""
    if not job_ids:
        return
    jobs = tables.jobs
    await db.execute(
        update(jobs)
        .where(jobs.c.id.in_(job_ids), jobs.c.locked_by == owner, jobs.c.state == _RUNNING)
        # Handed back, not failed: this attempt does not count.
        .values(
            state=_QUEUED,
            locked_by=None,
            lease_expires_at=None,
            started_at=None,
            attempts=jobs.c.attempts - 1,
        )
    )


async def renew(
    db: Database, tables: Tables, owner: str, held: list[str], lease: float
) -> list[str]:
    """Extend ``owner``'s leases; return the ids among ``held`` it lost."""
    if not held:
        return []
    jobs = tables.jobs
    renewed = await db.execute(
        update(jobs)
        .where(
            jobs.c.id.in_(held),
            jobs.c.locked_by == owner,
            jobs.c.state.in_((_QUEUED, _RUNNING)),
        )
        .values(lease_expires_at=db.now() + lease)
        .returning(jobs.c.id)
    )
    still = set(renewed.scalars())
    return [job_id for job_id in held if job_id not in still]


#: The error of a job that was not registered and whose process died.
WORKER_LOST = (
    "worker lost: the process that performed this job stopped renewing it (it died "
    "or lost the database); a job that is not registered with @asyncjob.job runs "
    "only in the process that performed it, so no other worker could take it over"
)


async def recover(db: Database, tables: Tables) -> int:
    """Deal with the jobs whose lease ran out. Returns how many.

    A registered job that was running goes back to the queue, for any
    worker. A job that is not registered, queued or running, could run only
    in its own process, which is gone: it ends as failed, "worker lost".
    """
    jobs = tables.jobs
    now = db.now()
    expired = jobs.c.lease_expires_at < now
    async with db.write() as conn:
        requeued = await conn.execute(
            update(jobs)
            .where(jobs.c.state == _RUNNING, jobs.c.registered.is_(True), expired)
            .values(state=_QUEUED, locked_by=None, lease_expires_at=None, run_after=now)
        )
        lost = await conn.execute(
            update(jobs)
            .where(jobs.c.state.in_((_QUEUED, _RUNNING)), jobs.c.registered.is_(False), expired)
            .values(
                state=JobState.failed.value,
                error=WORKER_LOST,
                finished_at=now,
                locked_by=None,
                lease_expires_at=None,
            )
        )
    return int(requeued.rowcount) + int(lost.rowcount)


#: Finished jobs deleted per statement: small, so that no lock is held long.
PURGE_BATCH = 500


async def purge(db: Database, tables: Tables, keep_finished: float) -> int:
    """Delete up to :data:`PURGE_BATCH` jobs that finished more than
    ``keep_finished`` seconds ago. Returns how many."""
    jobs = tables.jobs
    old = (
        select(jobs.c.id)
        .where(jobs.c.finished_at < db.now() - keep_finished)
        .limit(PURGE_BATCH)
        .scalar_subquery()
    )
    done = await db.execute(delete(jobs).where(jobs.c.id.in_(old)))
    return int(done.rowcount)
