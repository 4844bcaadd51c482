"""The store's frequent writes, each one statement for a whole batch of jobs.

Performs, claims, ends and progress reports arrive by the thousand; each
batch of them (see ``_batch``) is written by one statement. This is where
the two dialects differ most, so it is all here:

- PostgreSQL: a batch travels as one array per column, unpacked by
  ``unnest()`` on the server: one round trip and one execution of the
  statement (and of its triggers) whatever the batch's size, and one
  prepared statement for every size. The statements go straight to the
  driver on connections of their own (see ``_lanes``): performs and ends
  on one, durable; claims and progress on another, which commits without
  waiting for the disk.
- SQLite: ``executemany`` in one transaction, run in one go by the
  store's writing thread (see ``_lanes``): SQLite runs in this process,
  where a statement per row costs no round trip.

Both claim with the same statement, whose ``WHERE`` matches the claim's
partial index word for word (see ``_schema.DUE``).
"""

from __future__ import annotations

import abc
import sqlite3
from typing import Any, NamedTuple

from asyncjob._models import Claimed, JobState

from ._claims import claimed
from ._engine import SQLITE_PRAGMAS, Database
from ._lanes import PostgresLane, SQLiteLane
from ._progress import Report
from ._schema import DUE, Tables

__all__ = ("Ending", "Writes", "writes_for")

_QUEUED = JobState.queued.value
_RUNNING = JobState.running.value


#: The columns an insert fills, in this order.
_NEW_COLUMNS = (
    "id, name, registered, owner, locked_by, lease_expires_at, state, args, kwargs, "
    "attempts, enqueued_at, run_after"
)


class Ending(NamedTuple):
    """How a job held by this store ended, as it is written."""

    job_id: str
    state: str
    result: str | None  # JSON
    error: str | None
    traceback: str | None
    finished_at: float
    #: The last progress report, if it was not written yet.
    progress: Report | None


class Writes(abc.ABC):
    """The frequent writes of one store (see the module's docstring)."""

    def __init__(self, db: Database, tables: Tables, owner: str) -> None:
        self.db = db
        self.tables = tables
        self.owner = owner

    def claim_sql(self, owner: str, lease: str, chosen: str) -> str:
        """The claim of the rows ``chosen`` (a condition, in which
        :meth:`due_sql` picks them), with the placeholders given."""
        jobs, now = self.tables.jobs.name, self.db.now_sql
        return f"""
            UPDATE {jobs}
            SET state = '{_RUNNING}', locked_by = {owner}, started_at = {now},
                lease_expires_at = {now} + {lease}, attempts = attempts + 1
            WHERE {chosen} AND state = '{_QUEUED}'
            RETURNING id, name, args, kwargs, enqueued_at, attempts
            """

    def due_sql(self, column: str, limit: str) -> str:
        """``column`` of the first ``limit`` rows due, by their claim index."""
        jobs, now = self.tables.jobs.name, self.db.now_sql
        return f"""SELECT {column} FROM {jobs} WHERE {DUE} AND run_after <= {now}
                   ORDER BY run_after LIMIT {limit}"""

    @abc.abstractmethod
    async def claim(self, limit: int, lease: float) -> list[Claimed]:
        """Take up to ``limit`` queued registered jobs, in the order they
        came due, for ``lease`` seconds.

        A claim lost with its connection is not sent again: its jobs, if
        the first was committed, come back when their lease runs out.
        """

    @abc.abstractmethod
    async def insert(self, rows: list[dict[str, Any]], lease: float) -> list[None]:
        """Record new jobs (rows as ``SQLStore._row`` makes them); a job
        that is not registered is leased for ``lease`` seconds.

        A job comes due, and its lease starts, by the database's clock, as
        claims and recovery read them: a job performed by a process whose
        clock is ahead is not held back, nor one whose clock is behind
        taken for lost.
        """

    @abc.abstractmethod
    async def finish(self, endings: list[Ending]) -> list[bool]:
        """End the jobs this store still holds; for each, whether it did."""

    @abc.abstractmethod
    async def progress(self, reports: dict[str, Report]) -> None:
        """Store the latest progress of running jobs."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close what the writes opened of their own."""


