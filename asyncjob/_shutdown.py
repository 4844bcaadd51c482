"""A runner's graceful stop, step by step."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from ._execution import Executor, logger
from ._workers import WorkerPool
from .stores import Store

__all__ = ("shut_down",)


async def shut_down(
    store: Store,
    pool: WorkerPool,
    executor: Executor,
    grace_period: float,
    cancel: Callable[[str], Awaitable[bool]],
    claimed_ahead: list[str],
) -> None:
    """Stop taking jobs, let running ones finish, then close the store.

    1. Jobs still queued here end: cancelled, or, for jobs claimed from a
       durable store (those ``claimed_ahead`` of the workers too), handed
       back to its queue for another worker.
    2. Running jobs get ``grace_period`` seconds to finish.
    3. Those still running are stopped: cancelled, or handed back (they
       will run again elsewhere: at least once).
    4. The thread pool is let go and the store closed.
    """
    queued = pool.take_queued()
    await store.release([*claimed_ahead, *(job.id for job in queued if job.claimed)])
    for job in queued:
        if not job.claimed:
            await cancel(job.id)
    late = await pool.close(grace_period)
    if late:
        await _stop_late(store, executor, grace_period, cancel, late)
    executor.close()
    await store.close()


async def _stop_late(
    store: Store,
    executor: Executor,
    grace_period: float,
    cancel: Callable[[str], Awaitable[bool]],
    late: set[asyncio.Task[None]],
) -> None:
    ids = executor.active_ids()
    claimed = executor.claimed_ids()
    logger.warning(
        "stopping %d job(s) still running after the %.1f s grace period: %s",
        len(ids),
        grace_period,
        ", ".join(ids),
    )
    handed_back = [job_id for job_id in ids if job_id in claimed]
    await store.release(handed_back)
    for job_id in ids:
        if job_id in claimed:
            executor.interrupt(job_id)
        else:
            await cancel(job_id)
    executor.abandon_sync_jobs()
    _, stuck = await asyncio.wait(late, timeout=max(1.0, grace_period))
    if stuck:
        logger.error("%d job(s) ignored cancellation; the runner stops without them", len(stuck))
