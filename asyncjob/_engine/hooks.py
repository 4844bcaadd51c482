"""Hooks: code of the application's told of each job's life by its runner."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from asyncjob._core.log import about, logger

if TYPE_CHECKING:
    from asyncjob._core.models import Job, JobState

__all__ = ("JobHooks", "JobInfo", "info", "observe")


class JobInfo(NamedTuple):
    """The job a hook is told about: what a log line or a metric's labels
    need, without its arguments (which may be large, or secret)."""

    id: str
    name: str
    queue: str
    #: 1 for the first run, then one more at each retry or recovery.
    attempt: int


def info(job: Job) -> JobInfo:
    return JobInfo(job.id, job.name, job.queue, job.attempt)


class JobHooks:
    """Subclass it and override what you need; give instances to
    ``Runner(hooks=[...])``.

    The runner calls them where it performs and runs jobs: a job performed
    here and run by a worker elsewhere is seen at its perform here, and at
    its start, progress and end there. :class:`asyncjob.metrics.JobMetrics`
    is built on them, as the TurboGears2 layer's progress trackers are.

    Two kinds of calls:

    * ``enqueued`` and ``ending`` are awaited before the runner goes on, so
      that the application can keep a record of its own in step with the
      store's; one that raises fails the call that made it (a perform, a
      cancel). At a job's end, which no caller waits on, one that raises
      is logged and the end recorded all the same: a hook never leaves a
      job running.
    * ``started``, ``progress``, ``retrying`` and ``finished`` only observe:
      plain functions, called on the event loop (``progress`` also from a
      sync job's thread), so they must be quick and must not block. One
      that raises is logged and changes nothing: a broken metric never
      breaks a job.

    This interface may gain methods (their defaults do nothing, so a
    subclass keeps working).
    """

    async def enqueued(self, jobs: Sequence[JobInfo]) -> None:
        """Jobs are about to be recorded as queued (their ids are final), so
        that no worker can end one before its hooks know of it. One that is
        not recorded after all (its unique key is held by another job, or
        the write failed) is told of at once as ``ending``. Jobs written in
        the application's transaction (``using(..., transaction=)``) and
        periodic jobs are told of just after they are written."""

    def started(self, job: JobInfo) -> None:
        """An attempt of the job starts running here."""

    def progress(self, job_id: str, value: float, data: Any) -> None:
        """A running job reported progress: called from the job itself, on
        the loop or in its thread, so it must be quick and thread-safe."""

    def retrying(self, job: JobInfo, error: str, delay: float) -> None:
        """The job's attempt failed with ``error`` (type and message), and
        is recorded to run again in ``delay`` seconds."""

    async def ending(self, job_id: str) -> None:
        """The job is about to be recorded as ended: succeeded, failed (with
        no retry left), or cancelled."""

    def finished(
        self, job: JobInfo, state: JobState, duration: float | None, error: str | None
    ) -> None:
        """The job ended here and is recorded so: ``duration`` is its last
        attempt's, in seconds (``None`` if it never started here, e.g.
        cancelled while it waited), ``error`` a failed job's type and
        message."""


def observe(hooks: Sequence[JobHooks], method: str, job: JobInfo, *args: Any) -> None:
    """Call ``method`` of each hook of the observing kind; log what raises."""
    for hook in hooks:
        try:
            getattr(hook, method)(job, *args)
        except Exception:  # noqa: BLE001 - logged, and the job goes on
            logger.exception(
                "hook %s.%s raised on job %s (%s); the job goes on",
                type(hook).__name__, method, job.id, job.name,
                extra=about(job),
            )  # fmt: skip
