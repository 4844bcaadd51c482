"""asyncjob: background jobs for asyncio applications, with progress you can show.

::

    import asyncjob

    async with asyncjob.Runner() as runner:
        job_id = await runner.perform(make_report, year=2026)
        print(await runner.get_progress(job_id))
        print(await runner.wait(job_id))
"""

from __future__ import annotations

from ._api import cancel, get_progress, jobs, perform, perform_many, status, wait, watch
from ._core.errors import (
    AsyncJobError,
    JobCancelled,
    JobFailed,
    JobNotFound,
    NotInJob,
    RunnerNotRunning,
)
from ._core.models import (
    JobState,
    JobStatus,
    Overview,
    Progress,
    ScheduleStatus,
    WorkerStatus,
    new_job_id,
)
from ._core.registry import job, periodic
from ._core.spec import JobSpec, using
from ._engine.context import current_job_id, set_progress
from ._engine.hooks import JobHooks, JobInfo
from ._engine.sessions import JobScope, session, timed_query, timed_query_sync
from ._runner.runner import Runner

__all__ = (
    "AsyncJobError",
    "JobCancelled",
    "JobFailed",
    "JobHooks",
    "JobInfo",
    "JobNotFound",
    "JobScope",
    "JobSpec",
    "JobState",
    "JobStatus",
    "NotInJob",
    "Overview",
    "Progress",
    "Runner",
    "RunnerNotRunning",
    "ScheduleStatus",
    "WorkerStatus",
    "cancel",
    "current_job_id",
    "get_progress",
    "job",
    "jobs",
    "new_job_id",
    "perform",
    "perform_many",
    "periodic",
    "session",
    "set_progress",
    "status",
    "timed_query",
    "timed_query_sync",
    "using",
    "wait",
    "watch",
)
