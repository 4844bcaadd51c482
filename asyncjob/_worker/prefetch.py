"""Prefetch: claiming ahead of the free slots, so that short jobs never wait
for a claim.

A worker whose jobs take a millisecond each would spend most of its time
waiting for the database if it claimed only when a slot came free: each
claim is a round trip. So it claims a little ahead: as many jobs as it
finishes in one round trip. They wait here, not in the engine's queue, until
a slot is free; one that waits longer than :data:`HAND_BACK_AFTER` (its
slots are held by long jobs, after all) is handed back to the store for
another worker, so that a job is never held by a busy worker while another
is idle.
"""

from __future__ import annotations

import time
from collections import deque

from asyncjob._core.models import Job
from asyncjob._engine.engine import Engine

__all__ = ("HAND_BACK_AFTER", "Prefetch", "Prefetched")

#: Seconds a job claimed ahead may wait for a slot before it is handed back.
HAND_BACK_AFTER = 1.0


class Prefetch:
    """How many jobs to claim ahead of the free slots: as many as the
    workers finish while one claim goes to the database and back.

    Long jobs finish slowly, so nothing is claimed ahead of them.
    """

    #: Weight of the newest measurement in the running averages.
    WEIGHT = 0.3

    def __init__(self, limit: int, *, rate: float = 0.0, round_trip: float = 0.0) -> None:
        self._limit = limit
        self._round_trip = round_trip  # seconds a claim takes
        self._rate = rate  # jobs finished per second
        self._at: float | None = None
        self._done = 0

    def size(self) -> int:
        """How many to claim ahead now."""
        return min(self._limit, int(self._rate * self._round_trip))

    def measure(self, round_trip: float, done: int, now: float | None = None) -> None:
        """After a claim that took ``round_trip`` seconds, with ``done``
        jobs finished in all so far (at ``now``, by the monotonic clock)."""
        now = time.monotonic() if now is None else now
        weight = self.WEIGHT
        self._round_trip += weight * (round_trip - self._round_trip)
        if self._at is not None and now > self._at:
            rate = (done - self._done) / (now - self._at)
            self._rate += weight * (rate - self._rate)
        self._at, self._done = now, done

    def handed_back(self) -> None:
        """Jobs claimed ahead waited too long: the jobs are not as short as
        they were, so claim nothing ahead until they are seen to be again."""
        self._rate = 0.0


class Prefetched:
    """The jobs claimed ahead, in the order claimed, until a slot is free."""

    def __init__(self) -> None:
        self._jobs: deque[tuple[float, Job]] = deque()

    def __len__(self) -> int:
        return len(self._jobs)

    def add(self, job: Job) -> None:
        self._jobs.append((time.monotonic(), job))

    def hand_over(self, engine: Engine) -> None:
        """Give the engine as many as it has free slots for."""
        while self._jobs and engine.free > 0:
            engine.submit(self._jobs.popleft()[1])

    def stale(self) -> list[Job]:
        """Take those that have waited :data:`HAND_BACK_AFTER` seconds."""
        limit = time.monotonic() - HAND_BACK_AFTER
        stale = []
        while self._jobs and self._jobs[0][0] <= limit:
            stale.append(self._jobs.popleft()[1])
        return stale

    def next_stale_in(self) -> float | None:
        """Seconds until the oldest has waited too long, if any waits."""
        if not self._jobs:
            return None
        return max(0.0, self._jobs[0][0] + HAND_BACK_AFTER - time.monotonic())

    def ids(self) -> set[str]:
        """The ids of the jobs waiting here."""
        return {job.id for _, job in self._jobs}

    def discard(self, job_id: str) -> Job | None:
        """Drop the job (cancelled, say) if it waits here, and return it."""
        for entry in self._jobs:
            if entry[1].id == job_id:
                self._jobs.remove(entry)
                return entry[1]
        return None

    def take_all(self) -> list[Job]:
        jobs = [job for _, job in self._jobs]
        self._jobs.clear()
        return jobs

    def put_back(self, jobs: list[Job]) -> None:
        """Keep waiting ``jobs`` (they could not be handed back), first."""
        now = time.monotonic()
        self._jobs.extendleft((now, job) for job in reversed(jobs))
