"""What a running job knows about itself, carried by a context variable.

The runner binds a :class:`JobContext` around each job. Coroutine jobs see it
because they run inside the binding; sync jobs because their thread runs in a
copy of that context. So :func:`set_progress` and :func:`current_job_id` need
no job id, whatever kind of function the job is.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

from asyncjob._core.errors import JobCancelled, NotInJob

from .job_context import JobContext

__all__ = ("current", "current_job_id", "set_progress")

current: ContextVar[JobContext | None] = ContextVar("asyncjob_current", default=None)

#: Progress values are kept as 64-bit floats: every integer up to this is
#: exact, and given back as the int it was.
_EXACT = 2**53
_NUMBERS = (int, float)


def current_job_id() -> str | None:
    """The id of the job running in this context, or ``None`` outside a job."""
    ctx = current.get()
    return None if ctx is None else ctx.job_id


def set_progress(value: float, data: Any = None) -> None:
    """Report the running job's progress: a number, and anything else you like.

    Works in coroutine and sync jobs alike, with no job id. ``value`` is
    usually a percentage or a count of items done; ``data`` is any object.
    Both can be read back with :func:`asyncjob.get_progress` or
    :meth:`Runner.status` while the job runs.

    It is also where a sync job learns that it was cancelled: once it is,
    this raises :class:`JobCancelled` inside the job.

    Raises:
        NotInJob: called outside a job (it is a ``RuntimeError``).
        TypeError: ``value`` is not an ``int`` or a ``float`` (a ``bool``,
            an ``IntEnum``, a ``Decimal`` are refused).
        ValueError: ``value`` is not finite, or beyond ±2**53, where a
            store would not give it back equal.
        JobCancelled: the job was cancelled or its runner is shutting down.
        TimeoutError: a sync job ran past its timeout (see :func:`asyncjob.job`).
    """
    ctx = current.get()
    if ctx is None:
        raise NotInJob(
            "set_progress() was called outside a job: it reports the progress "
            "of the job that calls it, so call it from inside a function run "
            "by asyncjob.perform()"
        )
    kind: type = type(value)
    if kind not in _NUMBERS:
        raise TypeError(
            f"set_progress() takes a number (an int or a float) as its value, not {kind.__name__} "
            f"({value!r:.60}); put other things in data"
        )
    if not -_EXACT <= value <= _EXACT:  # also refuses NaN
        raise ValueError(
            f"set_progress() takes a finite number from -2**53 to 2**53 as its value, "
            f"which every store gives back equal, not {value!r:.60}; put other things in data"
        )
    if ctx.cancelled:
        raise JobCancelled(ctx.job_id)
    if ctx.timed_out:
        raise TimeoutError(f"job {ctx.job_id} ran longer than its timeout")
    ctx.report(ctx.job_id, value, data)
