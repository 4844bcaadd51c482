"""Sharing registered jobs between workers: claims, leases, recovery.

A worker claims queued registered jobs in one atomic statement: on
PostgreSQL the candidate rows are locked with ``FOR UPDATE SKIP LOCKED``,
so that workers claiming at once take different jobs without waiting for
each other; SQLite runs one writer at a time, so the same statement is
atomic there as it is. A claimed job is held under a lease that its
worker renews; once a lease runs out (the worker died), any worker puts
the job back in the queue, and it runs again: at least once.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row, delete, select, update

from asyncjob._models import Claimed, JobState
from asyncjob._serialization import loads

from ._engine import Database
from ._schema import Tables

__all__ = ("PURGE_BATCH", "WORKER_LOST", "claim", "purge", "recover", "release", "renew")

_QUEUED = JobState.queued.value
_RUNNING = JobState.running.value


async def claim(
    db: Database, tables: Tables, owner: str, limit: int, lease: float
) -> list[Claimed]:
    """Take up to ``limit`` queued registered jobs, oldest first."""
    jobs = tables.jobs
    now = db.now()
    candidates = (
        select(jobs.c.id)
        .where(jobs.c.state == _QUEUED, jobs.c.registered.is_(True), jobs.c.run_after <= now)
        .order_by(jobs.c.enqueued_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    statement = (
        update(jobs)
        .where(jobs.c.id.in_(candidates.scalar_subquery()), jobs.c.state == _QUEUED)
        .values(
            state=_RUNNING,
            locked_by=owner,
            started_at=now,
            lease_expires_at=now + lease,
            attempts=jobs.c.attempts + 1,
        )
        .returning(
            jobs.c.id, jobs.c.name, jobs.c.args, jobs.c.kwargs, jobs.c.enqueued_at, jobs.c.attempts
        )
    )
    async with db.write(durable=False) as conn:  # lost in a crash, it stays queued
        rows = (await conn.execute(statement)).all()
    claimed = [_claimed(row) for row in rows]
    claimed.sort(key=lambda c: c.enqueued_at)  # RETURNING keeps no order
    return claimed


def _claimed(row: Row[Any]) -> Claimed:
    try:
        args, kwargs = loads(row.args), loads(row.kwargs)
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise ValueError("arguments must be a JSON array and an object")
    except ValueError as exc:
        problem = f"job {row.id} has stored arguments asyncjob cannot read: {exc}"
        return Claimed(row.id, row.name, (), {}, row.enqueued_at, row.attempts, problem)
    return Claimed(row.id, row.name, tuple(args), kwargs, row.enqueued_at, row.attempts)


async def release(db: Database, tables: Tables, owner: str, job_ids: list[str]) -> None:
    """Put back in the queue the jobs ``owner`` holds among ``job_ids``."""
    if not job_ids:
        return
    jobs = tables.jobs
    async with db.write() as conn:
        await conn.execute(
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
    async with db.write(durable=False) as conn:
        renewed = await conn.execute(
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
    async with db.write() as conn:
        done = await conn.execute(delete(jobs).where(jobs.c.id.in_(old)))
    return int(done.rowcount)
