"""Where tracing plugs in: off (``None``) unless an integration such as
:mod:`asyncjob.otel` turns it on, so that a runner without one pays one
global read per job and imports nothing.

A :class:`Tracing` is told of each job performed, and returns the trace
context to store with it; and of each attempt run, around which it keeps a
span current, so that what the job's code traces joins it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .models import Job

__all__ = ("Attempt", "Tracing", "active", "with_context")


class Attempt(Protocol):
    def end(self, error: BaseException | None) -> None:
        """The attempt's code has stopped, with ``error`` if it failed."""


class Tracing(Protocol):
    def performed(self, job: Job) -> Mapping[str, str] | None:
        """A job is performed here: the trace context to store with it."""

    def run(self, job: Job) -> Attempt:
        """An attempt of ``job`` starts here: make its span current (in the
        caller's context, which a sync job's thread copies)."""


#: The tracing in force in this process, if any.
active: Tracing | None = None


def with_context(job: Job) -> Job:
    """``job`` with the trace context to store with it, when tracing is on."""
    tracing = active
    return job if tracing is None else job._replace(trace=tracing.performed(job))
