"""The default store: jobs kept in this process's memory, lost when it ends."""

from __future__ import annotations

import asyncio
import functools
import itertools
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

from asyncjob._core import defaults
from asyncjob._core.compiler import mypyc_attr
from asyncjob._core.errors import JobNotFound
from asyncjob._core.models import (
    Job,
    JobQuery,
    JobState,
    JobStatus,
    Outcome,
    Overview,
    Progress,
    ProgressValue,
    ScheduleStatus,
    ended,
    made,
    minutes_of_the_last_hour,
    timestamp_to_datetime,
)
from asyncjob._core.spec import DEFAULT_QUEUE

from ._base import ImmediateStore
from .kit import Watchers, follow

__all__ = ("MemoryStore",)


class _Record:
    """A job's mutable state, made when the job starts or anything reads or
    changes it before (a queued job is kept as its :class:`Job` until then).
    The callable is not kept: the runner's queue holds it until the job
    runs. A record is kept for every job read or started, so it holds no
    more slots than it needs: a failed job's error and traceback share one."""

    __slots__ = (
        "args",
        "attempts",
        "cancel_requested",
        "data",
        "enqueued_at",
        "errors",
        "failure",
        "finished_at",
        "id",
        "kwargs",
        "name",
        "priority",
        "progress",
        "queue",
        "result",
        "run_after",
        "started_at",
        "state",
        "unique",
    )

    def __init__(self, job: Job) -> None:
        self.id = job.id
        self.name = job.name
        self.args = job.args
        self.kwargs = job.kwargs
        self.state = JobState.queued
        self.progress: ProgressValue | None = None
        self.data: Any = None
        self.result: Any = None
        #: ``(error, traceback)`` of a failed job.
        self.failure: tuple[str | None, str | None] | None = None
        self.attempts = 0
        self.errors: tuple[str, ...] = ()
        self.cancel_requested = False
        self.enqueued_at = job.enqueued_at
        options = job.options
        if options is None:  # most jobs: the defaults
            self.queue = DEFAULT_QUEUE
            self.priority = 0
            self.unique: str | None = None
            #: Not before this (seconds since the epoch), if it was delayed.
            self.run_after: float | None = None
        else:
            self.queue = options.queue
            self.priority = options.priority
            self.unique = options.unique
            self.run_after = options.due(job.enqueued_at)
        self.started_at: float | None = None
        self.finished_at: float | None = None

    def outcome(self) -> Outcome:
        error, traceback = self.failure or (None, None)
        return made(Outcome, (self.state, self.result, error, traceback))

    def snapshot(self) -> JobStatus:
        error, traceback = self.failure or (None, None)
        return JobStatus(
            id=self.id,
            name=self.name,
            state=self.state,
            progress=self.progress,
            data=self.data,
            result=self.result,
            error=error,
            traceback=traceback,
            attempts=self.attempts,
            errors=self.errors,
            cancel_requested=self.cancel_requested,
            queue=self.queue,
            priority=self.priority,
            run_after=(
                timestamp_to_datetime(self.run_after)
                if self.state is JobState.queued
                and self.run_after is not None
                and self.run_after > time.time()
                else None
            ),
            unique=self.unique,
            enqueued_at=timestamp_to_datetime(self.enqueued_at),
            started_at=timestamp_to_datetime(self.started_at),
            finished_at=timestamp_to_datetime(self.finished_at),
            args=self.args,
            kwargs=self.kwargs,
        )


