"""The floor: the least in-process runner that keeps asyncjob's promises.

A baseline for ``core.py``'s coroutine throughput, next to aiojobs and a raw
``asyncio.Queue``. Where the raw queue keeps nothing, this keeps what any
job runner that answers "where is my job?" must keep, and nothing else:

- an id per job (asyncjob's own ``new_job_id``);
- a record per job, readable by id while it waits, runs and after it ended
  (its state, its result, when it was performed, started and ended);
- jobs started in the order performed, at most ``concurrency`` at once, by
  long-lived worker tasks (no task per job);
- the running job's id in a context variable, as ``set_progress`` needs;
- waiting for a job by id, with its result or its error;
- finished records forgotten beyond a bound, so memory stays bounded.

It leaves out what asyncjob adds: registered jobs and their options
(priorities, queues, unique keys, limits, timeouts, retries), cancellation,
sync jobs, watchers and listings, hooks, sessions, tracing, ``join``, the
check that a job left no context variable behind, and the seam that lets
the same runner sit on a database. What asyncjob costs beyond this floor is
the price of those, and of their layering.

:class:`StoreFloor` is the same floor keeping its records in asyncjob's own
``MemoryStore``, through the four calls of the ``ImmediateStore`` seam that
a job's path makes (``enqueue_nowait``, ``start_nowait``, ``finish_nowait``,
``outcome_nowait``, and ``ending`` to wait): it splits what asyncjob costs
beyond the floor into the store's share (the record, watchers, unique keys,
the bound on finished jobs) and the engine's and runner's.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

from asyncjob import new_job_id
from asyncjob._core.models import Job, JobState
from asyncjob.stores import MemoryStore

__all__ = ("Floor", "StoreFloor")

QUEUED, RUNNING, SUCCEEDED, FAILED = range(4)

#: The running job's id, as asyncjob's context variable carries it.
current: ContextVar[str | None] = ContextVar("floor_current", default=None)


class _Record:
    __slots__ = (
        "args",
        "enqueued_at",
        "finished_at",
        "func",
        "id",
        "name",
        "result",
        "started_at",
        "state",
        "waiters",
    )

    def __init__(
        self, job_id: str, func: Callable[..., Awaitable[Any]], args: tuple[Any, ...], at: float
    ) -> None:
        self.id = job_id
        self.name = func.__qualname__
        self.func: Callable[..., Awaitable[Any]] | None = func
        self.args = args
        self.state = QUEUED
        self.result: Any = None
        self.enqueued_at = at
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.waiters: list[asyncio.Future[None]] | None = None


class _Workers:
    """What both floors share: a queue and up to ``concurrency`` worker
    tasks that take from it. The per-job code (queueing and waking, the
    worker's loop) stays in each floor: a call shared there would be a
    call a job added to the baseline. Not a ``Generic``: that made each of
    StoreFloor's jobs 1,400 instructions dearer (``bench/instructions.py``)."""

    def __init__(self, concurrency: int) -> None:
        self._queue: deque[Any] = deque()
        self._concurrency = concurrency
        self._idle: list[asyncio.Future[None]] = []
        self._workers: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)

    async def _pause(self) -> None:
        """A worker's pause between jobs: until one is queued, if none is;
        else one turn of the loop, for its other tasks (as asyncjob's
        workers give it every 32 jobs)."""
        if self._queue:
            await asyncio.sleep(0)
            return
        idle = asyncio.get_running_loop().create_future()
        self._idle.append(idle)
        await idle


class Floor(_Workers):
    """Coroutine jobs run by ``concurrency`` worker tasks, in the order
    performed, each job's record kept until ``max_finished`` newer ones ended."""

    _queue: deque[_Record]

    def __init__(self, concurrency: int, max_finished: int) -> None:
        super().__init__(concurrency)
        self._records: dict[str, _Record] = {}
        self._finished: deque[_Record] = deque()
        self._max_finished = max_finished

    async def perform(self, func: Callable[..., Awaitable[Any]], *args: Any) -> str:
        loop = asyncio.get_running_loop()
        rec = _Record(new_job_id(), func, args, time.time())
        self._records[rec.id] = rec
        self._queue.append(rec)
        if self._idle:
            self._idle.pop().set_result(None)
        elif len(self._workers) < self._concurrency:
            self._workers.add(loop.create_task(self._work()))
        return rec.id

    async def wait(self, job_id: str) -> Any:
        rec = self._records[job_id]
        if rec.state < SUCCEEDED:
            if rec.waiters is None:
                rec.waiters = []
            future = asyncio.get_running_loop().create_future()
            rec.waiters.append(future)
            await future
        if rec.state == FAILED:
            raise rec.result
        return rec.result

    async def _work(self) -> None:
        queue, in_a_row = self._queue, 0
        while True:
            in_a_row += 1
            if not queue or in_a_row == 32:
                await self._pause()
                in_a_row = 0
                continue
            rec = queue.popleft()
            assert rec.func is not None
            rec.state, rec.started_at = RUNNING, time.time()
            token = current.set(rec.id)
            try:
                rec.result, rec.state = await rec.func(*rec.args), SUCCEEDED
            except Exception as exc:  # noqa: BLE001 - the job's failure, kept for wait()
                rec.result, rec.state = exc, FAILED
            current.reset(token)
            rec.finished_at, rec.func, rec.args = time.time(), None, ()
            if rec.waiters is not None:
                for waiter in rec.waiters:
                    if not waiter.done():
                        waiter.set_result(None)
                rec.waiters = None
            self._finished.append(rec)
            if len(self._finished) > self._max_finished:
                del self._records[self._finished.popleft().id]


_NO_KWARGS: dict[str, Any] = {}


class StoreFloor(_Workers):
    """:class:`Floor`, its records kept by asyncjob's ``MemoryStore``."""

    _queue: deque[Job]

    def __init__(self, concurrency: int, max_finished: int) -> None:
        super().__init__(concurrency)
        self.store = MemoryStore(max_finished=max_finished)

    async def open(self) -> None:
        await self.store.open()

    async def perform(self, func: Callable[..., Awaitable[Any]], *args: Any) -> str:
        loop = asyncio.get_running_loop()
        job = Job(new_job_id(), func.__qualname__, func, args, _NO_KWARGS, True, time.time())
        self.store.enqueue_nowait(job)
        self._queue.append(job)
        if self._idle:
            self._idle.pop().set_result(None)
        elif len(self._workers) < self._concurrency:
            self._workers.add(loop.create_task(self._work()))
        return job.id

    async def wait(self, job_id: str) -> Any:
        outcome = self.store.outcome_nowait(job_id)
        assert outcome is not None
        if not outcome.state.is_final:
            ending = self.store.ending(job_id)
            assert ending is not None
            outcome = await ending
        if outcome.state is not JobState.succeeded:
            raise RuntimeError(outcome.error)
        return outcome.result

    async def _work(self) -> None:
        queue, store, in_a_row = self._queue, self.store, 0
        while True:
            in_a_row += 1
            if not queue or in_a_row == 32:
                await self._pause()
                in_a_row = 0
                continue
            job = queue.popleft()
            if not store.start_nowait(job.id):
                continue
            token = current.set(job.id)
            try:
                result, state, error = await job.func(*job.args), JobState.succeeded, None
            except Exception as exc:  # noqa: BLE001 - the job's failure, kept for wait()
                result, state, error = None, JobState.failed, str(exc)
            current.reset(token)
            store.finish_nowait(job.id, state, result=result, error=error)
