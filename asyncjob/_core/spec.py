"""How a job is to be performed: :func:`asyncjob.using`'s options, checked
where they are given, apart from the job's own arguments."""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = (
    "DEFAULT_QUEUE",
    "MAX_DELAY",
    "MAX_PRIORITY",
    "MAX_QUEUE_LENGTH",
    "MAX_UNIQUE_LENGTH",
    "MIN_PRIORITY",
    "JobOptions",
    "JobSpec",
    "check_priority",
    "check_queue",
    "using",
)

#: The queue of a job performed without one.
DEFAULT_QUEUE = "default"
#: Priorities run from this...
MIN_PRIORITY = -100
#: ... to this: higher first.
MAX_PRIORITY = 100
#: The longest queue name a store keeps.
MAX_QUEUE_LENGTH = 64
#: The longest unique key a store keeps.
MAX_UNIQUE_LENGTH = 255
#: The longest a job may wait for its time, in seconds (a century): a
#: later start is a mistake, and one past the year 9999 could not be read
#: back as a datetime (every status and listing of the store raised).
MAX_DELAY = 100 * 365 * 86400


@dataclass(frozen=True, slots=True)
class JobOptions:
    """How a job is performed: where it waits, when, before what, and whether
    a job with the same key may wait or run beside it.

    Attributes:
        queue: the queue it waits in (workers take the queues they are given).
        priority: from -100 to 100; among jobs due, higher starts first.
        delay: seconds to wait, from when it is recorded (by the store's clock).
        at: when to start it, in seconds since the epoch.
        unique: a key: while a job with this key is queued or running, a
            perform with the same key records nothing and returns its id.
    """

    queue: str = DEFAULT_QUEUE
    priority: int = 0
    delay: float | None = None
    at: float | None = None
    unique: str | None = None

    def due(self, now: float) -> float | None:
        """When a job performed at ``now`` may start (seconds since the
        epoch), if it was delayed; ``None``: at once."""
        if self.delay:
            return now + self.delay
        return self.at

    def starts_in(self, now: float) -> float:
        """Seconds a job performed at ``now`` waits before it may start."""
        due = self.due(now)
        return 0.0 if due is None else max(0.0, due - now)


@dataclass(frozen=True, slots=True)
class JobSpec:
    """A function and the options to perform it with, made by
    :func:`asyncjob.using`; every ``perform`` takes it in place of the
    function. An option left out (``None``) is the registered job's default,
    or the default of every job. Make it with :func:`asyncjob.using`, which
    checks the options and gives their errors; made directly, it is taken
    as it is."""

    func: Callable[..., Any]
    queue: str | None = None
    priority: int | None = None
    delay: float | None = None
    at: float | None = None
    unique: str | None = None
    #: The application's ``AsyncSession`` to record the job in, if any.
    transaction: Any = None

    def options(self, queue: str | None = None, priority: int | None = None) -> JobOptions:
        """The options, over the defaults given (a registered job's)."""
        return JobOptions(
            self.queue or queue or DEFAULT_QUEUE,
            self.priority if self.priority is not None else (priority or 0),
            self.delay,
            self.at,
            self.unique,
        )


