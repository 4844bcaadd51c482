"""What the store says, as JSON objects: the fields of
:class:`~asyncjob.JobStatus` (and of workers, schedules, the overview), times
as ISO 8601 strings. The dashboard's API and the command line's ``--json``
both print these, so that the two say the same thing in the same words."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from .models import JobStatus, Overview, ScheduleStatus, WorkerStatus

__all__ = ("dumps", "overview_json", "page_json", "schedule_json", "status_json", "worker_json")

_FIELDS = tuple(field.name for field in dataclasses.fields(JobStatus))


def status_json(status: JobStatus) -> dict[str, Any]:
    """``status`` as a JSON object: every field of :class:`JobStatus`, by
    the same name.

    A job run in-process on the memory store may return (or report as
    progress data) any Python object: what JSON cannot hold is given as its
    ``repr()``, so that one odd value never breaks the page or the stream
    that shows it.
    """
    found = {name: getattr(status, name) for name in _FIELDS}
    found["state"] = status.state.value
    found["errors"] = list(status.errors)
    for name in ("run_after", "enqueued_at", "started_at", "finished_at"):
        found[name] = _iso(found[name])
    for name in ("result", "data"):
        found[name] = _jsonable(found[name])
    found["args"] = [_jsonable(value) for value in status.args]
    found["kwargs"] = {str(key): _jsonable(value) for key, value in status.kwargs.items()}
    return found


def page_json(
    jobs: Sequence[JobStatus], after: str | None, after_at: datetime | None
) -> dict[str, Any]:
    """A page of a listing as a JSON object: its jobs, and the ``next`` and
    ``next_at`` that ask for the page after it."""
    return {"jobs": [status_json(s) for s in jobs], "next": after, "next_at": _iso(after_at)}


def schedule_json(schedule: ScheduleStatus) -> dict[str, Any]:
    """A periodic job's schedule as a JSON object."""
    return {
        "name": schedule.name,
        "cron": schedule.cron,
        "last_tick": _iso(schedule.last_tick),
        "next_tick": _iso(schedule.next_tick),
    }


def worker_json(worker: WorkerStatus) -> dict[str, Any]:
    """A worker as a JSON object: the fields of :class:`WorkerStatus`."""
    found = dataclasses.asdict(worker)
    found["queues"] = None if worker.queues is None else list(worker.queues)
    found["started_at"] = _iso(worker.started_at)
    found["last_seen"] = _iso(worker.last_seen)
    return found


def overview_json(overview: Overview) -> dict[str, Any]:
    """The overview as a JSON object; ``ended`` as a list of
    ``{"minute", "succeeded", "failed", "cancelled"}``."""
    return {
        "waiting": overview.waiting,
        "scheduled": overview.scheduled,
        "running": overview.running,
        "capped": overview.capped,
        "oldest_due": _iso(overview.oldest_due),
        "due_since": {queue: _iso(since) for queue, since in overview.due_since.items()},
        "ended": [
            {"minute": _iso(minute), "succeeded": ok, "failed": failed, "cancelled": cancelled}
            for minute, ok, failed, cancelled in overview.ended
        ],
    }


def dumps(value: Any) -> str:
    """Compact JSON, as the API and the stream send it."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _jsonable(value: Any) -> Any:
    try:
        dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value
