"""Defaults, defined once: the runner, the stores and the command line read
them here, so that a default changed here changes everywhere."""

from __future__ import annotations

__all__ = (
    "CONCURRENCY",
    "GRACE_PERIOD",
    "KEEP_FINISHED",
    "LEASE",
    "MAX_THREADS",
    "MEMORY_KEEP_FINISHED",
    "MEMORY_MAX_FINISHED",
    "POLL_INTERVAL",
    "POLL_INTERVAL_LISTENING",
    "TABLE_PREFIX",
    "WATCH_BACKLOG",
)

#: How many jobs a runner runs at once.
CONCURRENCY = 10

#: The thread pool never grows past this by default, whatever the
#: concurrency: more threads rarely make sync jobs faster (the GIL), and
#: each costs memory. The same default as anyio's and Starlette's pool.
MAX_THREADS = 40

#: Seconds a stopping runner lets running jobs finish.
GRACE_PERIOD = 10.0

#: Seconds before a worker's round against its database that failed (a
#: claim, a lease renewal, a tick) is tried again.
RETRY_AFTER = 1.0

#: Seconds a worker holds a claimed job without renewing it (SQL stores).
LEASE = 30.0

#: Seconds between two looks for work that nothing announced (SQL stores),
#: where nothing announces other processes' changes (SQLite off Linux)...
POLL_INTERVAL = 0.25
#: ...and where they are announced (PostgreSQL's NOTIFY, SQLite's log
#: watched on Linux): a safety net then, for what a reconnection missed.
POLL_INTERVAL_LISTENING = 1.0

#: Seconds a finished job stays readable in an SQL store: a week.
KEEP_FINISHED = 7 * 24 * 3600.0

#: Seconds a finished job stays readable in the memory store: an hour.
MEMORY_KEEP_FINISHED = 3600.0

#: How many finished jobs the memory store keeps at most.
MEMORY_MAX_FINISHED = 10_000

#: Statuses buffered for one slow watcher before the oldest are dropped.
WATCH_BACKLOG = 1000

#: What the SQL store's table names begin with.
TABLE_PREFIX = "asyncjob_"