# Compiled by mypyc, a class refuses subclasses written in Python unless told
# otherwise, and tests, stores and the architecture page subclass this one.
@mypyc_attr(allow_interpreted_subclasses=True)
class MemoryStore(ImmediateStore):
    """Keeps jobs in a dict; watchers are woken directly, nothing is polled.
    It never waits for anything: an :class:`ImmediateStore`, which the runner
    calls synchronously on a job's hot path.

    Finished jobs are remembered for ``keep_finished`` seconds, and at most
    ``max_finished`` of them: past either bound the oldest are forgotten
    (their ids then read as unknown). Memory therefore stays bounded by the
    jobs queued and running plus ``max_finished``, however many have run.

    Args:
        keep_finished: seconds a finished job stays readable (default one hour).
        max_finished: how many finished jobs are kept at most (default 10,000).
        watch_backlog: statuses buffered for one slow watcher before the
            oldest intermediate ones are dropped.
    """

    def __init__(
        self,
        *,
        keep_finished: float = defaults.MEMORY_KEEP_FINISHED,
        max_finished: int = defaults.MEMORY_MAX_FINISHED,
        watch_backlog: int = defaults.WATCH_BACKLOG,
    ) -> None:
        if keep_finished < 0:
            raise ValueError(f"keep_finished must be >= 0 seconds, not {keep_finished!r}")
        if max_finished < 0:
            raise ValueError(f"max_finished must be >= 0, not {max_finished!r}")
        if watch_backlog < 1:
            raise ValueError(f"watch_backlog must be >= 1, not {watch_backlog!r}")
        self.keep_finished = keep_finished
        self.max_finished = max_finished
        # In the order performed: newest last, as listings need them. A job
        # still queued as it was performed is kept as its Job, which the
        # runner's queue holds anyway, until it starts or anything reads or
        # changes it (see _rec): while it waits, it costs one object, not two.
        self._records: dict[str, _Record | Job] = {}
        # The unique keys of the jobs queued or running, and their ids.
        self._unique: dict[str, str] = {}
        self._schedules: dict[str, ScheduleStatus] = {}
        self._finished: deque[_Record] = deque()
        self._watchers: Watchers[JobStatus] = Watchers(watch_backlog)
        # The futures of ending(), by job, until it ends.
        self._endings: dict[str, list[asyncio.Future[Outcome]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        # By job, the last progress a thread reported and the loop has not
        # applied yet: applied at the job's end if it is still on its way.
        self._unapplied: dict[str, Progress] = {}
        self._unapplied_lock = threading.Lock()

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()

    def enqueue_nowait(self, job: Job) -> str:
        if job.id in self._records:
            raise ValueError(f"a job with id {job.id!r} exists already")
        return self._record(job)

    async def enqueue_many(self, jobs: list[Job]) -> list[str]:
        ids = {job.id for job in jobs}
        if len(ids) < len(jobs) or not ids.isdisjoint(self._records):
            taken = [job.id for job in jobs if job.id in self._records]
            raise ValueError(f"job ids exist already, or twice in the batch: {taken}")
        return [self._record(job) for job in jobs]

    def _record(self, job: Job) -> str:
        key = None if job.options is None else job.options.unique
        if key is not None:
            holder = self._unique.get(key)
            if holder is not None:
                return holder
            self._unique[key] = job.id
        self._records[job.id] = job
        self._watchers.announce()
        return job.id

    def _rec(self, job_id: str) -> _Record | None:
        """The job's record; made now for a job kept as it was performed."""
        rec = self._records.get(job_id)
        if isinstance(rec, Job):
            rec = self._records[job_id] = _Record(rec)
        return rec

    def _every(self, *, newest_first: bool = False) -> Iterator[_Record]:
        """Every job's record, in the order performed or the reverse; made
        now for the jobs kept as they were performed."""
        records = self._records
        for job_id, rec in reversed(records.items()) if newest_first else records.items():
            if isinstance(rec, Job):
                # Replacing a value (not adding a key) leaves the iteration valid.
                rec = records[job_id] = _Record(rec)
            yield rec

    def start_nowait(self, job_id: str) -> bool:
        # _rec's work, without its call: this is every job's path.
        rec = self._records.get(job_id)
        if isinstance(rec, Job):
            rec = self._records[job_id] = _Record(rec)  # queued as it was performed
        elif rec is None or rec.state is not JobState.queued:
            return False
        rec.state = JobState.running
        rec.started_at = time.time()
        rec.attempts += 1
        self._watchers.changed(rec.id, rec.snapshot)
        return True

    def report_progress(self, job_id: str, value: ProgressValue, data: Any) -> None:
        try:
            on_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            self._set_progress(job_id, value, data)
        elif self._loop is not None:
            # Every change is applied on the loop, in the order reported, so
            # the store needs no lock and watchers never see values reorder.
            report = (value, data)
            with self._unapplied_lock:
                self._unapplied[job_id] = report
            self._loop.call_soon_threadsafe(self._apply, job_id, report)

    def _apply(self, job_id: str, report: Progress) -> None:
        """A thread's report, on the loop, in its turn."""
        with self._unapplied_lock:
            if self._unapplied.get(job_id) is report:
                del self._unapplied[job_id]
        self._set_progress(job_id, *report)

    def _set_progress(self, job_id: str, value: ProgressValue, data: Any) -> None:
        rec = self._rec(job_id)
        if rec is not None and rec.state is JobState.running:
            rec.progress = value
            rec.data = data
            self._watchers.changed(rec.id, rec.snapshot)

    def finish_nowait(
        self,
        job_id: str,
        state: JobState,
        *,
        result: Any = None,
        error: str | None = None,
        traceback: str | None = None,
    ) -> bool:
        rec = self._records.get(job_id)
        if type(rec) is not _Record or rec.state is not JobState.running:
            return False  # unknown, forgotten, or kept as it was performed: queued
        if rec.cancel_requested:
            state, result, error, traceback = JobState.cancelled, None, None, None
        rec.result = result
        if error is not None or traceback is not None:
            rec.failure = (error, traceback)
        self._end(rec, state)
        return True

    async def finish_as(
        self,
        job_id: str,
        state: JobState,
        *,
        result: Any = None,
        error: str | None = None,
        traceback: str | None = None,
    ) -> JobState | None:
        rec = self._records.get(job_id)
        if not self.finish_nowait(job_id, state, result=result, error=error, traceback=traceback):
            return None
        assert isinstance(rec, _Record)  # forgotten meanwhile, perhaps: the record stands
        return rec.state

    async def retry(self, job_id: str, *, error: str, delay: float) -> bool:
        rec = self._rec(job_id)
        if rec is None or rec.state is not JobState.running:
            return False
        if rec.cancel_requested:
            self._end(rec, JobState.cancelled)
            return False
        rec.state = JobState.queued
        rec.run_after = time.time() + delay
        rec.errors = (*rec.errors, error)
        self._watchers.changed(rec.id, rec.snapshot)
        return True

    async def cancel(self, job_id: str) -> JobState | None:
        rec = self._rec(job_id)
        if rec is None:
            return None
        before = rec.state
        if before is JobState.queued:
            self._end(rec, JobState.cancelled)
        elif before is JobState.running and not rec.cancel_requested:
            rec.cancel_requested = True
            self._watchers.changed(rec.id, rec.snapshot)
        return before

    async def get(self, job_id: str) -> JobStatus | None:
        self._forget_expired()
        rec = self._rec(job_id)
        return None if rec is None else rec.snapshot()

    def outcome_nowait(self, job_id: str) -> Outcome | None:
        rec = self._records.get(job_id)
        if rec is None:
            return None
        if isinstance(rec, Job):
            return _QUEUED
        if rec.finished_at is not None and rec.finished_at <= time.time() - self.keep_finished:
            self._forget_expired()  # it is forgotten, with the others of its age
            return None
        return rec.outcome()

    def queued_nowait(self, job_id: str) -> bool:
        rec = self._records.get(job_id)
        return isinstance(rec, Job) or (rec is not None and rec.state is JobState.queued)

    def ending(self, job_id: str) -> asyncio.Future[Outcome] | None:
        self._forget_expired()
        rec = self._rec(job_id)
        if rec is None:
            return None
        assert self._loop is not None
        future: asyncio.Future[Outcome] = self._loop.create_future()
        if rec.state.is_final:
            future.set_result(rec.outcome())
            return future
        waiting = self._endings.setdefault(job_id, [])
        waiting.append(future)
        future.add_done_callback(functools.partial(_unwait, self._endings, job_id))
        return future

    async def list_jobs(self, query: JobQuery) -> list[JobStatus]:
        self._forget_expired()
        newest_first = self._every(newest_first=True)
        forgotten = False
        if query.before is not None:
            if query.before in self._records:
                newest_first = itertools.dropwhile(lambda rec: rec.id != query.before, newest_first)
                next(newest_first)  # the job named by `before` itself
            elif query.before_at is None:
                raise JobNotFound(query.before)
            else:  # forgotten since: on from where it stood
                forgotten = True
        states, name, queue = query.states, query.name, query.queue
        since, until = query.since, query.until
        # A loop, not generators chained: it reads the records only up to
        # the page's last, as it would not if a compiler made each a list.
        listed: list[JobStatus] = []
        if query.limit <= 0:
            return listed
        for rec in newest_first:
            if (
                (not forgotten or query.listed_after(rec.enqueued_at, rec.id))
                and (states is None or rec.state in states)
                and (name is None or rec.name == name)
                and (queue is None or rec.queue == queue)
                and (since is None or rec.enqueued_at >= since)
                and (until is None or rec.enqueued_at < until)
            ):
                listed.append(rec.snapshot())
                if len(listed) == query.limit:
                    break
        return listed

    async def overview(self) -> Overview:
        self._forget_expired()
        now = time.time()
        active: dict[str, dict[str, int]] = {"waiting": {}, "scheduled": {}, "running": {}}
        oldest: dict[str, float] = {}
        ended: dict[tuple[int, str], int] = {}
        for rec in self._every():
            if rec.state is JobState.running:
                kind = "running"
            elif rec.state is JobState.queued:
                due = rec.run_after if rec.run_after is not None else rec.enqueued_at
                kind = "scheduled" if due > now else "waiting"
                if kind == "waiting" and due < oldest.get(rec.queue, due + 1):
                    oldest[rec.queue] = due
            else:
                if rec.finished_at is not None and rec.finished_at >= now - 3600:
                    key = (int(rec.finished_at // 60), rec.state.value)
                    ended[key] = ended.get(key, 0) + 1
                continue
            counts = active[kind]
            counts[rec.queue] = counts.get(rec.queue, 0) + 1
        return Overview(
            waiting=active["waiting"],
            scheduled=active["scheduled"],
            running=active["running"],
            capped=False,
            due_since={queue: datetime.fromtimestamp(at, UTC) for queue, at in oldest.items()},
            ended=minutes_of_the_last_hour(now, ((m, s, n) for (m, s), n in ended.items())),
        )

    async def tick(self, schedule: ScheduleStatus, job: Job) -> bool:
        known = self._schedules.get(schedule.name)
        if known is not None and _not_after(schedule.last_tick, known.last_tick):
            return False  # performed already
        self._schedules[schedule.name] = schedule
        if known is None:
            return False  # its first run is its next tick
        self.enqueue_nowait(job)
        return True

    async def schedules(self) -> list[ScheduleStatus]:
        return sorted(self._schedules.values(), key=lambda schedule: schedule.name)

    def changes(self) -> AsyncIterator[None]:
        return self._watchers.changes()

    def watch(self, job_id: str) -> AsyncIterator[JobStatus]:
        return follow(self._watchers, job_id, functools.partial(self._status, job_id), ended)

    def _status(self, job_id: str) -> JobStatus:
        """The job's status now, for :meth:`watch`."""
        self._forget_expired()
        rec = self._rec(job_id)
        if rec is None:
            raise JobNotFound(job_id)
        return rec.snapshot()

    def _end(self, rec: _Record, state: JobState) -> None:
        if self._unapplied:
            # A sync job's last report may come after its end: the loop
            # records the ends of the jobs lined up for the threads in
            # batches, which overtake the reports' turns (the progress of 9
            # jobs in 10 was lost so). Applied first.
            with self._unapplied_lock:
                report = self._unapplied.pop(rec.id, None)
            if report is not None and rec.state is JobState.running:
                rec.progress, rec.data = report
        if rec.unique is not None and self._unique.get(rec.unique) == rec.id:
            del self._unique[rec.unique]  # free for the next perform
        rec.state = state
        rec.cancel_requested = False
        rec.finished_at = now = time.time()
        self._finished.append(rec)
        self._watchers.changed(rec.id, rec.snapshot)
        waiting = self._endings.pop(rec.id, None)
        if waiting is not None:
            outcome = rec.outcome()
            for future in waiting:
                if not future.done():
                    future.set_result(outcome)
        self._forget_expired(now)

    def _forget_expired(self, now: float | None = None) -> None:
        finished = self._finished
        if not finished:
            return
        cutoff = (time.time() if now is None else now) - self.keep_finished
        while finished and (
            len(finished) > self.max_finished or finished[0].finished_at <= cutoff  # type: ignore[operator]
        ):
            del self._records[finished.popleft().id]


#: What waiting for a job kept as it was performed reads.
_QUEUED = Outcome(JobState.queued, None, None, None)


def _not_after(tick: datetime | None, last: datetime | None) -> bool:
    return tick is None or (last is not None and tick <= last)


def _unwait(
    endings: dict[str, list[asyncio.Future[Outcome]]], job_id: str, future: asyncio.Future[Outcome]
) -> None:
    """An ending()'s future is done: drop it, if the job has not ended (a
    caller's timeout cancelled it)."""
    waiting = endings.get(job_id)
    if waiting is not None and future in waiting:
        waiting.remove(future)
        if not waiting:
            del endings[job_id]
