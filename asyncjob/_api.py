"""Module-level calls on the runner running in this process.

Each is one line of delegation to :func:`asyncjob._runner.runner.current`'s
runner, so that application code need not pass the runner around. With no
runner running they raise :class:`RunnerNotRunning`, a ``RuntimeError``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any

from ._core.models import JobState, JobStatus, Progress
from ._core.spec import JobSpec
from ._runner.runner import current

__all__ = (
    "cancel",
    "get_progress",
    "jobs",
    "perform",
    "perform_many",
    "status",
    "wait",
    "watch",
)


async def perform(func: Callable[..., Any] | JobSpec, /, *args: Any, **kwargs: Any) -> str:
    """:meth:`Runner.perform` on the running runner."""
    return await current().perform(func, *args, **kwargs)


async def perform_many(
    func: Callable[..., Any] | JobSpec, arguments: Iterable[Sequence[Any] | Mapping[str, Any]], /
) -> list[str]:
    """:meth:`Runner.perform_many` on the running runner."""
    return await current().perform_many(func, arguments)


async def get_progress(job_id: str) -> Progress | None:
    """:meth:`Runner.get_progress` on the running runner."""
    return await current().get_progress(job_id)


async def status(job_id: str) -> JobStatus:
    """:meth:`Runner.status` on the running runner."""
    return await current().status(job_id)


async def wait(job_id: str, timeout: float | None = None) -> Any:
    """:meth:`Runner.wait` on the running runner."""
    return await current().wait(job_id, timeout)


def watch(job_id: str) -> AsyncIterator[JobStatus]:
    """:meth:`Runner.watch` on the running runner."""
    return current().watch(job_id)


async def cancel(job_id: str) -> bool:
    """:meth:`Runner.cancel` on the running runner."""
    return await current().cancel(job_id)


async def jobs(
    state: JobState | str | Iterable[JobState | str] | None = None,
    name: str | None = None,
    queue: str | None = None,
    limit: int = 100,
    *,
    before: str | None = None,
) -> list[JobStatus]:
    """:meth:`Runner.jobs` on the running runner."""
    return await current().jobs(state, name, queue, limit, before=before)
