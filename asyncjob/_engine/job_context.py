"""What a running job knows about itself: its id, how it reports progress,
whether it is to stop.

A class of its own, apart from the context variable that carries it and the
functions a job calls (``context.py``), so that it can be compiled by mypyc
with the engine that makes one per job while the package's boundary stays
interpreted (docs/architecture.md, "Compiled modules").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from asyncjob._core.models import Job, ProgressValue

__all__ = ("JobContext",)


class JobContext:
    """The running job's id, its progress reporter and its cancellation flag."""

    __slots__ = (
        "cancelled", "finished", "job", "job_id", "report", "session", "timed_out", "worker",
    )  # fmt: skip

    def __init__(
        self, job: Job, report: Callable[[str, ProgressValue, Any], None], worker: str = ""
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