def using(
    func: Callable[..., Any],
    /,
    *,
    delay: float | datetime.timedelta | None = None,
    at: datetime.datetime | None = None,
    priority: int | None = None,
    queue: str | None = None,
    unique: str | None = None,
    transaction: Any = None,
    **unknown: object,
) -> JobSpec:
    """``func`` with options for performing it, apart from its own arguments::

        await runner.perform(asyncjob.using(send_report, delay=60, priority=10), user_id)
        await runner.perform(asyncjob.using(rebuild, unique=f"index:{user_id}"), user_id)
        await runner.perform(asyncjob.using(send_invoice, transaction=session), order.id)

    A job whose own parameters are called ``delay`` or ``priority`` still
    gets them: options are never read from the job's arguments.

    Args:
        func: what to perform, as ``perform`` takes it.
        delay: seconds (an ``int`` or ``float`` >= 0, or a ``timedelta``)
            before the job may start, by the store's clock.
        at: an aware ``datetime`` before which the job does not start.
        priority: from -100 to 100 (default 0, or the registered job's):
            among the jobs that are due, a higher priority starts first;
            equal ones in the order performed.
        queue: the queue the job waits in (default ``"default"``, or the
            registered job's); a runner takes the queues it is given
            (``Runner(queues=[...])``).
        unique: a key: while a job performed with the same key is queued
            (delayed, or waiting for a retry, included) or running, a
            perform records nothing and returns that job's id.
        transaction: the application's SQLAlchemy ``AsyncSession``, on the
            store's database: the job is written in its transaction, so it
            exists, and runs, only if the application commits (a rollback
            leaves no trace of it). Only for registered jobs, on an SQL store.

    Raises:
        TypeError: ``func`` is not callable (a spec made already included:
            give all the options in one call), an option has the wrong
            type, or an option is unknown.
        ValueError: an option is out of range, or ``delay`` and ``at`` are
            both given, or ``at`` is naive.
    """
    if unknown:
        allowed = "delay, at, priority, queue, unique, transaction"
        raise TypeError(
            f"using() takes the options {allowed}, not {', '.join(sorted(unknown))}: "
            "the job's own arguments go to perform()"
        )
    if isinstance(func, JobSpec):
        raise TypeError(
            f"using() was given a spec made already ({func!r:.80}): give all the options "
            "in one using() call"
        )
    if not callable(func):
        raise TypeError(f"using() needs a callable, not {type(func).__name__} ({func!r:.60})")
    if transaction is not None and not _is_async_session(transaction):
        raise TypeError(
            f"transaction must be an SQLAlchemy AsyncSession, not {type(transaction).__name__}"
        )
    if delay is not None and at is not None:
        raise ValueError("give delay= or at=, not both: both say when the job may start")
    return JobSpec(
        func,
        queue=None if queue is None else check_queue(queue, "queue"),
        priority=None if priority is None else check_priority(priority),
        delay=None if delay is None else _seconds(delay),
        at=None if at is None else _moment(at),
        unique=None if unique is None else _key(unique),
        transaction=transaction,
    )


def _is_async_session(session: object) -> bool:
    from sqlalchemy.ext.asyncio import AsyncSession

    return isinstance(session, AsyncSession)


def check_priority(priority: object) -> int:
    """A priority, checked."""
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise TypeError(
            f"priority must be an int from {MIN_PRIORITY} to {MAX_PRIORITY}, "
            f"not {type(priority).__name__} ({priority!r})"
        )
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise ValueError(
            f"priority must be from {MIN_PRIORITY} to {MAX_PRIORITY} (higher first), not {priority}"
        )
    return priority


def check_queue(queue: object, what: str) -> str:
    """A queue name, checked (``what`` names it in errors)."""
    return _text(queue, what, MAX_QUEUE_LENGTH)


def _key(unique: object) -> str:
    return _text(unique, "unique", MAX_UNIQUE_LENGTH)


def _text(value: object, what: str, longest: int) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string, not {type(value).__name__} ({value!r:.60})")
    if not value.strip() or len(value) > longest or "\x00" in value:
        raise ValueError(
            f"{what} must be a non-empty string of at most {longest} characters, "
            f"without NUL, not {value!r:.80}"
        )
    return value


def _seconds(delay: object) -> float:
    if isinstance(delay, datetime.timedelta):
        seconds = delay.total_seconds()
    elif isinstance(delay, bool) or not isinstance(delay, int | float):
        raise TypeError(
            f"delay must be a number of seconds or a timedelta, not {type(delay).__name__} "
            f"({delay!r:.60})"
        )
    else:
        seconds = float(delay)
    if not 0 <= seconds <= MAX_DELAY:  # NaN too
        raise ValueError(f"delay must be from 0 to {MAX_DELAY} seconds (a century), not {delay!r}")
    return seconds


def _moment(at: object) -> float:
    if not isinstance(at, datetime.datetime):
        raise TypeError(f"at must be a datetime, not {type(at).__name__} ({at!r:.60})")
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(
            f"at must be an aware datetime (with a time zone), not the naive {at!r}: "
            "give tzinfo=datetime.UTC, or use delay="
        )
    moment = at.timestamp()
    if moment > time.time() + MAX_DELAY:
        raise ValueError(f"at must be within a century from now, not {at!r}")
    return moment
