"""The tables of an SQL store, and their version.

The schema is created on first use and versioned: a later release that
changes it migrates from the version it finds; a store written by a newer
release is refused with a clear error rather than misread.
"""

from __future__ import annotations

from typing import Any, Protocol

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    false,
    inspect,
    select,
    text,
)

from asyncjob._core.errors import AsyncJobError
from asyncjob._core.models import MAX_NAME_LENGTH
from asyncjob._core.spec import DEFAULT_QUEUE, MAX_QUEUE_LENGTH, MAX_UNIQUE_LENGTH

__all__ = (
    "DUE",
    "HOLDS_KEY",
    "RUNNING",
    "SCHEDULED",
    "SCHEMA_VERSION",
    "SchemaError",
    "SchemaHooks",
    "Tables",
    "ensure_schema",
)

#: The version this release writes and reads.
SCHEMA_VERSION = 6

#: The state, in the table, of a job that is queued and not due yet (delayed,
#: or waiting for a retry). It reads as ``queued``: the difference is the
#: store's own, so that the claim index holds only jobs that are due, and
#: a claim never steps over jobs waiting for their time. Claims move them
#: to ``queued`` once due (see ``Dialect.promote_sql``).
SCHEDULED = "scheduled"


class SchemaHooks(Protocol):
    """What the schema asks of the database's dialect (see ``_dialect``)."""

    def lock_schema(self, conn: Connection) -> None:
        """Keep other processes from creating or migrating the schema meanwhile."""

    def install_triggers(self, conn: Connection) -> None:
        """Create (or replace) what announces changes from the database."""

    @property
    def now_sql(self) -> str:
        """The database's clock, in seconds since the epoch, as SQL text."""


class SchemaError(AsyncJobError):
    """The store's tables are of a version this release cannot use."""


class Tables:
    """The store's tables, their names prefixed so that they sit beside the
    application's own."""

    def __init__(self, prefix: str) -> None:
        #: What every name of the store's begins with: tables, indexes,
        #: triggers, notification channels.
        self.prefix = prefix
        self.metadata = MetaData()
        self.meta = Table(
            f"{prefix}meta",
            self.metadata,
            Column("key", String(64), primary_key=True),
            Column("value", String(255), nullable=False),
        )
        self.jobs = Table(
            f"{prefix}jobs",
            self.metadata,
            Column("id", String(32), primary_key=True),
            Column("name", String(MAX_NAME_LENGTH), nullable=False),
            # A registered job may be run by any worker of the store; any
            # other runs only in the process that performed it (its owner).
            Column("registered", Boolean, nullable=False),
            Column("owner", String(64), nullable=True),
            Column("state", String(16), nullable=False),
            Column("args", Text, nullable=False),  # JSON array
            Column("kwargs", Text, nullable=False),  # JSON object
            Column("progress", Float, nullable=True),
            Column("data", Text, nullable=True),  # JSON
            Column("result", Text, nullable=True),  # JSON
            Column("error", Text, nullable=True),
            Column("traceback", Text, nullable=True),
            Column("errors", Text, nullable=True),  # JSON: earlier attempts' errors
            Column("attempts", Integer, nullable=False, default=0),
            Column("queue", String(MAX_QUEUE_LENGTH), nullable=False, server_default=DEFAULT_QUEUE),
            # From -100 to 100: among the jobs due, higher first.
            Column("priority", Integer, nullable=False, server_default="0"),
            # While the job is queued or running, no other job has this key.
            Column("unique_key", String(MAX_UNIQUE_LENGTH), nullable=True),
            # Cancelled while it ran: it ends cancelled once its code has stopped.
            Column("cancel_requested", Boolean, nullable=False, server_default=false()),
            # Seconds since the epoch, as the store's clock tells them.
            Column("enqueued_at", Float, nullable=False),
            Column("run_after", Float, nullable=False),
            Column("started_at", Float, nullable=True),
            Column("finished_at", Float, nullable=True),
            Column("locked_by", String(64), nullable=True),
            Column("lease_expires_at", Float, nullable=True),
            # JSON: the trace context of the code that performed it.
            Column("trace", Text, nullable=True),
        )
        # Periodic jobs: the last tick performed of each, a row per schedule
        # (the row is what decides, tick by tick, which runner performs it).
        self.schedules = Table(
            f"{prefix}schedules",
            self.metadata,
            Column("name", String(MAX_NAME_LENGTH), primary_key=True),
            Column("cron", String(255), nullable=False),
            Column("last_tick", Float, nullable=False),
            Column("next_tick", Float, nullable=True),
        )
        # Workers: a row each, rewritten by its heartbeats (a third of a lease).
        self.workers = Table(
            f"{prefix}workers",
            self.metadata,
            Column("id", String(64), primary_key=True),
            Column("host", String(255), nullable=False),
            Column("pid", Integer, nullable=False),
            Column("queues", Text, nullable=True),  # JSON array; NULL: every queue
            Column("concurrency", Integer, nullable=False),
            Column("running", Integer, nullable=False),
            Column("started_at", Float, nullable=False),
            Column("last_seen", Float, nullable=False),
        )
        # Partial indexes: a row is in each only for part of its life, so
        # that most of its changes touch no index but the primary key's.
        c = self.jobs.c
        self.indexes = (
            # Claims from every queue: the registered jobs due, higher
            # priority first, then in the order they came due.
            _partial(f"{prefix}jobs_due", (c.priority.desc(), c.run_after), DUE),
            # Recovery: the jobs under a lease (running, or not registered).
            _partial(
                f"{prefix}jobs_leased",
                self.jobs.c.lease_expires_at,
                "lease_expires_at IS NOT NULL",
            ),
            # Retention: the jobs that ended.
            _partial(f"{prefix}jobs_ended", self.jobs.c.finished_at, "finished_at IS NOT NULL"),
            # Listings, newest first, a page at a time.
            Index(f"{prefix}jobs_listed", self.jobs.c.enqueued_at, self.jobs.c.id),
            # Claims from some queues: the same order, queue by queue.
            _partial(f"{prefix}jobs_due_by_queue", (c.queue, c.priority.desc(), c.run_after), DUE),
            # The jobs waiting for their time, the first due first; with
            # their queue, so that the overview counts them from it alone.
            _partial(f"{prefix}jobs_scheduled", (c.run_after, c.queue), f"state = '{SCHEDULED}'"),
            # Unique jobs: one key, one job queued or running.
            _partial(f"{prefix}jobs_unique", (c.unique_key,), HOLDS_KEY, unique=True),
        )


