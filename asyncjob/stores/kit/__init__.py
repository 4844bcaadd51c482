"""The store kit: machinery any store may use, whatever keeps its jobs.

- :class:`GroupCommit`: writes wanted at the same time share one statement.
- :class:`ProgressBuffer`: many ``set_progress`` calls, few writes.
- :class:`Watchers`: a job's changes fanned out to the tasks watching it;
  :func:`follow`, a store's ``watch`` made of them.
- :class:`LeaseThread`: leases renewed from a thread of their own, so that
  a blocked event loop keeps its jobs.
- :func:`dumps` and :func:`loads`: JSON that refuses, with a clear
  ``TypeError``, what it would not give back equal; :func:`storable_text`
  for text a database could refuse (an error message, say).

The memory store and the SQL store are built from them; so may a store of
yours be (a Redis or MySQL one, say).
"""

from __future__ import annotations

from ._following import follow
from ._group_commit import MAX_BATCH, GroupCommit
from ._json import dumps, loads, storable_text
from ._leases import LeaseThread, Renew
from ._progress import PROGRESS_INTERVAL, ProgressBuffer, Report
from ._watchers import Changes, Mailbox, Watchers

__all__ = (
    "MAX_BATCH",
    "PROGRESS_INTERVAL",
    "Changes",
    "GroupCommit",
    "LeaseThread",
    "Mailbox",
    "ProgressBuffer",
    "Renew",
    "Report",
    "Watchers",
    "dumps",
    "follow",
    "loads",
    "storable_text",
)
