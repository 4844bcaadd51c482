"""The runner's queue, and the worker tasks that drain it."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable

from ._execution import Executor, logger
from ._models import Job

__all__ = ("WorkerPool",)

#: A worker that takes jobs from a full queue lets the loop run other tasks
#: at least this often (a few hundred microseconds of no-op jobs).
_YIELD_EVERY = 32


class WorkerPool:
    """A first-in, first-out queue of jobs and up to ``concurrency`` workers.

    Each worker is a task that takes the next job and runs it through the
    executor, so the number of workers is the concurrency limit: no
    semaphore, and no task created per job. Workers are started as jobs
    arrive and none is idle, up to the limit, and live until :meth:`close`.

    Each job starts from the context the pool was started in. A worker
    whose job set context variables retires after it and is replaced, so
    nothing a job sets leaks into the next one.
    """

    def __init__(self, executor: Executor, concurrency: int) -> None:
        self._executor = executor
        self._concurrency = concurrency
        self._queue: asyncio.Queue[Job | None] = asyncio.Queue()
        self._workers: set[asyncio.Task[None]] = set()
        self._idle = 0  # workers waiting for a job that no submit has claimed
        self._outstanding = 0  # jobs submitted and not yet done
        self._all_done = asyncio.Event()
        self._all_done.set()
        self._context = contextvars.Context()
        self._closing = False
        self._delayed: dict[str, tuple[asyncio.TimerHandle, Job]] = {}
        # Jobs whose code has ended, and whose outcome is being recorded.
        self._recording: set[str] = set()
        #: Called whenever a job's code has ended, so that more may be fetched.
        self.on_free: Callable[[], None] | None = None
        #: How many jobs have been done, in all.
        self.done = 0

    @property
    def free(self) -> int:
        """How many more jobs could start now.

        A job whose code has ended no longer counts, though its worker is
        still recording its outcome: the jobs fetched meanwhile wait for the
        few milliseconds that takes, and the fetch and the record overlap.
        """
        return self._concurrency - self._outstanding + len(self._recording)

    @property
    def concurrency(self) -> int:
        """How many jobs may run at once."""
        return self._concurrency

    @property
    def size(self) -> int:
        """How many worker tasks exist now."""
        return len(self._workers)

    def start(self) -> None:
        """Take the calling context as the one every job starts from."""
        self._context = contextvars.copy_context()

    def submit(self, job: Job) -> None:
        """Queue ``job``, starting a worker for it if none is free."""
        self._queue.put_nowait(job)
        if self._outstanding == 0:
            self._all_done.clear()
        self._outstanding += 1
        if self._idle:
            self._idle -= 1  # as good as taken by this job
        elif len(self._workers) < self._concurrency:
            self._spawn()

    def submit_later(self, job: Job, delay: float) -> None:
        """Queue ``job`` after ``delay`` seconds (a retry); :meth:`join`
        waits for it meanwhile."""
        if self._outstanding == 0:
            self._all_done.clear()
        self._outstanding += 1
        handle = asyncio.get_running_loop().call_later(delay, self._submit_delayed, job.id)
        self._delayed[job.id] = (handle, job)

    def _submit_delayed(self, job_id: str) -> None:
        _, job = self._delayed.pop(job_id)
        self._outstanding -= 1  # submit() counts it again
        self.submit(job)

    def take_queued(self) -> list[Job]:
        """Empty the queue and return the jobs that had not started."""
        jobs = []
        for handle, delayed in self._delayed.values():
            handle.cancel()
            jobs.append(delayed)
            self._done(delayed.id)
        self._delayed.clear()
        while not self._queue.empty():
            job = self._queue.get_nowait()
            if job is not None:
                jobs.append(job)
                self._done(job.id)
        return jobs

    async def join(self) -> None:
        """Wait until every submitted job is done."""
        await self._all_done.wait()

    async def close(self, timeout: float) -> set[asyncio.Task[None]]:
        """Let each worker finish its job and end, waiting ``timeout`` seconds.

        Call :meth:`take_queued` first, or the workers run what is queued.
        Returns the workers still running a job when the time is up.
        """
        self._closing = True
        workers = set(self._workers)
        for _ in workers:
            self._queue.put_nowait(None)
        if not workers:
            return set()
        _, late = await asyncio.wait(workers, timeout=timeout)
        return late

    def _spawn(self) -> None:
        task = asyncio.get_running_loop().create_task(self._work(), context=self._context.copy())
        self._workers.add(task)
        task.add_done_callback(self._workers.discard)

    def ended(self, job_id: str) -> None:
        """The job's code has ended; its outcome is being recorded."""
        self._recording.add(job_id)
        if self.on_free is not None:
            self.on_free()

    def _done(self, job_id: str) -> None:
        self.done += 1
        self._outstanding -= 1
        if self._outstanding == 0:
            self._all_done.set()
        if job_id in self._recording:
            self._recording.remove(job_id)  # its slot was freed when it ended
        elif self.on_free is not None:
            self.on_free()

    async def _work(self) -> None:
        queue = self._queue
        task = asyncio.current_task()
        assert task is not None
        in_a_row = 0
        while True:
            in_a_row += 1
            if in_a_row == _YIELD_EVERY:
                # Jobs that never await would otherwise keep the loop to
                # this worker for as long as the queue is full.
                in_a_row = 0
                await asyncio.sleep(0)
            if queue.empty():
                self._idle += 1
                job = await queue.get()
                in_a_row = 0
            else:
                job = queue.get_nowait()
            if job is None:
                return
            try:
                if job.is_async and not job.claimed:  # the common case, one call shorter
                    await self._executor.run_async(job, task)
                else:
                    await self._executor.run(job, task)
            except Exception:  # noqa: BLE001 - a bug here must not kill the worker
                logger.exception("internal error while running job %s", job.id)
            finally:
                self._done(job.id)
            if contextvars.copy_context() != self._context:
                if not self._closing:
                    self._spawn()
                return
