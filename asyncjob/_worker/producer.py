"""The producer: claims registered jobs from a durable store as the engine's
slots come free, and hands them to the engine."""

from __future__ import annotations

import asyncio
import functools
import time

from asyncjob._core import defaults
from asyncjob._core.callables import describe
from asyncjob._core.log import logger
from asyncjob._core.models import Claimed, Job, JobState, made
from asyncjob._core.registry import limits, lookup
from asyncjob._core.spec import JobOptions
from asyncjob._engine.engine import Engine
from asyncjob._engine.hooks import JobInfo
from asyncjob.stores import DurableStore

from .prefetch import Prefetch, Prefetched

__all__ = ("CLAIM_BATCH", "STOP_TIMEOUT", "Producer", "unless_cancelled")

#: Claimed in one statement at most: enough to keep workers busy, few
#: enough that a stopping worker has little to hand back.
CLAIM_BATCH = 100

#: A worker stopping mid-claim waits this long (seconds) for the claim's
#: answer, to hand back what it took.
STOP_TIMEOUT = 5.0


def unless_cancelled() -> None:
    """Raise :class:`asyncio.CancelledError` if this task is being
    cancelled: after catching an error, in a loop that carries on after
    errors. A driver cancelled mid-statement may fail to clean up and raise
    that failure in place of the cancellation; the loop must stop all the
    same, or the runner's stop waits for it forever."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class Producer:
    """Claims what the free slots can take, and a few jobs ahead of them
    when jobs are short (see ``prefetch``).

    Wakes when ``wakeup`` is set (a job performed here, a slot come free,
    the store announcing a job), and at least every ``poll_interval``
    seconds of the store for jobs nobody announced. A worker runs only jobs
    registered in it: any other claimed job fails, saying so, and is never
    imported or called.
    """

    def __init__(
        self,
        store: DurableStore,
        engine: Engine,
        wakeup: asyncio.Event,
        queues: frozenset[str] | None = None,
    ) -> None:
        self._store = store
        self._queues = queues
        self._engine = engine
        self._wakeup = wakeup
        self._prefetch = Prefetch(engine.concurrency)
        self._prefetched = Prefetched()
        self._stopping = False

    def stop(self) -> None:
        """Claim no more: :meth:`run` returns once its claim under way, if
        any, has its answer. A claim cut off by a cancellation after the
        database took the jobs, but before the answer came, would leave them
        running, held by nobody, until their lease ran out; answered, they
        wait with the jobs claimed ahead, for the runner to hand back."""
        self._stopping = True
        self._wakeup.set()

    async def run(self) -> None:
        """Claim jobs until stopped (or cancelled)."""
        while not self._stopping:
            self._prefetched.hand_over(self._engine)
            try:
                await self._hand_back_stale()
                full = await self._claim_once()
            except Exception:  # noqa: BLE001 - the database may come back
                unless_cancelled()
                logger.exception(
                    "could not claim jobs; trying again in %.0f s", defaults.RETRY_AFTER
                )
                await asyncio.sleep(defaults.RETRY_AFTER)
                continue
            if full:
                continue  # there may be more waiting
            timeout = self._store.poll_interval
            for soonest in (self._prefetched.next_stale_in(), await self._next_due()):
                if soonest is not None:
                    timeout = min(timeout, soonest)
            try:
                async with asyncio.timeout(timeout):
                    await self._wakeup.wait()
            except TimeoutError:
                pass
            self._wakeup.clear()

    async def _next_due(self) -> float | None:
        """Seconds until a job comes due, when a slot is free to take it."""
        if self._engine.free <= len(self._prefetched):
            return None  # a slot coming free wakes this producer
        try:
            return await self._store.next_due(self._queues, limits())
        except Exception:  # noqa: BLE001 - the poll finds them all the same
            unless_cancelled()
            logger.exception("could not read when the next job is due")
            return None

    def take_prefetched(self) -> list[str]:
        """The ids of the jobs claimed ahead and not given to the engine
        yet: the runner hands them back when it stops."""
        return [job.id for job in self._prefetched.take_all()]

    def drop(self, job_id: str) -> Job | None:
        """Drop a job claimed ahead (its cancel was requested, say) before it
        starts, and return it, if it was waiting here."""
        return self._prefetched.discard(job_id)

    async def _claim_once(self) -> bool:
        """Claim what the free slots can take, and what they will be free to
        take by the time another claim would come back; True if that many
        were claimed."""
        wanted = self._engine.free - len(self._prefetched) + self._prefetch.size()
        wanted = min(wanted, CLAIM_BATCH)
        if wanted <= 0:
            return False
        sent = time.monotonic()
        claimed = await self._store.claim(wanted, self._queues, limits())
        self._prefetch.measure(time.monotonic() - sent, self._engine.done)
        running, ahead = self._engine.running_now, self._prefetched.ids()
        twice = [c.id for c in claimed if c.id in running or c.id in ahead]
        if twice:
            # It would run twice at once here: never. Handed back, it runs
            # again once this attempt has ended, if it must.
            logger.error("jobs claimed while they run here already, handed back: %s", twice)
            await self._store.release(twice)
        for found in claimed:
            if found.id in twice:
                continue
            job = _job_of(found)
            if isinstance(job, Job):
                self._prefetched.add(job)
                continue
            logger.error("job %s (%s) cannot run: %s", found.id, found.name, job)
            try:
                await self._engine.end(
                    JobInfo(found.id, found.name, found.queue, found.attempts),
                    JobState.failed,
                    error=job,
                )
            except Exception:  # noqa: BLE001 - one job's trouble must not strand the others
                logger.exception(
                    "could not record that job %s cannot run; it runs again once its "
                    "lease runs out",
                    found.id,
                )
        if not self._stopping:
            self._prefetched.hand_over(self._engine)
        return len(claimed) == wanted

    async def _hand_back_stale(self) -> None:
        """Hand back the jobs claimed ahead that waited too long for a slot."""
        stale = self._prefetched.stale()
        if not stale:
            return
        self._prefetch.handed_back()
        try:
            await self._store.release([job.id for job in stale])
        except BaseException:
            self._prefetched.put_back(stale)  # still held here: they wait on
            raise


@functools.lru_cache(maxsize=1024)
def _options(queue: str, priority: int) -> JobOptions:
    """A claimed job's options: one object for all the jobs of a queue and
    priority (they are immutable; a frozen dataclass costs its fields'
    ``object.__setattr__`` each time it is made)."""
    return JobOptions(queue, priority)


def _job_of(claimed: Claimed) -> Job | str:
    """The job to run; or why it cannot run here."""
    if claimed.problem is not None:
        return claimed.problem
    definition = lookup(claimed.name)
    if definition is None:
        return (
            f"the job {claimed.name!r} is not registered in this worker: it runs only "
            "functions registered with @asyncjob.job in the modules it imports, "
            "and never imports or calls anything else"
        )
    _, is_async = describe(definition.func)
    return made(Job, (claimed.id, claimed.name, definition.func, claimed.args, claimed.kwargs,
                      is_async, claimed.enqueued_at, True, True, claimed.attempts,
                      _options(claimed.queue, claimed.priority), claimed.trace))  # fmt: skip
