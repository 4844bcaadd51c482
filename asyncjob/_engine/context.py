"""What a running job knows about itself, carried by a context variable.

The runner binds a :class:`JobContext` around each job. Coroutine jobs see it
because they run inside the binding; sync jobs because their thread runs in a
copy of that context. So :func:`set_progress` and :func:`current_job_id` need
no job id, whatever kind of function the job is.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from asyncjob._core.errors import JobCancelled, NotInJob

if TYPE_CHECKING:
    from asyncjob._core.models import Job

__all__ = ("JobContext", "current_job_id", "set_progress")


class JobContext:
    """The running job's id, its progress reporter and its cancellation flag."""

    __slots__ = (
        "cancelled", "finished", "job", "job_id", "report", "session", "timed_out", "worker",
    )  # fmt: skip

    def __init__(
        self, job: Job, report: Callable[[str, float, Any], None], worker: str = ""
    ) -> None:
        #: The job itself (its name, arguments, attempt), for integrations
        #: that tell the job's code about it (Django's task context).
        self.job = job
        self.job_id = job.id
        #: The id of the worker running it (its store's ``owner``; empty for
        #: a store without one), for the same integrations: read here, not
        #: from the process's current runner, which a job starting as its
        #: runner stops no longer finds.
        self.worker = worker
        #: Called as ``report(job_id, value, data)``; thread-safe and cheap.
        self.report = report
        #: Set by the engine when the job is to stop (cancelled, taken from
        #: this worker, or its runner stopping): a coroutine job's task is
        #: cancelled too; a sync job sees it at its next ``set_progress``.
        self.cancelled = False
        #: Set when the attempt ran past its timeout: a sync job then gets
        #: TimeoutError from its next ``set_progress``.
        self.timed_out = False
        #: The job's database session, when the runner gives jobs one.
        self.session: Any = None
        #: Its success was recorded in that session, with the job's writes.
        self.finished = False

    @property
    def is_async(self) -> bool:
        """A coroutine job (cancelled through its task) or a sync one (through
        the ``cancelled`` flag)."""
        return self.job.is_async

    @property
    def claimed(self) -> bool:
        """Claimed from a durable store: a stopping runner hands it back."""
        return self.job.claimed


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
