"""The operator's commands: ``asyncjob jobs``, ``status``, ``cancel``,
``retry``, ``purge`` and ``workers``, each on a shared store, through a
producer-only runner (it runs nothing, and is no worker)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sqlite3
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TextIO

from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from asyncjob._core import defaults
from asyncjob._core.errors import AsyncJobError, BadRecord, JobNotFound
from asyncjob._core.models import JobState, JobStatus
from asyncjob._core.views import status_json, worker_json
from asyncjob._runner.runner import Runner
from asyncjob.stores import resolve_store
from asyncjob.stores._base import SHARED_STORES

__all__ = (
    "STORE_ERRORS",
    "CommandError",
    "cancel_jobs",
    "list_jobs",
    "list_workers",
    "parse_duration",
    "parse_moment",
    "producer_on",
    "purge_jobs",
    "retry_jobs",
    "show_status",
    "why",
)

#: Exit statuses: done; done, but a job did not succeed (or an id was not
#: acted on); the command could not do its work (unknown id, store away).
OK, NOT_SUCCEEDED, FAILED = 0, 1, 2

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``12h``, ``7d``, ``2w`` as seconds.

    Raises:
        ValueError: not one of those forms.
    """
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if found is None:
        raise ValueError(f"{text!r} is not a duration: give seconds, or 15m, 12h, 7d, 2w")
    return float(found[1]) * _UNITS[found[2] or "s"]


def parse_moment(text: str) -> datetime:
    """A time: ISO 8601 (``2026-12-05T10:00``, local time unless it says
    its zone), or a duration (``2h``: two hours ago).

    Raises:
        ValueError: neither.
    """
    try:
        ago = parse_duration(text)
    except ValueError:
        pass
    else:
        try:
            return datetime.now(UTC) - timedelta(seconds=ago)
        except OverflowError:  # before the year 1, or more seconds than timedelta holds
            raise ValueError(f"{text!r} is too long ago for a time") from None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: give 2026-12-05T10:00 (local time, or with its "
            "zone), or how long ago, as 2h or 7d"
        ) from None
    return moment if moment.utcoffset() is not None else moment.astimezone()


class CommandError(Exception):
    """The command cannot do its work: the message says why (exit 2)."""


#: What a store raises when it cannot be opened or read: its database out of
#: reach or failing (SQLAlchemy's errors; ``sqlite3``'s, from the threads of
#: an SQLite store; the system's), or asyncjob's own (a schema it does not
#: know, a row edited by hand into what it never writes).
STORE_ERRORS = (OSError, SQLAlchemyError, sqlite3.Error, AsyncJobError)


