"""Hooks: code of the application's told of each job's life by its runner."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ("JobHooks",)


class JobHooks:
    """Subclass it and override what you need; give instances to
    ``Runner(hooks=[...])``.

    The runner calls them where it performs and runs jobs (a job performed
    here and run by a worker elsewhere is seen at its perform here, and at
    its progress and end there). A hook that raises fails the call that
    made it (a perform, say): keep them simple. The TurboGears2 layer's
    progress trackers are told through one.

    This interface may gain methods (their defaults do nothing, so a
    subclass keeps working).
    """

    async def enqueued(self, job_ids: Sequence[str]) -> None:
        """Jobs are about to be recorded as queued (their ids are final)."""

    def progress(self, job_id: str, value: float, data: Any) -> None:
        """A running job reported progress: called from the job itself, on
        the loop or in its thread, so it must be quick and thread-safe."""

    async def ending(self, job_id: str) -> None:
        """The job is about to be recorded as ended: succeeded, failed (with
        no retry left), or cancelled."""
