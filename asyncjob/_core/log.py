"""The package's one logger, ``asyncjob``.

Every part of the package logs through it, so that an application
configures (or silences) asyncjob in one place. A record about a job
carries the job as fields of its own (see :func:`about`), for structured
logging: a JSON formatter, or a filter that sends one job's lines apart.
"""

from __future__ import annotations

import logging
from typing import Protocol

__all__ = ("about", "logger")

logger = logging.getLogger("asyncjob")


class AboutJob(Protocol):
    """What a record about a job says of it: a ``Job``, or a hook's ``JobInfo``."""

    @property
    def id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def queue(self) -> str: ...
    @property
    def attempt(self) -> int: ...


def about(job: AboutJob) -> dict[str, object]:
    """The ``extra=`` of a log record about ``job``: ``record.job_id``,
    ``job_name``, ``job_queue`` and ``job_attempt`` (prefixed, since a
    record's own ``name`` is the logger's)."""
    return {
        "job_id": job.id,
        "job_name": job.name,
        "job_queue": job.queue,
        "job_attempt": job.attempt,
    }
