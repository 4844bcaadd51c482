"""The errors asyncjob raises.

Every error of the package derives from :class:`AsyncJobError`::

    AsyncJobError
    ├── JobNotFound          (also a LookupError)
    ├── JobFailed
    ├── JobCancelled
    ├── JobLost              (a worker's job taken from it; internal)
    ├── RunnerNotRunning     (also a RuntimeError)
    ├── NotInJob             (also a RuntimeError)
    ├── stores.sql.SchemaError
    └── stores.sql.BadRecord

A class's docstring is its default message, so ``raise JobNotFound()`` still
says something useful.
"""

from __future__ import annotations

__all__ = (
    "AsyncJobError",
    "BadRecord",
    "JobCancelled",
    "JobFailed",
    "JobLost",
    "JobNotFound",
    "NotInJob",
    "RunnerNotRunning",
)


class AsyncJobError(Exception):
    """An asyncjob error."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class JobNotFound(AsyncJobError, LookupError):
    """No job has this id: it was never performed, or it finished long enough
    ago to have been forgotten."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(
            f"no job with id {job_id!r}: it was never performed here, or it "
            "finished long enough ago to have been forgotten"
        )


class JobFailed(AsyncJobError):
    """The job raised an exception.

    ``error`` is the original exception's type and message
    (``"ValueError: bad input"``); ``traceback`` the formatted traceback.
    """

    def __init__(self, job_id: str, error: str, traceback: str | None = None) -> None:
        self.job_id = job_id
        self.error = error
        self.traceback = traceback
        super().__init__(f"job {job_id} failed: {error}")


class JobCancelled(AsyncJobError):
    """The job was cancelled before it finished.

    Raised by :meth:`Runner.wait` for a cancelled job, and inside a running
    sync job by its next :func:`asyncjob.set_progress` once it is cancelled.
    """

    def __init__(self, job_id: str | None = None) -> None:
        self.job_id = job_id
        super().__init__(f"job {job_id} was cancelled" if job_id else "the job was cancelled")


class JobLost(AsyncJobError):
    """The job is no longer held by this worker: it was cancelled, or its
    lease ran out and another worker took it. Its writes are rolled back."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(
            f"job {job_id} is no longer held by this worker (cancelled, or taken "
            "over after its lease ran out): its writes are rolled back"
        )


class RunnerNotRunning(AsyncJobError, RuntimeError):
    """No runner is running: start one with ``async with asyncjob.Runner():``
    (or ``await runner.start()``) before performing jobs."""


class NotInJob(AsyncJobError, RuntimeError):
    """This is only available inside a job run by asyncjob."""


class BadRecord(AsyncJobError):
    """A job's row holds something asyncjob did not write (edited by hand?)."""


# Published by the SQL stores, whose rows these are; defined here so that the
# layers above the stores (the web app) can tell it apart without importing them.
BadRecord.__module__ = "asyncjob.stores.sql"
