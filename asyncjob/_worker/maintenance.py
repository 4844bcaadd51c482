"""Maintenance: what a runner on a durable store does on a schedule, whether
it claims jobs or only performs them.

Every third of a lease: stop the held jobs that the store says to stop
(cancelled elsewhere, or taken over), put back in the queue the jobs of
workers that died, delete old finished jobs, batch after batch, for up to
half of the time to the next round, and, for a runner that runs the
store's jobs, record a heartbeat (what operators see of the workers). A cancel the store hears of
between two rounds is acted on at once. (Periodic jobs are the
scheduler's, ``scheduler.py``.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from asyncjob._core.log import logger
from asyncjob._core.models import JobState
from asyncjob._engine.engine import Engine
from asyncjob._engine.hooks import info
from asyncjob.stores import DurableStore

from .producer import Producer, unless_cancelled

__all__ = ("Maintenance",)


class Maintenance:
    """Runs the store's periodic work until cancelled.

    Args:
        store: the durable store.
        engine: runs this runner's jobs: the ones to stop are interrupted.
        producer: holds the jobs claimed ahead (``None`` for a runner that
            does not claim): the ones to stop are dropped before they start.
        on_recovered: called when jobs of dead workers went back to the
            queue, so that they are claimed at once.
        queues: the queues the runner takes, for its heartbeats.
    """

    def __init__(
        self,
        store: DurableStore,
        engine: Engine,
        producer: Producer | None,
        on_recovered: Callable[[], None],
        queues: frozenset[str] | None = None,
    ) -> None:
        self._store = store
        self._queues = queues
        self._engine = engine
        self._producer = producer
        self._on_recovered = on_recovered
        self._woken = asyncio.Event()

    def wake(self) -> None:
        """Stop what the store says to stop now, not at the next round (the
        store heard of a cancel)."""
        self._woken.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_round = loop.time() + self._store.lease / 3
        while True:
            # A schedule, not a wait for something: every third of a lease,
            # or sooner for a cancel the store heard of.
            try:
                async with asyncio.timeout_at(next_round):
                    await self._woken.wait()
            except TimeoutError:
                pass
            self._woken.clear()
            try:
                await self._stop_what_the_store_says()
                if loop.time() >= next_round:
                    next_round = loop.time() + self._store.lease / 3
                    await self.heartbeat()
                    if await self._store.recover():
                        self._on_recovered()
                    await self.retain(until=loop.time() + self._store.lease / 6)
            except Exception:  # noqa: BLE001 - the database may come back
                unless_cancelled()
                logger.exception("could not renew leases; trying again")

    async def retain(self, until: float | None = None) -> int:
        """Delete finished jobs past retention, a short statement at a time,
        until none is left or the loop's clock reaches ``until``: so that
        retention keeps pace with however many jobs end, without long locks.
        Returns how many were deleted."""
        loop = asyncio.get_running_loop()
        deleted = 0
        while until is None or loop.time() < until:
            done = await self._store.forget_finished()
            if not done:
                break
            deleted += done
            await asyncio.sleep(0)  # between two statements, the loop's other work
        return deleted

    async def heartbeat(self) -> None:
        """Tell the store this worker is alive, and what it does; a runner
        that only performs jobs (a web process) is no worker."""
        if self._producer is None:
            return
        try:
            await self._store.heartbeat(
                queues=self._queues,
                concurrency=self._engine.concurrency,
                running=self._engine.running,
            )
        except Exception:  # noqa: BLE001 - the next round tries again
            unless_cancelled()
            logger.exception("could not record this worker's heartbeat")

    async def leave(self) -> None:
        """This worker stops: the store forgets its heartbeats."""
        if self._producer is None:
            return
        try:
            await self._store.leave()
        except Exception:  # noqa: BLE001 - it ages out of the list all the same
            logger.exception("could not remove this worker from the store's workers")

    async def _stop_what_the_store_says(self) -> None:
        """Stop the jobs the store says are cancelled or lost here. The store
        tells of each once: one whose stop raises must not keep the others
        from theirs (a job lost here would run on beside its next attempt)."""
        for job_id in await self._store.renew():
            try:
                done = await self.stop(job_id)
            except Exception:  # noqa: BLE001 - see the docstring
                unless_cancelled()
                logger.exception("could not stop job %s, cancelled or no longer held here", job_id)
                continue
            if done is not None:
                logger.warning(
                    "job %s was cancelled or is no longer held here: %s it", job_id, done
                )

    async def stop(self, job_id: str) -> str | None:
        """Stop a job held here: ``"dropping"`` it if it was claimed ahead and
        has not started (it then ends cancelled at once), ``"stopping"`` it
        if it runs; ``None`` if it is in neither place."""
        dropped = None if self._producer is None else self._producer.drop(job_id)
        if dropped is not None:
            await self._engine.end(info(dropped), JobState.cancelled)
            return "dropping"
        if self._engine.interrupt(job_id):
            return "stopping"
        return None
