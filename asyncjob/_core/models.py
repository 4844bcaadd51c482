"""The data asyncjob hands out and passes to stores.

Records that the runner makes by the thousand (:class:`Job`, :class:`Claimed`,
:class:`Outcome`) are named tuples, the smallest and fastest records Python
has; what users read (:class:`JobStatus`, :class:`JobQuery`) are frozen,
slotted dataclasses.
"""

from __future__ import annotations

import enum
import itertools
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

from .spec import DEFAULT_QUEUE, JobOptions

__all__ = (
    "COUNT_CAP",
    "MAX_JOB_ID_LENGTH",
    "MAX_LISTED",
    "MAX_NAME_LENGTH",
    "Claimed",
    "Job",
    "JobPage",
    "JobQuery",
    "JobState",
    "JobStatus",
    "Outcome",
    "Overview",
    "Progress",
    "ProgressValue",
    "ScheduleStatus",
    "WorkerStatus",
    "ended",
    "made",
    "minutes_of_the_last_hour",
    "new_job_id",
    "timestamp_to_datetime",
)

#: A progress value, as given to :func:`asyncjob.set_progress`. ``int |
#: float``, where ``float`` alone would do for mypy, keeps a whole number
#: the int it was given as when mypyc compiles the modules it passes
#: through: a compiled ``float`` turns an int into a float (50 into 50.0).
#: Write this, not ``float``, wherever a progress value goes.
ProgressValue = int | float

#: ``(value, data)`` as last given to :func:`asyncjob.set_progress`.
Progress = tuple[ProgressValue, Any]


class JobState(enum.StrEnum):
    """Where a job is in its life.

    ``queued`` → ``running`` → one of the final states ``succeeded``,
    ``failed`` or ``cancelled``. A queued job may also go straight to
    ``cancelled``; a running one ends ``cancelled`` once its code has
    stopped (until then it is ``running``, with
    :attr:`JobStatus.cancel_requested` set).
    """

    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def is_final(self) -> bool:
        """True for the states a job never leaves."""
        # Not a set's membership: an enum member's hash is a Python call.
        return self is not JobState.queued and self is not JobState.running


@dataclass(frozen=True, slots=True)
class JobStatus:
    """A snapshot of one job, as the store knew it when it was taken.

    Attributes:
        id: the job's id, as :meth:`Runner.perform` returned it.
        name: the dotted name of the function performed, e.g. ``app.jobs.resize``.
        state: where the job is in its life.
        progress: the value the job last gave :func:`asyncjob.set_progress`;
            ``None`` until it does. Kept after the job ends.
        data: the data given with that value.
        result: a succeeded job's return value.
        error: a failed job's exception, type and message
            (``"ValueError: bad input"``).
        traceback: a failed job's full traceback, as text.
        attempts: how many times the job started; more than 1 after a
            retry, or after its worker died and another took it over.
        errors: the error of each failed attempt before the last, oldest
            first (the last one is ``error``).
        cancel_requested: the job was cancelled while it ran, and its code
            has not stopped yet: it is still ``running``, and becomes
            ``cancelled`` once its code has stopped.
        queue: the queue it waits in (``"default"`` unless performed with
            :func:`asyncjob.using` or registered with one).
        priority: from -100 to 100; among the jobs due, higher starts first.
        run_after: while it is queued and not due yet (delayed, or waiting
            for a retry), when it may start (an aware UTC datetime); ``None``
            once it is due.
        unique: the key it was performed with, if any.
        enqueued_at: when it was performed (an aware UTC datetime).
        started_at: when it started running, if it has.
        finished_at: when it ended, if it has.
        args: the positional arguments it was performed with.
        kwargs: the keyword arguments it was performed with.
        worker: the id of the worker that runs it, or ran its last attempt
            (as :attr:`WorkerStatus.id`), on a shared store; ``None`` before
            it starts, and on the memory store.
    """

    id: str
    name: str
    state: JobState
    progress: ProgressValue | None = None
    data: Any = None
    result: Any = None
    error: str | None = None
    traceback: str | None = None
    attempts: int = 0
    errors: tuple[str, ...] = ()
    cancel_requested: bool = False
    queue: str = DEFAULT_QUEUE
    priority: int = 0
    run_after: datetime | None = None
    unique: str | None = None
    enqueued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    worker: str | None = None

    @property
    def is_final(self) -> bool:
        """True once the job has ended: succeeded, failed or cancelled."""
        return self.state.is_final

    def outcome(self) -> Outcome:
        """The part of the status that says how the job ended."""
        return Outcome(self.state, self.result, self.error, self.traceback)


