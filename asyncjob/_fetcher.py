"""A worker's side of a durable store: claiming registered jobs, keeping leases."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from ._ahead import Ahead, Waiting
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
    Claims a few jobs ahead of the free workers when jobs are short (see
    ``_ahead``).
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
        self._ahead = Ahead(pool.concurrency)
        self._waiting = Waiting()
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

    def take_waiting(self) -> list[str]:
        """The ids of the jobs claimed ahead and not given to a worker yet:
        the runner hands them back when it stops."""
        return [job.id for job in self._waiting.take_all()]

    async def _claim_forever(self) -> None:
        while True:
            self._waiting.hand_over(self._pool)
            try:
                await self._hand_back_stale()
                full = await self._claim_once()
            except Exception:  # noqa: BLE001 - the database may come back
                logger.exception("could not claim jobs; trying again in %.0f s", RETRY_AFTER)
                await asyncio.sleep(RETRY_AFTER)
                continue
            if full:
                continue  # there may be more waiting
            timeout = self._poll_interval
            stale_in = self._waiting.next_stale_in()
            if stale_in is not None:
                timeout = min(timeout, stale_in)
            try:
                async with asyncio.timeout(timeout):
                    await self._wakeup.wait()
            except TimeoutError:
                pass
            self._wakeup.clear()

    async def _claim_once(self) -> bool:
        """Claim what the free workers can take, and what they will be free
        to take by the time another claim would come back (see ``_ahead``);
        True if that many were claimed."""
        wanted = self._pool.free - len(self._waiting) + self._ahead.jobs()
        wanted = min(wanted, CLAIM_BATCH)
        if wanted <= 0:
            return False
        sent = time.monotonic()
        claimed = await self._store.claim(wanted)
        self._ahead.measure(time.monotonic() - sent, self._pool.done)
        for found in claimed:
            job = self._job_of(found)
            if isinstance(job, Job):
                self._waiting.add(job)
                continue
            logger.error("job %s (%s) cannot run: %s", found.id, found.name, job)
            try:
                await self._store.finish(found.id, JobState.failed, error=job)
            except Exception:  # noqa: BLE001 - one job's trouble must not strand the others
                logger.exception(
                    "could not record that job %s cannot run; it runs again once its "
                    "lease runs out",
                    found.id,
                )
        self._waiting.hand_over(self._pool)
        return len(claimed) == wanted

    async def _hand_back_stale(self) -> None:
        """Hand back the jobs claimed ahead that waited too long for a slot."""
        stale = self._waiting.stale()
        if not stale:
            return
        self._ahead.handed_back()
        try:
            await self._store.release([job.id for job in stale])
        except BaseException:
            self._waiting.put_back(stale)  # still held here: they wait on
            raise

    def _job_of(self, claimed: Claimed) -> Job | str:
        """The job to run; or why it cannot run here."""
        definition = lookup(claimed.name)
        if claimed.problem is not None:
            return claimed.problem
        if definition is None:
            return (
                f"the job {claimed.name!r} is not registered in this worker: it runs only "
                "functions registered with @asyncjob.job in the modules it imports, "
                "and never imports or calls anything else"
            )
        _, is_async = describe(definition.func)
        return Job(
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

    async def _keep_leases_forever(self) -> None:
        while True:
            # A schedule, not a wait for something: every third of a lease.
            await asyncio.sleep(self._lease / 3)
            try:
                for job_id in await self._store.renew():
                    if self._waiting.discard(job_id):  # claimed ahead: it never starts
                        logger.warning("job %s is no longer held here: dropping it", job_id)
                        continue
                    logger.warning("job %s is no longer held here: stopping it", job_id)
                    self._on_lost(job_id)
                if await self._store.recover():
                    self.wake()
                await self._store.forget_finished()
            except Exception:  # noqa: BLE001 - the database may come back
                logger.exception("could not renew leases; trying again")
