"""The package's one logger, ``asyncjob``.

Every part of the package logs through it, so that an application
configures (or silences) asyncjob in one place. A record about a job
carries the job as fields of its own (see :func:`about`), for structured
logging: a JSON formatter, or a filter that sends one job's lines apart.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .spec import DEFAULT_QUEUE

if TYPE_CHECKING:
    from .models import Job

__all__ = ("about", "logger")

logger = logging.getLogger("asyncjob")


def about(job: Job) -> dict[str, object]:
    """The ``extra=`` of a log record about ``job``: ``record.job_id``,
    ``job_name``, ``job_queue`` and ``job_attempt`` (prefixed, since a
    record's own ``name`` is the logger's)."""
    return {
        "job_id": job.id,
        "job_name": job.name,
        "job_queue": job.options.queue if job.options is not None else DEFAULT_QUEUE,
        "job_attempt": job.attempt,
    }