def ended(status: JobStatus) -> bool:
    """``status.is_final``, as a function: where a stream of a job's
    statuses stops (``Runner.watch``, the memory store's ``watch``)."""
    return status.is_final


#: The longest job id a store must hold (the ids asyncjob makes are 32
#: hexadecimal digits; an integration may choose its own, up to this).
MAX_JOB_ID_LENGTH = 32

#: The longest job name a store must hold (``module.qualname``, or the
#: name given to :func:`asyncjob.job`).
MAX_NAME_LENGTH = 255

#: The most jobs one listing returns: page through more with ``before``.
MAX_LISTED = 1000


@dataclass(frozen=True)
class ScheduleStatus:
    """A periodic job's schedule, as :meth:`Runner.schedules` reads it.

    Attributes:
        name: the periodic job's name.
        cron: its cron schedule, in UTC.
        last_tick: the last tick performed (an aware UTC datetime), if any.
        next_tick: the next tick to perform.
    """

    name: str
    cron: str
    last_tick: datetime | None
    next_tick: datetime | None


@dataclass(frozen=True)
class WorkerStatus:
    """A worker (a runner that runs the jobs of a durable store), as its
    last heartbeat recorded it (see :meth:`Runner.workers`).

    Attributes:
        id: the worker's name in the store, as jobs it holds say
            (``host:pid:random``).
        host: the machine it runs on.
        pid: its process id there.
        queues: the queues it takes, sorted; ``None`` for every queue.
        concurrency: how many jobs it runs at once at most.
        running: how many jobs it held at its last heartbeat.
        started_at: when it started (an aware UTC datetime).
        last_seen: its last heartbeat, by the store's clock.
        alive: it was seen within a lease: past that, its jobs are taken
            for lost and run again elsewhere, and so is it.
    """

    id: str
    host: str
    pid: int
    queues: tuple[str, ...] | None
    concurrency: int
    running: int
    started_at: datetime
    last_seen: datetime
    alive: bool


#: Counts of the overview stop here: reading it costs no more at a million
#: jobs than at ten thousand.
COUNT_CAP = 10_000


@dataclass(frozen=True)
class Overview:
    """What a store holds now, and what ended over the last hour (see
    :meth:`Runner.overview`).

    Attributes:
        waiting: the jobs due and waiting for a worker, by queue.
        scheduled: the jobs waiting for their time (delayed, or a retry's
            backoff), by queue.
        running: the jobs running, by queue.
        capped: a count stopped at 10,000: there are at least that many.
        due_since: by queue, since when the job that has waited longest
            for a worker there is due (an aware UTC datetime); queues where
            none waits are left out.
        ended: the last hour, a minute at a time, oldest first: ``(minute,
            succeeded, failed, cancelled)``, the minute as an aware UTC
            datetime.
    """

    waiting: dict[str, int]
    scheduled: dict[str, int]
    running: dict[str, int]
    capped: bool
    due_since: dict[str, datetime]
    ended: tuple[tuple[datetime, int, int, int], ...]

    @property
    def oldest_due(self) -> datetime | None:
        """Since when the job that has waited longest for a worker, in any
        queue, is due; ``None`` if none waits."""
        return min(self.due_since.values(), default=None)


