"""Reading job rows back: JSON decoded, states checked, bad rows named."""

from __future__ import annotations

import math
import time
from typing import Any

from sqlalchemy import Row

from asyncjob._core.errors import BadRecord
from asyncjob._core.models import JobState, JobStatus, timestamp_to_datetime
from asyncjob.stores.kit import loads

from ._schema import SCHEDULED

__all__ = ("BadRecord", "json_column", "never_written", "state_of", "status_of")


def never_written(job_id: str, value: Any, column: str) -> str:
    """What is said of a row that holds ``value`` in ``column``: asyncjob
    never wrote it (SQLite keeps any value in any column)."""
    return f"job {job_id} has {value!r} in its {column}, which asyncjob never writes"


def number(job_id: str, value: Any) -> float | None:
    """A progress value as reported: the column is a float, but a whole
    number (the usual count of items done) reads back as the int it was.
    What set_progress never takes (text, which SQLite keeps as given; NaN
    or an infinity) is a bad record."""
    if value is None:
        return None
    if type(value) not in (float, int) or not math.isfinite(value):
        raise BadRecord(never_written(job_id, value, "progress"))
    return int(value) if float(value).is_integer() else value


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


def _whole(job_id: str, column: str, value: Any) -> int:
    """A column of whole numbers, which SQLite would keep text in."""
    if type(value) is not int:
        raise BadRecord(never_written(job_id, value, column))
    return value


def _errors(job_id: str, text: str | None) -> tuple[str, ...]:
    found = json_column(job_id, "errors", text) or []
    if not isinstance(found, list) or not all(isinstance(error, str) for error in found):
        raise BadRecord(f"job {job_id} has {found!r} in its errors, where asyncjob keeps a list")
    return tuple(found)


def status_of(row: Row[Any]) -> JobStatus:
    """A job's status from its row.

    Raises:
        BadRecord: a column holds what asyncjob never writes, named in
            the message: a row edited by hand, as SQLite keeps any value
            in any column.
    """
    try:
        return _status_of(row)
    except (TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise BadRecord(f"job {row.id} holds what asyncjob never writes: {exc}") from None


def _status_of(row: Row[Any]) -> JobStatus:
    return JobStatus(
        id=row.id,
        name=row.name,
        state=state_of(row.id, row.state),
        progress=number(row.id, row.progress),
        data=json_column(row.id, "data", row.data),
        result=json_column(row.id, "result", row.result),
        error=row.error,
        traceback=row.traceback,
        attempts=_whole(row.id, "attempts", row.attempts),
        errors=_errors(row.id, row.errors),
        cancel_requested=bool(row.cancel_requested),
        queue=row.queue,
        priority=_whole(row.id, "priority", row.priority),
        # Waiting for its time, not past it (due, and not claimed yet: no
        # worker was free, or takes its queue), as the memory store says.
        run_after=(
            timestamp_to_datetime(row.run_after)
            if row.state == SCHEDULED and row.run_after > time.time()
            else None
        ),
        unique=row.unique_key,
        enqueued_at=timestamp_to_datetime(row.enqueued_at),
        started_at=timestamp_to_datetime(row.started_at),
        finished_at=timestamp_to_datetime(row.finished_at),
        args=tuple(_arguments(row.args, list)),
        kwargs=_arguments(row.kwargs, dict),
        worker=row.locked_by if row.started_at is not None else None,
    )
