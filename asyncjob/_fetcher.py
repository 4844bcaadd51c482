"""A worker's side of a durable store: claiming registered jobs, keeping leases."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ._callables import describe
from ._execution import logger
from ._models import Claimed, Job, JobState
from ._registry import lookup
from ._workers import WorkerPool
from .stores import Store

__all__ = ("Fetcher",)

#: Claimed in one statement at most: enough to keep workers busy, few
#: enough that a stopping worker has little to hand back.
CLAIM_BATCH = 100

#: After an error (the database went away), wait this long before trying
#: again, so that a worker rides out a restart instead of spinning.
RETRY_AFTER = 1.0


class Fetcher:
    """Claims registered jobs as workers come free, and keeps their leases.

    Wakes when a job is performed here or a worker comes free, and at
    least every ``poll_interval`` seconds for jobs performed elsewhere.
    Renews the leases of the jobs it holds every third of a lease, stops the
    ones it lost, and puts back in the queue the jobs of dead workers.
    A worker runs only jobs registered in it: any other claimed job fails,
    saying so, and is never imported or called.
    """

    def __init__(
        self,
        store: Store,
        pool: WorkerPool,
        *,
        claims: bool,
        poll_interval: float,
        lease: float,
        on_lost: Callable[[str], None],
    ) -> None:
        self._store = store
        self._pool = pool
        self._claims = claims
        self._poll_interval = poll_interval
        self._lease = lease
        self._on_lost = on_lost
        self._wakeup = asyncio.Event()
        if claims:
            store.on_queued = self.wake

    def wake(self) -> None:
        """Look for jobs now."""
        self._wakeup.set()

    async def run(self) -> None:
        """Keep leases, and claim jobs if it ``claims`` (a producer-only
        runner does not, but still holds the jobs it runs itself), until
        cancelled."""
        async with asyncio.TaskGroup() as tasks:
            if self._claims:
                tasks.create_task(self._claim_forever())
            tasks.create_task(self._keep_leases_forever())

    async def _claim_forever(self) -> None:
        while True:
            try:
                full = await self._claim_once()
            except Exception:  # noqa: BLE001 - the database may come back
                logger.exception("could not claim jobs; trying again in %.0f s", RETRY_AFTER)
                await asyncio.sleep(RETRY_AFTER)
                continue
            if full:
                continue  # there may be more waiting
            try:
                async with asyncio.timeout(self._poll_interval):
                    await self._wakeup.wait()
            except TimeoutError:
                pass
            self._wakeup.clear()

    async def _claim_once(self) -> bool:
        """Claim what the free workers can take; True if that filled them."""
        free = min(self._pool.free, CLAIM_BATCH)
        if free <= 0:
            return False
        claimed = await self._store.claim(free)
        for job in claimed:
            try:
                await self._admit(job)
            except Exception:  # noqa: BLE001 - one job's trouble must not strand the others
                logger.exception(
                    "could not record that job %s cannot run; it runs again once its "
                    "lease runs out",
                    job.id,
                )
        return len(claimed) == free

    async def _admit(self, claimed: Claimed) -> None:
        definition = lookup(claimed.name)
        problem = claimed.problem
        if problem is None and definition is None:
            problem = (
                f"the job {claimed.name!r} is not registered in this worker: it runs only "
                "functions registered with @asyncjob.job in the modules it imports, "
                "and never imports or calls anything else"
            )
        if problem is not None or definition is None:
            logger.error("job %s (%s) cannot run: %s", claimed.id, claimed.name, problem)
            await self._store.finish(claimed.id, JobState.failed, error=problem)
            return
        _, is_async = describe(definition.func)
        self._pool.submit(
            Job(
                claimed.id,
                claimed.name,
                definition.func,
                claimed.args,
                claimed.kwargs,
                is_async,
                claimed.enqueued_at,
                registered=True,
                claimed=True,
                attempt=claimed.attempts,
            )
        )

    async def _keep_leases_forever(self) -> None:
        while True:
            # A schedule, not a wait for something: every third of a lease.
            await asyncio.sleep(self._lease / 3)
            try:
                for job_id in await self._store.renew():
                    logger.warning("job %s is no longer held here: stopping it", job_id)
                    self._on_lost(job_id)
                if await self._store.recover():
                    self.wake()
                await self._store.forget_finished()
            except Exception:  # noqa: BLE001 - the database may come back
                logger.exception("could not renew leases; trying again")
