"""The engine's queue: the jobs waiting for a worker of this process."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from heapq import heappop, heappush

from asyncjob._core.models import Job

__all__ = ("JobQueue",)


class JobQueue:
    """Jobs in the order they start: higher priority first, first in, first
    out within a priority; then, once no job is left, the workers' ends.

    One deque per priority, and a heap of the priorities that have jobs: a
    runner's jobs mostly share one priority, so putting and taking a job
    cost a deque's append and pop, not a heap's sifting of a tuple made for
    each job (what ``asyncio.PriorityQueue`` needs, at 1.4 us a job).

    A job taken and then given back (:meth:`put_back`: a job over its
    concurrency limit, which waited for one of its kind to end) goes ahead
    of the jobs of its priority still queued, which were all queued after
    it; jobs given back keep the order in which they were taken.

    Putting a job wakes no taker: the engine wakes them (:meth:`wake_one`),
    in waves, and a worker that ends a job takes the next without waiting
    (see ``Engine._take_in``).

    Only the loop's tasks use it: no lock.
    """

    __slots__ = (
        "_back",
        "_getters",
        "_levels",
        "_priorities",
        "_size",
        "_stops",
        "_taken",
        "coming",
    )

    def __init__(self) -> None:
        # Negated priorities, so that the heap's least is the highest.
        self._levels: dict[int, deque[Job]] = {}
        self._priorities: list[int] = []
        # Jobs given back: (-priority, when taken, job).
        self._back: list[tuple[int, int, Job]] = []
        self._taken = 0
        self._size = 0
        self._stops = 0
        self._getters: deque[asyncio.Future[None]] = deque()
        #: Takers woken and not back yet: each takes a job when it comes.
        #: Read it, never set it (an attribute, not a property: the engine
        #: reads it at every perform).
        self.coming = 0

    def __len__(self) -> int:
        """How many jobs are queued (the workers' ends not counted)."""
        return self._size

    def empty(self) -> bool:
        """True when a taker would wait: no job, and no worker's end."""
        return not self._size and not self._stops

    def put(self, job: Job) -> None:
        """Queue ``job`` after those of its priority."""
        key = -job.options.priority if job.options is not None else 0
        level = self._levels.get(key)
        if level is None:
            level = self._levels[key] = deque()
            heappush(self._priorities, key)
        level.append(job)
        self._size += 1

    def put_back(self, job: Job, taken: int) -> None:
        """Queue again a job that was taken (``taken`` is what
        :meth:`taken` said then), ahead of its priority's queued jobs."""
        key = -job.options.priority if job.options is not None else 0
        heappush(self._back, (key, taken, job))
        self._size += 1

    def taken(self) -> int:
        """A number that orders the jobs given back by when they were taken."""
        self._taken += 1
        return self._taken

    def stop_one(self) -> None:
        """Let one taker end (:meth:`get` returns ``None``), once no job is left."""
        self._stops += 1
        self.wake_one()

    @property
    def waiting(self) -> int:
        """Takers waiting, not woken."""
        return len(self._getters)

    def peek(self) -> Job | None:
        """The job :meth:`get_nowait` would return now, if no taker that
        was woken for it is still on its way; else ``None``."""
        if self._size <= self.coming:
            return None
        back, priorities = self._back, self._priorities
        if back and (not priorities or back[0][0] <= priorities[0]):
            return back[0][2]
        return self._levels[priorities[0]][0]

    def get_nowait(self) -> Job | None:
        """The next job, or ``None`` for a taker to end.

        Raises:
            asyncio.QueueEmpty: there is neither.
        """
        back, priorities = self._back, self._priorities
        if back and (not priorities or back[0][0] <= priorities[0]):
            self._size -= 1
            return heappop(back)[2]
        if priorities:
            key = priorities[0]
            level = self._levels[key]
            job = level.popleft()
            if not level:
                del self._levels[key]
                heappop(priorities)
            self._size -= 1
            return job
        if self._stops:
            self._stops -= 1
            return None
        raise asyncio.QueueEmpty

    async def get(self) -> Job | None:
        """The next job, or ``None`` for a taker to end, waiting for one."""
        while self.empty():
            getter = asyncio.get_running_loop().create_future()
            self._getters.append(getter)
            try:
                await getter
                self.coming -= 1
            except BaseException:
                if getter.done() and not getter.cancelled():
                    self.coming -= 1
                getter.cancel()
                with contextlib.suppress(ValueError):
                    self._getters.remove(getter)
                if not self.empty():
                    self.wake_one()  # what woke this taker goes to another
                raise
        return self.get_nowait()

    def take_all(self) -> list[Job]:
        """Empty the queue of its jobs (its workers' ends stay), in order."""
        jobs = []
        while self._size:
            job = self.get_nowait()
            assert job is not None
            jobs.append(job)
        return jobs

    def wake_one(self) -> bool:
        """Wake a waiting taker; False if none waits."""
        while self._getters:
            getter = self._getters.popleft()
            if not getter.done():
                getter.set_result(None)
                self.coming += 1
                return True
        return False