#: The rows a claim looks at, as the claim and its index both say it
#: (word for word: that is how the databases match a query to a partial index).
DUE = "state = 'queued' AND registered"

#: The running jobs, as their counts for concurrency limits and the overview
#: say it: through the index of leased jobs (every running job is leased),
#: whose rows are as many as the jobs the workers run, whatever the table
#: holds. (Version 4 had an index of its own for them: one more index to
#: write at every claim, measured among what slowed claims down.)
RUNNING = "lease_expires_at IS NOT NULL AND state = 'running'"

#: The rows whose unique key no other row may have: the jobs queued, waiting
#: for their time or running. Every change of state moves the one row that
#: holds the key (a retry, a recovery, a cancel): none creates another.
HOLDS_KEY = f"unique_key IS NOT NULL AND state IN ('{SCHEDULED}', 'queued', 'running')"


def _partial(name: str, columns: Any, where: str, *, unique: bool = False) -> Index:
    if not isinstance(columns, tuple):
        columns = (columns,)
    return Index(
        name, *columns, unique=unique, postgresql_where=text(where), sqlite_where=text(where)
    )


def ensure_schema(conn: Connection, tables: Tables, dialect: SchemaHooks) -> None:
    """Create the tables if they are missing, migrate them if they are of an
    older version; refuse a version we cannot read.

    Runs in a write transaction, after the dialect has locked the schema
    (PostgreSQL: an advisory lock), so that processes opening a new store at
    once create it once.

    Raises:
        SchemaError: the store was written by a newer release, or its
            version record is damaged.
    """
    dialect.lock_schema(conn)
    if not inspect(conn).has_table(tables.meta.name):
        tables.metadata.create_all(conn)
        conn.execute(tables.meta.insert().values(key="schema_version", value=str(SCHEMA_VERSION)))
        dialect.install_triggers(conn)
        return
    version = _version(conn, tables)
    if version > SCHEMA_VERSION:
        raise SchemaError(
            f"this store was written by a newer asyncjob (schema version {version}; "
            f"this release reads up to {SCHEMA_VERSION}): upgrade asyncjob here too"
        )
    for older in range(version, SCHEMA_VERSION):
        _MIGRATIONS[older](conn, tables, dialect)
    if version < SCHEMA_VERSION:
        conn.execute(
            tables.meta.update()
            .where(tables.meta.c.key == "schema_version")
            .values(value=str(SCHEMA_VERSION))
        )