def why(exc: BaseException) -> str:
    """``exc`` said on one line: SQLAlchemy's errors add the statement and
    a link on lines of their own, which a command's error leaves out."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def producer_on(store: str, table_prefix: str, *, existing: bool = False) -> Runner:
    """A runner on the shared ``store`` that runs nothing: what an
    operator's command (and the dashboard) reads and acts through. With
    ``existing``, an SQLite store's file must be there already: opening
    one creates it, and a command given a misspelt path would otherwise
    read (or act on) a new, empty store, and say all is well.

    Raises:
        CommandError: ``store`` is not a shared store's URL, or is wrong,
            or (``existing``) names an SQLite file that does not exist.
    """
    if "://" not in store:
        raise CommandError(f"{store!r} is not a shared store: give {SHARED_STORES}")
    try:
        shared = resolve_store(store, table_prefix=table_prefix)
    except (TypeError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    if existing:
        url = make_url(store)  # a store's URL: resolve_store took it
        if url.get_backend_name() == "sqlite" and url.database:
            if url.database == ":memory:":
                raise CommandError(
                    f"{store!r} is not a shared store: an in-memory SQLite database "
                    "is the process's own"
                )
            if not os.path.exists(url.database):
                raise CommandError(f"no such database file: {os.path.abspath(url.database)}")
    return Runner(shared, producer_only=True)


def _run(store: str, table_prefix: str, work: Callable[[Runner], Awaitable[int]]) -> int:
    """Open ``store``, do ``work`` with a runner on it, close it; the exit
    status, with an error said on stderr."""

    async def main() -> int:
        runner = producer_on(store, table_prefix, existing=True)
        try:
            await runner.start()
        except STORE_ERRORS as exc:
            raise CommandError(f"cannot open the store: {why(exc)}") from None
        try:
            return await work(runner)
        finally:
            await runner.stop()

    try:
        return asyncio.run(main())
    except CommandError as exc:
        return _error(str(exc))
    except BadRecord as exc:
        return _error(f"a job's row is damaged (edited by hand?): {why(exc)}")
    except STORE_ERRORS as exc:
        return _error(f"the store failed: {why(exc)}")


def _error(message: str) -> int:
    print(f"asyncjob: {message}", file=sys.stderr)
    return FAILED


# -- asyncjob jobs --------------------------------------------------------------------------


def list_jobs(
    store: str,
    *,
    states: Sequence[str] | None,
    name: str | None,
    queue: str | None,
    limit: int,
    before: str | None,
    as_json: bool,
    since: datetime | None = None,
    until: datetime | None = None,
    table_prefix: str = defaults.TABLE_PREFIX,
) -> int:
    async def work(runner: Runner) -> int:
        try:
            found = await runner.jobs(
                states or None, name, queue, limit, before=before, since=since, until=until
            )
        except JobNotFound:
            raise CommandError(f"--before names no job the store knows: {before}") from None
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        if as_json:
            json.dump([status_json(status) for status in found], sys.stdout, indent=1)
            print()
        else:
            _table(
                ["ID", "NAME", "QUEUE", "STATE", "PROGRESS", "PERFORMED"],
                [
                    [s.id, s.name, s.queue, _state(s), _progress(s), _when(s.enqueued_at)]
                    for s in found
                ],
            )
        return OK

    return _run(store, table_prefix, work)


# -- asyncjob status ------------------------------------------------------------------------


def show_status(
    store: str, job_id: str, *, follow: bool, table_prefix: str = defaults.TABLE_PREFIX
) -> int:
    async def work(runner: Runner) -> int:
        try:
            status = await runner.status(job_id)
        except JobNotFound:
            raise CommandError(f"no such job: {job_id}") from None
        if follow and not status.is_final:
            status = await _follow(runner, job_id, sys.stderr)
        _describe(status, sys.stdout)
        if status.state is JobState.succeeded or not status.is_final:
            return OK
        return NOT_SUCCEEDED

    return _run(store, table_prefix, work)


async def _follow(runner: Runner, job_id: str, out: TextIO) -> JobStatus:
    """Show the job's progress until it ends: a bar redrawn in place on a
    terminal, a line per change otherwise. Returns its final status."""
    live = out.isatty()
    last: JobStatus | None = None
    async for status in runner.watch(job_id):
        last = status
        line = f"{_bar(status)} {_state(status)}{_data(status)}"
        if live:
            out.write(f"\r\x1b[2K{line[:200]}")
        else:
            out.write(f"{line}\n")
        out.flush()
    if live:
        out.write("\n")
    assert last is not None  # watch yields the status as it is, first
    return last


# -- asyncjob cancel, retry -----------------------------------------------------------------


def cancel_jobs(store: str, job_ids: Sequence[str], *, table_prefix: str) -> int:
    async def work(runner: Runner) -> int:
        worst = OK
        for job_id in job_ids:
            try:
                before = (await runner.status(job_id)).state
            except JobNotFound:
                print(f"{job_id}: no such job", file=sys.stderr)
                worst = FAILED
                continue
            except BadRecord as exc:
                print(f"{job_id}: not cancelled, its row is damaged: {why(exc)}", file=sys.stderr)
                worst = FAILED
                continue
            if await runner.cancel(job_id):
                after = (await runner.status(job_id)).state
                print(f"{job_id}: {'cancelled' if after.is_final else 'cancel requested'}")
            else:
                print(f"{job_id}: not cancelled, it had ended ({before.value})")
                worst = max(worst, NOT_SUCCEEDED)
        return worst

    return _run(store, table_prefix, work)


def retry_jobs(store: str, job_ids: Sequence[str], *, table_prefix: str) -> int:
    async def work(runner: Runner) -> int:
        worst = OK
        for job_id in job_ids:
            try:
                if await runner.retry(job_id):
                    print(f"{job_id}: queued again")
                    continue
                state = (await runner.status(job_id)).state.value
                print(f"{job_id}: not retried: it is {state}, or not registered "
                      "(only jobs registered with @asyncjob.job that failed or were "
                      "cancelled run again)")  # fmt: skip
                worst = max(worst, NOT_SUCCEEDED)
            except JobNotFound:
                print(f"{job_id}: no such job", file=sys.stderr)
                worst = FAILED
            except BadRecord as exc:
                print(f"{job_id}: not retried, its row is damaged: {why(exc)}", file=sys.stderr)
                worst = FAILED
            except ValueError as exc:
                print(f"{job_id}: not retried: {exc}", file=sys.stderr)
                worst = max(worst, NOT_SUCCEEDED)
        return worst

    return _run(store, table_prefix, work)


# -- asyncjob purge ---------------------------------------------------------------------------


def purge_jobs(store: str, *, states: Sequence[str], older_than: float, table_prefix: str) -> int:
    async def work(runner: Runner) -> int:
        try:
            deleted = await runner.purge(older_than, states)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        print(f"deleted {deleted} job(s)")
        return OK

    return _run(store, table_prefix, work)


# -- asyncjob workers -------------------------------------------------------------------------


def list_workers(store: str, *, as_json: bool, table_prefix: str) -> int:
    async def work(runner: Runner) -> int:
        found = await runner.workers()
        if as_json:
            json.dump([worker_json(w) for w in found], sys.stdout, indent=1)
            print()
        else:
            _table(
                ["ID", "HOST", "PID", "QUEUES", "RUNNING", "LAST SEEN", "ALIVE"],
                [
                    [
                        w.id, w.host, str(w.pid),
                        "*" if w.queues is None else ",".join(w.queues),
                        f"{w.running}/{w.concurrency}", _when(w.last_seen),
                        "yes" if w.alive else "LOST",
                    ]
                    for w in found
                ],
            )  # fmt: skip
        return OK

    return _run(store, table_prefix, work)


# -- output -----------------------------------------------------------------------------------


def _table(header: list[str], rows: list[list[str]]) -> None:
    if not rows:
        print("(none)")
        return
    widths = [max(len(row[n]) for row in [header, *rows]) for n in range(len(header))]
    for row in [header, *rows]:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def _describe(status: JobStatus, out: TextIO) -> None:
    """The status, a field a line, what is set."""
    shown = status_json(status)
    shown.pop("traceback")
    for key, value in shown.items():
        if value not in (None, [], "") and not (key == "cancel_requested" and value is False):
            print(f"{key}: {value if isinstance(value, str) else json.dumps(value)}", file=out)
    if status.traceback:
        print(status.traceback.rstrip(), file=out)


def _state(status: JobStatus) -> str:
    if status.cancel_requested:
        return f"{status.state.value} (cancel requested)"
    return status.state.value


def _progress(status: JobStatus) -> str:
    return "" if status.progress is None else f"{status.progress:g}"


def _data(status: JobStatus) -> str:
    return "" if status.data is None else f" {status.data}"


def _bar(status: JobStatus, width: int = 30) -> str:
    value = 100.0 if status.state is JobState.succeeded else (status.progress or 0.0)
    filled = round(width * max(0.0, min(value, 100.0)) / 100)
    return f"[{'#' * filled}{'.' * (width - filled)}] {value:5.1f}%"


def _when(moment: datetime | None) -> str:
    return "" if moment is None else moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")
