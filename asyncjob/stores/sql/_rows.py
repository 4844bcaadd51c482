"""Reading job rows back: JSON decoded, states checked, bad rows named."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row

from asyncjob._core.errors import AsyncJobError
from asyncjob._core.models import JobState, JobStatus, timestamp_to_datetime
from asyncjob.stores.kit import loads

from ._schema import SCHEDULED

__all__ = ("BadRecord", "json_column", "state_of", "status_of")


class BadRecord(AsyncJobError):
    """A job's row holds something asyncjob did not write (edited by hand?)."""


def number(value: float | None) -> float | None:
    """A progress value as reported: the column is a float, but a whole
    number (the usual count of items done) reads back as the int it was."""
    if value is not None and value.is_integer():
        return int(value)
    return value


def state_of(job_id: str, text: Any) -> JobState:
    if text == SCHEDULED:
        return JobState.queued  # waiting for its time: queued, as users see it
    try:
        return JobState(text)
    except ValueError:
        raise BadRecord(
            f"job {job_id} has the state {text!r}, which asyncjob never writes"
        ) from None


def json_column(job_id: str, column: str, text: str | None) -> Any:
    if text is None:
        return None
    try:
        return loads(text)
    except ValueError as exc:
        raise BadRecord(f"job {job_id} holds invalid JSON in its {column}: {exc}") from None


def _arguments(text: str | None, kind: type[Any]) -> Any:
    """A job's arguments for its status. Arguments that cannot be read
    (damaged by hand) leave its status readable, empty: the job itself
    fails saying why when a worker claims it."""
    try:
        found = loads(text) if text else kind()
    except ValueError:
        return kind()
    return found if isinstance(found, kind) else kind()


def status_of(row: Row[Any]) -> JobStatus:
    return JobStatus(
        id=row.id,
        name=row.name,
        state=state_of(row.id, row.state),
        progress=number(row.progress),
        data=json_column(row.id, "data", row.data),
        result=json_column(row.id, "result", row.result),
        error=row.error,
        traceback=row.traceback,
        attempts=row.attempts,
        errors=tuple(json_column(row.id, "errors", row.errors) or ()),
        cancel_requested=bool(row.cancel_requested),
        queue=row.queue,
        priority=row.priority,
        run_after=timestamp_to_datetime(row.run_after) if row.state == SCHEDULED else None,
        unique=row.unique_key,
        enqueued_at=timestamp_to_datetime(row.enqueued_at),
        started_at=timestamp_to_datetime(row.started_at),
        finished_at=timestamp_to_datetime(row.finished_at),
        args=tuple(_arguments(row.args, list)),
        kwargs=_arguments(row.kwargs, dict),
        worker=row.locked_by if row.started_at is not None else None,
    )


BadRecord.__module__ = "asyncjob.stores.sql"  # where users import it from
