"""The tables of an SQL store, and their version.

The schema is created on first use and versioned: a later release that
changes it migrates from the version it finds; a store written by a newer
release is refused with a clear error rather than misread.
"""

from __future__ import annotations

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

__all__ = ("SCHEMA_VERSION", "SchemaError", "Tables", "channels", "ensure_schema")

#: The version this release writes and reads.
SCHEMA_VERSION = 1


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
        Index(f"{prefix}jobs_claim", self.jobs.c.state, self.jobs.c.run_after)
        Index(f"{prefix}jobs_finished", self.jobs.c.finished_at)
        Index(f"{prefix}jobs_locked_by", self.jobs.c.locked_by)


def ensure_schema(conn: Connection, tables: Tables) -> None:
    """Create the tables if they are missing; refuse a version we cannot read.

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
            _create_notify_trigger(conn, tables)
        return
    found = conn.scalar(select(tables.meta.c.value).where(tables.meta.c.key == "schema_version"))
    try:
        version = int(found) if found is not None else None
    except ValueError:
        version = None
    if version is None:
        raise SchemaError(
            f"the table {tables.meta.name} has no readable schema_version ({found!r}): "
            "it was not made by asyncjob, or it was edited by hand"
        )
    if version > SCHEMA_VERSION:
        raise SchemaError(
            f"this store was written by a newer asyncjob (schema version {version}; "
            f"this release reads up to {SCHEMA_VERSION}): upgrade asyncjob here too"
        )
    tables.metadata.create_all(conn)  # indexes or tables added since are created


#: Any number, the same in every process: the advisory lock's key.
_LOCK_KEY = 0x61737963  # "asyc"


def channels(tables: Tables) -> tuple[str, str]:
    """PostgreSQL's notification channels: a registered job was queued;
    a job changed (payload: its id)."""
    prefix = tables.jobs.name.removesuffix("jobs")
    return f"{prefix}queued", f"{prefix}changed"


def _create_notify_trigger(conn: Connection, tables: Tables) -> None:
    """Every change of a job notifies, from the database itself: whoever
    writes it, watchers and workers everywhere hear of it at commit."""
    queued, changed = channels(tables)
    jobs = tables.jobs.name
    conn.execute(
        text(
            f"""
            CREATE OR REPLACE FUNCTION {jobs}_notify() RETURNS trigger AS $$
            BEGIN
                PERFORM pg_notify('{changed}', NEW.id);
                IF NEW.state = 'queued' AND NEW.registered THEN
                    PERFORM pg_notify('{queued}', '');
                END IF;
                RETURN NULL;
            END
            $$ LANGUAGE plpgsql
            """
        )
    )
    conn.execute(
        text(
            f"CREATE TRIGGER {jobs}_notify AFTER INSERT OR UPDATE ON {jobs} "
            f"FOR EACH ROW EXECUTE FUNCTION {jobs}_notify()"
        )
    )


SchemaError.__module__ = "asyncjob.stores.sql"  # where users import it from