def writes_for(db: Database, tables: Tables, owner: str) -> Writes:
    """The writes for the database's dialect."""
    if db.is_sqlite:
        return _SQLiteWrites(db, tables, owner)
    return _PostgresWrites(db, tables, owner)


def _by_claim_order(jobs: list[Claimed]) -> list[Claimed]:
    return sorted(jobs, key=lambda job: job.enqueued_at)  # RETURNING keeps no order


class _PostgresWrites(Writes):
    def __init__(self, db: Database, tables: Tables, owner: str) -> None:
        super().__init__(db, tables, owner)
        self._durable = PostgresLane(db.url)
        self._relaxed = PostgresLane(db.url, durable=False)
        jobs = tables.jobs.name
        # Workers claiming at once skip each other's rows. The rows are found
        # again by their physical address, which their lock keeps from
        # changing until this statement updates them: no second look-up by
        # the primary key.
        due = self.due_sql("ctid", "$3")
        self._claim = self.claim_sql("$1", "$2", f"ctid = ANY(ARRAY({due} FOR UPDATE SKIP LOCKED))")
        # Each of these is sent again if its connection turns out dead (see
        # PostgresLane.fetch): an end that was committed first finds its job
        # no longer running; an insert is sent again as one for which rows
        # committed first are conflicts, and do nothing (the first try skips
        # that check, a fifth of an insert's cost).
        now = db.now_sql
        self._insert = f"""
            INSERT INTO {jobs} ({_NEW_COLUMNS})
            SELECT v.id, v.name, v.registered, v.owner, v.owner,
                   CASE WHEN v.registered THEN NULL ELSE {now} + $8 END,
                   '{_QUEUED}', v.args, v.kwargs, 0, v.at, {now}
            FROM unnest($1::varchar[], $2::varchar[], $3::boolean[], $4::varchar[],
                        $5::text[], $6::text[], $7::float8[])
                 AS v(id, name, registered, owner, args, kwargs, at)
            """
        self._insert_again = f"{self._insert} ON CONFLICT (id) DO NOTHING"
        self._finish = f"""
            UPDATE {jobs} AS j
            SET state = v.state, result = v.result, error = v.error,
                traceback = v.traceback, finished_at = v.finished_at,
                locked_by = NULL, lease_expires_at = NULL,
                progress = CASE WHEN v.reported THEN v.progress ELSE j.progress END,
                data = CASE WHEN v.reported THEN v.data ELSE j.data END
            FROM unnest($1::varchar[], $2::varchar[], $3::text[], $4::text[], $5::text[],
                        $6::float8[], $7::boolean[], $8::float8[], $9::text[])
                 AS v(id, state, result, error, traceback, finished_at, reported,
                      progress, data)
            -- A job whose lease ran out and that another worker took
            -- meanwhile is that worker's to finish.
            WHERE j.id = v.id AND j.state = '{_RUNNING}' AND j.locked_by = $10
            RETURNING j.id
            """
        self._progress = f"""
            UPDATE {jobs} AS j SET progress = v.progress, data = v.data
            FROM unnest($1::varchar[], $2::float8[], $3::text[]) AS v(id, progress, data)
            WHERE j.id = v.id AND j.state = '{_RUNNING}'
            """

    async def claim(self, limit: int, lease: float) -> list[Claimed]:
        rows = await self._relaxed.fetch(self._claim, self.owner, lease, limit, retry=False)
        return _by_claim_order([claimed(row) for row in rows])

    async def insert(self, rows: list[dict[str, Any]], lease: float) -> list[None]:
        await self._durable.fetch(
            self._insert,
            [r["id"] for r in rows],
            [r["name"] for r in rows],
            [r["registered"] for r in rows],
            [r["owner"] for r in rows],
            [r["args"] for r in rows],
            [r["kwargs"] for r in rows],
            [r["enqueued_at"] for r in rows],
            lease,
            retry=self._insert_again,
        )
        return [None] * len(rows)

    async def finish(self, endings: list[Ending]) -> list[bool]:
        done = await self._durable.fetch(
            self._finish,
            [e.job_id for e in endings],
            [e.state for e in endings],
            [e.result for e in endings],
            [e.error for e in endings],
            [e.traceback for e in endings],
            [e.finished_at for e in endings],
            [e.progress is not None for e in endings],
            [None if e.progress is None else e.progress[0] for e in endings],
            [None if e.progress is None else e.progress[1] for e in endings],
            self.owner,
        )
        ended = {row[0] for row in done}
        return [e.job_id in ended for e in endings]

    async def progress(self, reports: dict[str, Report]) -> None:
        await self._relaxed.fetch(
            self._progress,
            list(reports),
            [value for value, _ in reports.values()],
            [data for _, data in reports.values()],
        )

    async def close(self) -> None:
        await self._durable.close()
        await self._relaxed.close()


