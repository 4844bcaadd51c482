"""The tables of an SQL store, and their version.

The schema is created on first use and versioned: a later release that
changes it migrates from the version it finds; a store written by a newer
release is refused with a clear error rather than misread.
"""

from __future__ import annotations

from typing import Any

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
    inspect,
    select,
    text,
)

from asyncjob._errors import AsyncJobError

__all__ = ("DUE", "SCHEMA_VERSION", "SchemaError", "Tables", "channels", "ensure_schema")

#: The version this release writes and reads.
SCHEMA_VERSION = 2


class SchemaError(AsyncJobError):
    """The store's tables are of a version this release cannot use."""


class Tables:
    """The store's tables, their names prefixed so that they sit beside the
    application's own."""

    def __init__(self, prefix: str = "asyncjob_") -> None:
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
            Column("name", String(255), nullable=False),
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
            # Seconds since the epoch, as the store's clock tells them.
            Column("enqueued_at", Float, nullable=False),
            Column("run_after", Float, nullable=False),
            Column("started_at", Float, nullable=True),
            Column("finished_at", Float, nullable=True),
            Column("locked_by", String(64), nullable=True),
            Column("lease_expires_at", Float, nullable=True),
        )
        # Partial indexes: a row is in each only for part of its life, so
        # that most of its changes touch no index but the primary key's.
        self.indexes = (
            # Claims: the queued registered jobs, in the order they come due.
            _partial(f"{prefix}jobs_due", self.jobs.c.run_after, DUE),
            # Recovery: the jobs under a lease (running, or not registered).
            _partial(
                f"{prefix}jobs_leased",
                self.jobs.c.lease_expires_at,
                "lease_expires_at IS NOT NULL",
            ),
            # Retention: the jobs that ended.
            _partial(f"{prefix}jobs_ended", self.jobs.c.finished_at, "finished_at IS NOT NULL"),
        )


#: The rows a claim looks at, as the claim and its index both say it
#: (word for word: that is how the databases match a query to a partial index).
DUE = "state = 'queued' AND registered"


def _partial(name: str, column: Column[Any], where: str) -> Index:
    return Index(name, column, postgresql_where=text(where), sqlite_where=text(where))


def ensure_schema(conn: Connection, tables: Tables) -> None:
    """Create the tables if they are missing, migrate them if they are of an
    older version; refuse a version we cannot read.

    Runs in a write transaction; on PostgreSQL it first takes an advisory
    lock, so that processes opening a new store at once create it once.

    Raises:
        SchemaError: the store was written by a newer release, or its
            version record is damaged.
    """
    postgres = conn.dialect.name == "postgresql"
    if postgres:
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
    if not inspect(conn).has_table(tables.meta.name):
        tables.metadata.create_all(conn)
        conn.execute(tables.meta.insert().values(key="schema_version", value=str(SCHEMA_VERSION)))
        if postgres:
            _create_notify_triggers(conn, tables)
        return
    version = _version(conn, tables)
    if version > SCHEMA_VERSION:
        raise SchemaError(
            f"this store was written by a newer asyncjob (schema version {version}; "
            f"this release reads up to {SCHEMA_VERSION}): upgrade asyncjob here too"
        )
    for older in range(version, SCHEMA_VERSION):
        _MIGRATIONS[older](conn, tables)
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


def _migrate_1_to_2(conn: Connection, tables: Tables) -> None:
    """Version 2 indexes only the rows each index is for (see
    :class:`Tables`), and notifies once per statement, not once per row."""
    prefix = tables.jobs.name.removesuffix("jobs")
    for old in ("jobs_claim", "jobs_finished", "jobs_locked_by"):
        conn.execute(text(f"DROP INDEX IF EXISTS {prefix}{old}"))
    for index in tables.indexes:
        index.create(conn, checkfirst=True)
    if conn.dialect.name == "postgresql":
        jobs = tables.jobs.name
        conn.execute(text(f"DROP TRIGGER IF EXISTS {jobs}_notify ON {jobs}"))
        conn.execute(text(f"DROP FUNCTION IF EXISTS {jobs}_notify()"))
        _create_notify_triggers(conn, tables)


#: ``_MIGRATIONS[n]`` takes a store from version ``n`` to ``n + 1``.
_MIGRATIONS = {1: _migrate_1_to_2}


#: Any number, the same in every process: the advisory lock's key.
_LOCK_KEY = 0x61737963  # "asyc"


def channels(tables: Tables) -> tuple[str, str]:
    """PostgreSQL's notification channels: a registered job was queued;
    jobs changed (payload: their ids, separated by commas)."""
    prefix = tables.jobs.name.removesuffix("jobs")
    return f"{prefix}queued", f"{prefix}changed"


#: Job ids per notification: 32 characters and a comma each, well within
#: the 8,000 bytes a payload may hold.
IDS_PER_NOTIFICATION = 200


def _create_notify_triggers(conn: Connection, tables: Tables) -> None:
    """Changes of jobs notify, from the database itself: whoever writes
    them, watchers and workers everywhere hear of them at commit.

    Once per statement, whatever its number of rows (a batch of five
    hundred jobs ended at once sends three notifications, not five
    hundred), and only for the changes a watcher can see: a lease renewed
    notifies nobody.
    """
    queued, changed = channels(tables)
    jobs = tables.jobs.name
    per = IDS_PER_NOTIFICATION
    for event, rows in (
        ("insert", "SELECT n.id, n.state, n.registered FROM new_rows AS n"),
        (
            "update",
            "SELECT n.id, n.state, n.registered FROM new_rows AS n"
            " JOIN old_rows AS o ON o.id = n.id"
            " WHERE (n.state, n.progress, n.data, n.attempts)"
            " IS DISTINCT FROM (o.state, o.progress, o.data, o.attempts)",
        ),
    ):
        conn.execute(
            text(
                f"""
                CREATE OR REPLACE FUNCTION {jobs}_notify_{event}() RETURNS trigger AS $$
                DECLARE
                    ids text;
                    anew boolean := false;
                BEGIN
                    FOR ids, anew IN
                        SELECT string_agg(c.id, ','), bool_or(c.state = 'queued' AND c.registered)
                        FROM (SELECT r.*, (row_number() OVER ()) / {per} AS part
                              FROM ({rows}) AS r) AS c
                        GROUP BY c.part
                    LOOP
                        PERFORM pg_notify('{changed}', ids);
                        IF anew THEN
                            PERFORM pg_notify('{queued}', '');
                        END IF;
                    END LOOP;
                    RETURN NULL;
                END
                $$ LANGUAGE plpgsql
                """
            )
        )
        old = " OLD TABLE AS old_rows" if event == "update" else ""
        conn.execute(
            text(
                f"CREATE TRIGGER {jobs}_notify_{event} AFTER {event.upper()} ON {jobs}"
                f" REFERENCING{old} NEW TABLE AS new_rows"
                f" FOR EACH STATEMENT EXECUTE FUNCTION {jobs}_notify_{event}()"
            )
        )


SchemaError.__module__ = "asyncjob.stores.sql"  # where users import it from