def _version(conn: Connection, tables: Tables) -> int:
    found = conn.scalar(select(tables.meta.c.value).where(tables.meta.c.key == "schema_version"))
    try:
        version = int(found) if found is not None else None
    except ValueError:
        version = None
    if version is None or version < 1:
        raise SchemaError(
            f"the table {tables.meta.name} has no readable schema_version ({found!r}): "
            "it was not made by asyncjob, or it was edited by hand"
        )
    return version


def _migrate_1_to_2(conn: Connection, tables: Tables, dialect: SchemaHooks) -> None:
    """Version 2 indexes only the rows each index is for (see
    :class:`Tables`), and notifies once per statement, not once per row."""
    for old in ("jobs_claim", "jobs_finished", "jobs_locked_by"):
        conn.execute(text(f"DROP INDEX IF EXISTS {tables.prefix}{old}"))
    # The claim index of the time is made again by version 4: not here.
    for index in tables.indexes[1:3]:
        index.create(conn, checkfirst=True)
    dialect.install_triggers(conn)


def _migrate_2_to_3(conn: Connection, tables: Tables, dialect: SchemaHooks) -> None:
    """Version 3 keeps whether a running job's cancel was requested (it ends
    cancelled once its code has stopped), and indexes listings."""
    jobs = tables.jobs.name
    conn.execute(
        text(f"ALTER TABLE {jobs} ADD COLUMN cancel_requested BOOLEAN NOT NULL DEFAULT false")
    )
    tables.indexes[3].create(conn, checkfirst=True)
    dialect.install_triggers(conn)  # they notify changes of the new column too


def _migrate_3_to_4(conn: Connection, tables: Tables, dialect: SchemaHooks) -> None:
    """Version 4 has queues, priorities and unique keys; its claim index
    orders by priority, and jobs waiting for their time (retries, so far)
    are ``scheduled``, out of it; periodic jobs' ticks have a table."""
    jobs = tables.jobs.name
    for column in (
        f"queue VARCHAR({MAX_QUEUE_LENGTH}) NOT NULL DEFAULT '{DEFAULT_QUEUE}'",
        "priority INTEGER NOT NULL DEFAULT 0",
        f"unique_key VARCHAR({MAX_UNIQUE_LENGTH})",
    ):
        conn.execute(text(f"ALTER TABLE {jobs} ADD COLUMN {column}"))
    conn.execute(text(f"DROP INDEX IF EXISTS {tables.prefix}jobs_due"))
    conn.execute(
        text(
            f"UPDATE {jobs} SET state = '{SCHEDULED}' "
            f"WHERE state = 'queued' AND run_after > {dialect.now_sql}"
        )
    )
    for index in tables.indexes:
        index.create(conn, checkfirst=True)
    tables.schedules.create(conn, checkfirst=True)
    dialect.install_triggers(conn)  # they announce scheduled jobs too


def _migrate_4_to_5(conn: Connection, tables: Tables, dialect: SchemaHooks) -> None:
    """Version 5 records the workers' heartbeats, and counts running jobs
    through the index of leased ones."""
    tables.workers.create(conn, checkfirst=True)
    conn.execute(text(f"DROP INDEX IF EXISTS {tables.prefix}jobs_running"))


def _migrate_5_to_6(conn: Connection, tables: Tables, dialect: SchemaHooks) -> None:
    """Version 6 keeps the trace context a job was performed in, and the
    index of delayed jobs holds their queue."""
    conn.execute(text(f"ALTER TABLE {tables.jobs.name} ADD COLUMN trace TEXT"))
    conn.execute(text(f"DROP INDEX IF EXISTS {tables.prefix}jobs_scheduled"))
    next(i for i in tables.indexes if i.name == f"{tables.prefix}jobs_scheduled").create(conn)


#: ``_MIGRATIONS[n]`` takes a store from version ``n`` to ``n + 1``.
_MIGRATIONS = {
    1: _migrate_1_to_2,
    2: _migrate_2_to_3,
    3: _migrate_3_to_4,
    4: _migrate_4_to_5,
    5: _migrate_5_to_6,
}


SchemaError.__module__ = "asyncjob.stores.sql"  # where users import it from
