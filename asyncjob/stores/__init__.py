"""Where jobs are kept: the store interfaces, and the types a store works with.

``Runner(store=...)`` takes a store object, or a name that
:func:`resolve_store` turns into one. To write a store of your own,
implement :class:`Store` (or :class:`ImmediateStore` for one that never
waits, :class:`DurableStore` for one that worker processes share), build it
from :mod:`asyncjob.stores.kit` where that helps, and run the contract
suite of :mod:`asyncjob.testing` against it.
"""

from __future__ import annotations

from asyncjob._core.errors import JobLost, JobNotFound
from asyncjob._core.models import (
    Claimed,
    Job,
    JobPage,
    JobQuery,
    JobState,
    JobStatus,
    Outcome,
    ScheduleStatus,
)
from asyncjob._core.spec import JobOptions

from ._base import DurableStore, ImmediateStore, Store, TransactionalStore
from ._resolve import resolve_store
from .memory import MemoryStore

__all__ = (
    "Claimed",
    "DurableStore",
    "ImmediateStore",
    "Job",
    "JobLost",
    "JobNotFound",
    "JobOptions",
    "JobPage",
    "JobQuery",
    "JobState",
    "JobStatus",
    "MemoryStore",
    "Outcome",
    "ScheduleStatus",
    "Store",
    "TransactionalStore",
    "resolve_store",
)
