"""The scheduler: performs periodic jobs (``@asyncjob.periodic``) on their
cron schedules, in every runner that runs jobs, whatever its store.

Every runner that runs jobs keeps the same schedules, so several may reach
a tick together: which one performs it is the store's decision
(:meth:`Store.tick`, a row per schedule locked in one transaction on SQL
stores), never a leader's, which can go stale. Each runner sleeps until the
earliest next tick of its schedules; nothing is polled in between.

A tick is named by its time, the same in every process: its job's id is
derived from the schedule's name and that time (:func:`tick_job_id`), so
that a tick is one job, also for a reader of the store.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable, Sequence

from asyncjob._core import defaults
from asyncjob._core.log import logger
from asyncjob._core.models import Job, ScheduleStatus, timestamp_to_datetime
from asyncjob._core.registry import Schedule
from asyncjob.stores import Store

from .producer import unless_cancelled

__all__ = ("Scheduler", "tick_job_id")


def tick_job_id(name: str, tick: float) -> str:
    """The id of the job that performs the tick ``tick`` (seconds since the
    epoch) of the periodic job ``name``: 32 hexadecimal digits, as
    :func:`asyncjob.new_job_id`'s are."""
    return hashlib.blake2b(f"{name}\0{tick:.0f}".encode(), digest_size=16).hexdigest()


class Scheduler:
    """Performs each of ``schedules`` at its ticks until cancelled.

    Args:
        store: decides, tick by tick, which runner performs it.
        schedules: the periodic jobs this runner keeps.
        new_job: makes the job that performs a schedule, given its id.
        performed: told of each job that this runner's tick recorded, to
            hand it over as any performed job is.
    """

    def __init__(
        self,
        store: Store,
        schedules: Sequence[Schedule],
        new_job: Callable[[Schedule, str], Job],
        performed: Callable[[Job], Awaitable[None]],
    ) -> None:
        self._store = store
        self._schedules = schedules
        self._new_job = new_job
        self._performed = performed

    async def run(self) -> None:
        now = time.time()
        # First, each schedule is recorded if new, and a tick missed while
        # no runner ran is performed late, once.
        due = {schedule: await self._tick(schedule, now) for schedule in self._schedules}
        while due:
            earliest = min(due.values())
            # Woken by the clock alone: a schedule does not change while the
            # runner runs. Wall clock, as cron is; a wake-up a little early
            # (the loop's clock is another) sleeps again.
            await asyncio.sleep(max(0.0, earliest - time.time()))
            now = time.time()
            for schedule, at in due.items():
                if at <= now:
                    due[schedule] = await self._tick(schedule, now)

    async def _tick(self, schedule: Schedule, now: float) -> float:
        """Offer the store the last tick of ``schedule`` at ``now`` or
        before; return when to look again."""
        cron = schedule.cron
        tick, next_tick = cron.last_at_or_before(now), cron.next_after(now)
        status = ScheduleStatus(
            schedule.name,
            cron.expression,
            timestamp_to_datetime(tick),
            timestamp_to_datetime(next_tick),
        )
        try:
            job = self._new_job(schedule, tick_job_id(schedule.name, tick))
            if await self._store.tick(status, job):
                await self._performed(job)
        except Exception:  # noqa: BLE001 - the database may come back; the tick stays due
            unless_cancelled()
            logger.exception("could not perform the tick %s of %s", status.last_tick, schedule.name)
            return now + defaults.RETRY_AFTER
        return next_tick