def minutes_of_the_last_hour(
    now: float, counted: Iterable[tuple[int, str, int]]
) -> tuple[tuple[datetime, int, int, int], ...]:
    """The counts of jobs ended, ``(minute, state, count)`` with the minute
    as ``seconds since the epoch // 60``, as :attr:`Overview.ended` gives
    them: each minute of the hour before ``now`` (the minute under way
    included), with zeros where none ended."""
    last = int(now // 60)
    counts = {minute: [0, 0, 0] for minute in range(last - 59, last + 1)}
    column = {"succeeded": 0, "failed": 1, "cancelled": 2}
    for minute, state, count in counted:
        row = counts.get(int(minute))
        if row is not None and state in column:
            row[column[state]] += count
    return tuple(
        (datetime.fromtimestamp(minute * 60, UTC), row[0], row[1], row[2])
        for minute, row in counts.items()
    )


@dataclass(frozen=True, slots=True)
class JobQuery:
    """Which jobs a listing returns: newest first (by ``enqueued_at``, then
    by id), filtered, one page at a time.

    Attributes:
        states: only jobs in one of these states (``None``: any state).
        name: only jobs of this name (``None``: any name).
        queue: only jobs of this queue (``None``: any queue).
        limit: at most this many jobs (1 to :data:`MAX_LISTED`).
        before: keyset pagination: only jobs listed after the job of this
            id, the last one of the previous page. Pages stay cheap however
            deep they go, and a job performed meanwhile does not shift them.
        since: only jobs performed at or after this time (seconds since
            the epoch).
        until: only jobs performed before this time.
        before_at: the ``enqueued_at`` of the job ``before`` (seconds since
            the epoch, to the microsecond, as its :class:`JobStatus` says):
            where that job stood in the order, for a store that no longer
            knows it (deleted, or forgotten since the previous page), to
            list on from there (see :meth:`listed_after`). Without it, such
            a ``before`` is an error.
    """

    states: frozenset[JobState] | None = None
    name: str | None = None
    queue: str | None = None
    limit: int = 100
    before: str | None = None
    since: float | None = None
    until: float | None = None
    before_at: float | None = None

    def listed_after(self, enqueued_at: float, job_id: str) -> bool:
        """Whether a job comes after ``(before_at, before)`` in the order.
        ``before_at`` is a time shown to the microsecond, the job's
        ``enqueued_at`` as stored, with more digits (and a float's error,
        a quarter of a microsecond for today's times): so the jobs within a
        microsecond of it are told apart by their ids alone, and the
        page's last job, if it is still there, does not come again."""
        assert self.before_at is not None
        assert self.before is not None
        return enqueued_at < self.before_at - A_MICROSECOND or (
            enqueued_at < self.before_at + A_MICROSECOND and job_id < self.before
        )


#: See :meth:`JobQuery.listed_after`.
A_MICROSECOND = 1e-6


class JobPage(NamedTuple):
    """A page of a listing (see :meth:`Store.list_page`)."""

    #: The jobs of the page, newest first.
    jobs: list[JobStatus]
    #: The ``before`` of the next page: the page's last job, or the last
    #: job the store looked at when it stopped looking before the page was
    #: full; ``None`` when no job is left.
    next: str | None
    #: Its ``enqueued_at``, the next page's ``before_at``: the next page is
    #: found even if that job is deleted (or forgotten) meanwhile.
    next_at: datetime | None = None


class Job(NamedTuple):
    """A job as performed: what to call, and how.

    Stores receive it in :meth:`asyncjob.stores.Store.enqueue`. A named tuple
    because a runner may hold a great many of them queued: it is the smallest
    and fastest record Python offers.
    """

    id: str
    #: The callable's qualified name, for people and logs.
    name: str
    func: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any]
    #: Decided once, when the job is performed: a coroutine job runs on the
    #: event loop, any other callable in the runner's thread pool.
    is_async: bool
    #: Seconds since the epoch (``time.time()``).
    enqueued_at: float
    #: Registered with :func:`asyncjob.job`: with a durable store, any
    #: worker of the store may run it (``name`` is then its registered name).
    registered: bool = False
    #: Claimed from a durable store, which marked it running already.
    claimed: bool = False
    #: Which attempt this is, from 1.
    attempt: int = 1
    #: Its queue, priority, when it may start, its unique key; ``None``:
    #: the defaults (the queue ``default``, priority 0, at once, no key).
    options: JobOptions | None = None
    #: The trace context of the code that performed it (W3C ``traceparent``
    #: and ``tracestate``), when tracing is on (:mod:`asyncjob.otel`).
    trace: Mapping[str, str] | None = None

    @property
    def queue(self) -> str:
        """The queue it waits in."""
        return DEFAULT_QUEUE if self.options is None else self.options.queue

    def call(self) -> Any:
        """``func(*args, **kwargs)``: what running it starts."""
        # Unpacking the shared empty mapping (read-only, so not a dict)
        # costs 0.15 us a call: four times the call itself.
        return self.func(*self.args, **self.kwargs) if self.kwargs else self.func(*self.args)


class Outcome(NamedTuple):
    """How a job ended, or that it has not: what waiting for it needs."""

    state: JobState
    result: Any = None
    error: str | None = None
    traceback: str | None = None