class _SQLiteWrites(Writes):
    def __init__(self, db: Database, tables: Tables, owner: str) -> None:
        super().__init__(db, tables, owner)
        assert db.path is not None
        self._lane = SQLiteLane(db.path, SQLITE_PRAGMAS, db.write_lock)
        jobs = tables.jobs.name
        now = db.now_sql
        # One writer at a time: the statement is atomic as it is.
        due = self.due_sql("id", ":limit")
        self._claim = self.claim_sql(":owner", ":lease", f"id IN ({due})")
        self._insert = f"""
            INSERT INTO {jobs} ({_NEW_COLUMNS})
            VALUES (:id, :name, :registered, :owner, :owner,
                    CASE WHEN :registered THEN NULL ELSE {now} + :lease END,
                    '{_QUEUED}', :args, :kwargs, 0, :enqueued_at, {now})
            """
        self._finish = f"""
            UPDATE {jobs}
            SET state = :state, result = :result, error = :error, traceback = :traceback,
                finished_at = :finished_at, locked_by = NULL, lease_expires_at = NULL,
                progress = CASE WHEN :reported THEN :progress ELSE progress END,
                data = CASE WHEN :reported THEN :data ELSE data END
            WHERE id = :id
            """
        # A job whose lease ran out and that another worker took meanwhile
        # is that worker's to finish.
        self._held = f"SELECT id FROM {jobs} WHERE state = '{_RUNNING}' AND locked_by = ? AND id IN"
        self._progress = (
            f"UPDATE {jobs} SET progress = :progress, data = :data "
            f"WHERE id = :id AND state = '{_RUNNING}'"
        )

    async def claim(self, limit: int, lease: float) -> list[Claimed]:
        params = {"owner": self.owner, "lease": lease, "limit": limit}
        rows = await self._lane.write(lambda conn: conn.execute(self._claim, params).fetchall())
        return _by_claim_order([claimed(row) for row in rows])

    async def insert(self, rows: list[dict[str, Any]], lease: float) -> list[None]:
        leased = [{**row, "lease": lease} for row in rows]
        await self._lane.write(lambda conn: conn.executemany(self._insert, leased))
        return [None] * len(rows)

    async def finish(self, endings: list[Ending]) -> list[bool]:
        ids = [e.job_id for e in endings]

        def write(conn: sqlite3.Connection) -> set[str]:
            marks = ", ".join("?" * len(ids))
            found = conn.execute(f"{self._held} ({marks})", (self.owner, *ids)).fetchall()
            held = {job_id for (job_id,) in found}
            conn.executemany(self._finish, [_finish_row(e) for e in endings if e.job_id in held])
            return held

        held = await self._lane.write(write)
        return [job_id in held for job_id in ids]

    async def progress(self, reports: dict[str, Report]) -> None:
        rows = [
            {"id": job_id, "progress": value, "data": data}
            for job_id, (value, data) in reports.items()
        ]
        await self._lane.write(lambda conn: conn.executemany(self._progress, rows))

    async def close(self) -> None:
        await self._lane.close()


def _finish_row(e: Ending) -> dict[str, Any]:
    return {
        "id": e.job_id,
        "state": e.state,
        "result": e.result,
        "error": e.error,
        "traceback": e.traceback,
        "finished_at": e.finished_at,
        "reported": e.progress is not None,
        "progress": None if e.progress is None else e.progress[0],
        "data": None if e.progress is None else e.progress[1],
    }
