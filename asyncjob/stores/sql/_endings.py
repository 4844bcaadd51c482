"""How a job held by an SQL store ends: finished, finished in the job's own
transaction, or sent back for a retry.

A base of :class:`SQLStore`, apart only to keep each module short.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Update, bindparam, case, event, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from asyncjob._errors import JobLost
from asyncjob._models import JobState
from asyncjob._serialization import dumps

from ._batch import GroupCommit
from ._engine import Database, same_database
from ._progress import ProgressBuffer
from ._rows import BadRecord, json_column
from ._schema import Tables
from ._signals import Signals

__all__ = ("JobEndings", "finish_statement")


def finish_statement(tables: Tables) -> Update:
    """One update, run for many jobs at once (executemany), that ends a job."""
    jobs = tables.jobs
    return (
        update(jobs)
        .where(jobs.c.id == bindparam("b_id"))
        .values(
            state=bindparam("b_state"),
            result=bindparam("b_result"),
            error=bindparam("b_error"),
            traceback=bindparam("b_traceback"),
            finished_at=bindparam("b_finished_at"),
            locked_by=None,
            lease_expires_at=None,
            progress=case(
                (bindparam("b_reported"), bindparam("b_progress")), else_=jobs.c.progress
            ),
            data=case((bindparam("b_reported"), bindparam("b_data")), else_=jobs.c.data),
        )
    )


class JobEndings:
    """The ways a held job ends (see :class:`asyncjob.stores.sql.SQLStore`)."""

    tables: Tables
    owner: str
    url: str
    held: set[str]

    @property
    def db(self) -> Database:
        raise NotImplementedError  # the store's own

    _progress: ProgressBuffer
    _signals: Signals
    _finishes: GroupCommit[tuple[str, dict[str, Any]], bool]
    _finish_statement: Update

    async def finish(
        self,
        job_id: str,
        state: JobState,
        *,
        result: Any = None,
        error: str | None = None,
        traceback: str | None = None,
    ) -> bool:
        encoded = None
        if state is JobState.succeeded:
            try:
                encoded = dumps(result, "the result")
            except TypeError as exc:
                state, error = JobState.failed, f"TypeError: {exc}"
        values: dict[str, Any] = {
            "state": state.value,
            "result": encoded,
            "error": error,
            "traceback": traceback,
            "finished_at": time.time(),
            "locked_by": None,
            "lease_expires_at": None,
        }
        last = await self._progress.take(job_id)
        if last is not None:  # the last report is stored with the final state
            values["progress"], values["data"] = last
        self.held.discard(job_id)
        changed = await self._finishes.submit((job_id, values))
        if changed:
            self._signals.notify(job_id)
        return changed

    async def _write_finishes(
        self, conn: AsyncConnection, items: list[tuple[str, dict[str, Any]]]
    ) -> list[bool]:
        """End many jobs in one statement: those still held by this store."""
        jobs = self.tables.jobs
        ids = [job_id for job_id, _ in items]
        held = set(
            await conn.scalars(
                select(jobs.c.id)
                .where(
                    jobs.c.id.in_(ids),
                    # A job whose lease ran out and that another worker took
                    # meanwhile is that worker's to finish.
                    jobs.c.state == JobState.running.value,
                    jobs.c.locked_by == self.owner,
                )
                .with_for_update()
            )
        )
        rows = [_finish_row(job_id, values) for job_id, values in items if job_id in held]
        if rows:
            await conn.execute(self._finish_statement, rows)
        return [job_id in held for job_id in ids]

    def shares_database_with(self, engine: Any) -> bool:
        """True when ``engine`` (an application's) is on this store's database."""
        return same_database(str(engine.url.render_as_string(hide_password=False)), self.url)

    async def finish_in(self, session: Any, job_id: str, result: Any) -> None:
        """Record the job's success through ``session``, in the transaction
        that holds the job's own writes: both are committed together, or
        neither is.

        Raises:
            TypeError: the result is not JSON (the job then fails, its writes
                rolled back).
            JobLost: the job is no longer held here (cancelled, or its lease
                ran out and another worker took it): its writes must not be
                committed, and are rolled back.
        """
        encoded = dumps(result, "the result")
        values: dict[str, Any] = {
            "state": JobState.succeeded.value,
            "result": encoded,
            "finished_at": time.time(),
            "locked_by": None,
            "lease_expires_at": None,
        }
        last = await self._progress.take(job_id)
        if last is not None:
            values["progress"], values["data"] = last
        jobs = self.tables.jobs
        done = await session.execute(
            update(jobs)
            .where(
                jobs.c.id == job_id,
                jobs.c.state == JobState.running.value,
                jobs.c.locked_by == self.owner,
            )
            .values(**values)
        )
        if not done.rowcount:
            raise JobLost(job_id)
        self.held.discard(job_id)
        event.listen(
            session.sync_session,
            "after_commit",
            lambda _: self._signals.notify(job_id),
            once=True,
        )

    async def retry(self, job_id: str, *, error: str, delay: float) -> bool:
        jobs = self.tables.jobs
        held = jobs.c.state == JobState.running.value, jobs.c.locked_by == self.owner
        # As in finish: if this write fails, the lease runs out and the job
        # runs again, rather than being renewed for ever and never ending.
        self.held.discard(job_id)
        async with self.db.write() as conn:
            row = (
                await conn.execute(
                    select(jobs.c.errors).where(jobs.c.id == job_id, *held).with_for_update()
                )
            ).first()
            if row is None:
                return False
            try:
                earlier = json_column(job_id, "errors", row.errors) or []
            except BadRecord as exc:  # edited by hand: keep the new error all the same
                earlier = [f"(earlier errors unreadable: {exc})"]
            if not isinstance(earlier, list):
                earlier = [f"(earlier errors unreadable: {earlier!r})"]
            errors = [*earlier, error]
            await conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id)
                .values(
                    state=JobState.queued.value,
                    errors=dumps(errors, "the errors"),
                    run_after=self.db.now() + delay,
                    locked_by=None,
                    lease_expires_at=None,
                )
            )
        self._signals.notify(job_id)
        return True


def _finish_row(job_id: str, values: dict[str, Any]) -> dict[str, Any]:
    reported = "progress" in values
    return {
        "b_id": job_id,
        "b_state": values["state"],
        "b_result": values.get("result"),
        "b_error": values.get("error"),
        "b_traceback": values.get("traceback"),
        "b_finished_at": values["finished_at"],
        "b_reported": reported,
        "b_progress": values.get("progress"),
        "b_data": values.get("data"),
    }