class Claimed(NamedTuple):
    """A registered job that a worker took from a durable store.

    ``problem`` says why it cannot run (its stored arguments are not valid
    JSON): the worker then records it as failed instead of running it.
    """

    id: str
    name: str
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any]
    enqueued_at: float
    attempts: int
    problem: str | None = None
    queue: str = DEFAULT_QUEUE
    priority: int = 0
    trace: Mapping[str, str] | None = None


#: ``made(Job, (every field, in order))``: a named tuple made as a plain
#: tuple is. A named tuple's own constructor is a Python function, a frame
#: each time, and its keywords and defaults cost a third more again: the
#: records a job's path makes (a job, a claimed row, an end, an outcome)
#: are made this way, every field given.
made = tuple.__new__


def new_job_id() -> str:
    """A new job's id: a UUID of version 7 (RFC 9562) in 32 hexadecimal
    digits: the time in milliseconds, a count of the ids this process made
    in that millisecond (12 bits), then 62 random bits.

    Time first, so that the jobs performed together sit together in a
    database's index of ids. Random ids put each new job on a page of
    that index of its own, and a store's inserts slowed as its table grew
    (SQLite's three times over 150,000 jobs: ``bench/README.md``). The
    random bits tell apart the ids of a millisecond, across processes; the
    count keeps those of one process in the order made (RFC 9562's "fixed
    bit-length dedicated counter"), so that the jobs of a ``perform_many``,
    which share their time, are listed in the order performed on every
    store, as the memory store lists them: the random bits alone ordered
    them at random. Past 4,096 ids in a millisecond, the ids take the next.

    They come from ``os.urandom``, 512 bytes at a time: one system call for
    64 ids rather than one each (it was the largest single cost of a
    perform), their variant bits set for all 64 at once. Not
    more at a time: the perform that draws a block pays for it, and 4 KiB
    (14 us) showed at the p99 of perform->start. Each id has a number of
    its own (``itertools.count`` is atomic), which says which block of
    random bytes it is cut from and where: two threads never cut the same
    place of the same block. A forked child draws a block of its own
    before its first id. The time's digits are made once a millisecond,
    and never go back: if the clock does, the ids keep the last
    millisecond's until it has passed again (RFC 9562 allows it), and stay
    in order. The count is the id's number less the number of the
    millisecond's first id: threads making ids at once may share a count
    (never an id: the random bits differ), and order theirs by their own.
    """
    global _block, _stamp
    number = next(_numbers)
    drawn = _block
    if drawn[0] != number >> 6:  # 64 ids a block
        drawn = _block = (number >> 6, _random_tails())
    at = (number & 63) * 16
    now = time.time_ns()
    stamp = _stamp
    count = number - stamp[2]
    if now >= stamp[0] or not 0 <= count < 4096:
        # The next millisecond (never back, if the clock is), or the one
        # after this one's if its 4,096 counts are spent.
        ms = now // 1_000_000 if now >= stamp[0] else stamp[3] + 1
        stamp = _stamp = ((ms + 1) * 1_000_000, f"{ms:012x}", number, ms)
        count = 0
    return stamp[1] + _COUNTS[count] + drawn[1][at : at + 16]


def _random_tails() -> str:
    """64 ids' last 64 bits, as 16 hexadecimal digits each: the variant
    (10) in the first 2 bits, the other 62 random."""
    tails = bytearray(os.urandom(8 * 64))
    tails[0::8] = tails[0::8].translate(_VARIANT_10)
    return tails.hex()


_numbers = itertools.count()
#: (which block, its ids' random parts as hex).
_block: tuple[int, str] = (-1, "")
#: The millisecond of the ids made now: when it ends (ns since the epoch),
#: its digits, the number of its first id, and itself.
_stamp: tuple[int, str, int, int] = (0, "", 0, 0)
#: The version (7) and each count of the ids of a millisecond, as hex.
_COUNTS = [f"7{count:03x}" for count in range(4096)]
#: Each byte with its first 2 bits set to 10 (the variant): a table for
#: ``bytes.translate``.
_VARIANT_10 = bytes((b & 0x3F) | 0x80 for b in range(256))


def _draw_again() -> None:
    global _block
    _block = (-1, "")


os.register_at_fork(after_in_child=_draw_again)


def timestamp_to_datetime(ts: float | None) -> datetime | None:
    """Turn a ``time.time()`` value into an aware UTC datetime."""
    return None if ts is None else datetime.fromtimestamp(ts, UTC)
