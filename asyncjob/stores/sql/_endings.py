"""How a job held by an SQL store ends: finished, finished in the job's own
transaction, or sent back for a retry.

A base of :class:`SQLStore`, apart only to keep each module short.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Update, event, select, update

from asyncjob._errors import JobLost
from asyncjob._models import JobState
from asyncjob._serialization import dumps

from ._engine import same_database
from ._parts import StorePart
from ._rows import BadRecord, json_column
from ._writes import Ending

__all__ = ("JobEndings",)


class JobEndings(StorePart):
    """The ways a held job ends (see :class:`asyncjob.stores.sql.SQLStore`)."""

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
        # The last report is stored with the final state.
        last = self._progress.take(job_id)
        self.held.discard(job_id)
        ending = Ending(job_id, state.value, encoded, error, traceback, time.time(), last)
        changed = await self._finishes.submit(ending)
        if changed:
            self._signals.notify(job_id)
        return changed

    def shares_database_with(self, engine: Any) -> bool:
        """True when ``engine`` (an application's) is on this store's database."""
        return same_database(str(engine.url.render_as_string(hide_password=False)), self.url)

    async def finish_in(self, session: Any, job_id: str, result: Any) -> None:
        """Record the job's success through ``session`` (an ``AsyncSession``),
        in the transaction that holds the job's own writes: both are
        committed together, or neither is.

        Raises:
            TypeError: the result is not JSON (the job then fails, its writes
                rolled back).
            JobLost: the job is no longer held here (cancelled, or its lease
                ran out and another worker took it): its writes must not be
                committed, and are rolled back.
        """
        done = await session.execute(self._success_in_session(job_id, result))
        self._succeeded_in(session.sync_session, job_id, done.rowcount)

    def finish_in_sync(self, session: Any, job_id: str, result: Any) -> None:
        """:meth:`finish_in` for a sync job's ``Session``, in the job's thread."""
        done = session.execute(self._success_in_session(job_id, result))
        self._succeeded_in(session, job_id, done.rowcount)

    def _success_in_session(self, job_id: str, result: Any) -> Update:
        encoded = dumps(result, "the result")
        values: dict[str, Any] = {
            "state": JobState.succeeded.value,
            "result": encoded,
            "finished_at": time.time(),
            "locked_by": None,
            "lease_expires_at": None,
        }
        last = self._progress.take(job_id)
        if last is not None:
            values["progress"], values["data"] = last
        jobs = self.tables.jobs
        return (
            update(jobs)
            .where(
                jobs.c.id == job_id,
                jobs.c.state == JobState.running.value,
                jobs.c.locked_by == self.owner,
            )
            .values(**values)
        )

    def _succeeded_in(self, sync_session: Any, job_id: str, rowcount: int) -> None:
        """After the job's success was written in its session (from the
        loop, or from a sync job's thread)."""
        if not rowcount:
            raise JobLost(job_id)
        self.held.discard(job_id)  # one set operation: safe from a thread too
        loop = self._loop
        event.listen(
            sync_session,
            "after_commit",
            lambda _: loop.call_soon_threadsafe(self._signals.notify, job_id),
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
