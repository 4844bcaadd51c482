"""The dashboard's jobs page at a million jobs, on PostgreSQL and SQLite.

Usage::

    python bench/listing.py [--quick] [--rows N] [--repeat N] [--only sqlite|postgres]
                            [--lines KEYS] [--pg URL] [--explain] [--no-analyze]
                            [--json PATH] [--markdown]

Issue 11 asks how long the jobs page takes to read at 1,000,000 jobs, with
a target of 50 ms at the 99th percentile for any filter the page offers.
The page reads ``Store.list_page(JobQuery)`` (through ``Runner.jobs_page``)
for its list, ``Store.overview()`` on load and on every change, and
``Store.get(id)`` for a job's own page: those are what is timed here,
from the Python API, so that SQLAlchemy's and the driver's costs count.

How:

- **One fill per database, reused by every repetition.** A million jobs
  are written by one ``INSERT ... SELECT`` that the database generates
  itself, straight into the store's jobs table (made by opening an
  ``SQLStore`` once), as ``bench/scheduling.py`` does: far faster than
  performing them. The mix is a month of a busy application (see
  :data:`NAMES` and :func:`fill_sql`): 90 % ended, 8 % queued (a backlog,
  which puts the overview's counts at their cap), 2 % delayed, a few
  running; 20 names of very different frequencies in 4 queues; spread
  over 30 days, a few a second over the last 6 hours. PostgreSQL is then
  vacuumed and analyzed (autovacuum would have), SQLite analyzed
  (``--no-analyze`` leaves it as a store in use is: the store never
  runs ``ANALYZE``). The fill is timed and its size reported.
- **Each query many times.** Every line is a call the page makes (the
  list asks for one row more than it shows, to know whether there is a
  next page: 51 for a page of 50), repeated up to ``samples`` times with
  different cursors or times where the page would vary them, and for
  fewer samples when a call is slow (each line has a time budget): the
  table says how many. p50 and p99 are taken per repetition; the figures
  are their medians over the repetitions.
- **A baseline in the same run.** The statements the store sent for a
  call (caught with SQLAlchemy's ``before_cursor_execute`` event while the
  call was warmed up) are sent again, text and parameters unchanged,
  straight through the driver (asyncpg, aiosqlite) on a connection of its
  own, alternately before and after the store's call: the same plans on
  the same indexes, without asyncjob's and SQLAlchemy's layers. The ratio
  is what those layers cost.
- ``--explain``: for every line that misses the target, the statements
  the store sent, each timed through the driver, and the plans of the
  slowest: ``EXPLAIN (ANALYZE, BUFFERS)`` on PostgreSQL (and the generic
  plan, when the driver's prepared statement went over to it), ``EXPLAIN
  QUERY PLAN`` on SQLite.

The PostgreSQL tables live in the database given (``--pg``) under a
table prefix of their own, dropped at the end; SQLite's in a temporary
file. Progress goes to stderr, the results to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import importlib.metadata
import json
import os
import platform
import random
import re
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Hashable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import aiosqlite
import asyncpg
from core import percentile, source_digest
from scratch_pg import DEFAULT_PG, drop_store_tables, new_prefix
from sql import progress, render
from sql_subjects import sqlite_connect
from sqlalchemy import event
from sqlalchemy.engine import make_url

from asyncjob import JobState
from asyncjob._core.models import JobQuery
from asyncjob.stores.sql import SQLStore
from asyncjob.stores.sql._schema import SCHEDULED

#: Issue 11's target: any call of the jobs page, at the 99th percentile.
TARGET_MS = 50.0
#: The page's default page size; it asks for one more, to know whether a
#: next page exists (``asyncjob/web/_app.py``).
PAGE = 50
#: The largest page the dashboard serves (``MAX_PAGE``).
BIG_PAGE = 500
#: A slow line gets fewer samples, but never fewer than these.
MIN_SAMPLES = 20
KINDS = ("postgres", "sqlite")
LIBRARIES = (
    ("asyncjob", "asyncjob-runner"),
    ("asyncpg", "asyncpg"),
    ("aiosqlite", "aiosqlite"),
    ("SQLAlchemy", "SQLAlchemy"),
)


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much work a run does."""

    rows: int  # jobs in the store
    samples: int  # calls timed per line and repetition, at most
    budget: float  # seconds a line may take per repetition (both subjects), roughly
    repeat: int


FULL = Sizes(rows=1_000_000, samples=200, budget=30.0, repeat=3)
QUICK = Sizes(rows=100_000, samples=50, budget=5.0, repeat=1)


# -- the jobs ---------------------------------------------------------------------------

#: Days of jobs the store holds (``keep_finished`` of a month).
SPAN = 30 * 86_400.0
#: The last hours are busier: this share of the jobs came in over them (at
#: a million jobs, 2.8 a second), so that the overview's last hour holds
#: some thousands of ended jobs however long the run lasts (up to 5 hours).
RECENT = 6 * 3_600.0
RECENT_SHARE = 0.06
#: The newest jobs are running (the last 30 s) or not yet taken (the 2 min before).
RUNNING_FOR = 30.0
WAITING_FOR = 120.0

#: The jobs' names, their queue, and how many of every 10,000 jobs have it:
#: a few names make most of the jobs, as in any application.
NAMES: tuple[tuple[str, str, int], ...] = (
    ("app.emails.send", "emails", 2500),
    ("app.thumbnails.resize", "media", 1500),
    ("app.webhooks.deliver", "default", 1200),
    ("app.search.reindex_document", "default", 900),
    ("app.notifications.push", "emails", 800),
    ("app.billing.charge", "default", 600),
    ("app.exports.csv", "reports", 500),
    ("app.imports.spreadsheet", "default", 400),
    ("app.reports.daily", "reports", 350),
    ("app.cache.warm", "default", 300),
    ("app.audit.archive", "reports", 250),
    ("app.users.sync_ldap", "default", 200),
    ("app.media.transcode", "media", 150),
    ("app.payments.reconcile", "reports", 100),
    ("app.crm.sync_contacts", "default", 80),
    ("app.invoices.render_pdf", "reports", 60),
    ("app.geo.geocode", "default", 50),
    ("app.backups.snapshot", "reports", 30),
    ("app.maintenance.vacuum", "default", 20),
    ("app.security.rotate_keys", "default", 10),
)
#: The states of the jobs older than the newest few minutes, out of 10,000.
STATES: tuple[tuple[str, int], ...] = (
    ("succeeded", 8650),
    ("failed", 300),
    ("cancelled", 50),
    ("queued", 800),
    (SCHEDULED, 200),  # delayed: due within the next week
)
COMMON_NAME = "app.billing.charge"  # 6 %
RARE_NAME = "app.security.rotate_keys"  # 0.1 %
SOME_QUEUE = "reports"  # 13 %

ERROR = "TimeoutError: the upstream service did not answer within 30 s"
TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/srv/app/.venv/lib/python3.12/site-packages/asyncjob/_worker/run.py", '
    "line 212, in run_one\n    result = await func(*args, **kwargs)\n"
    '  File "/srv/app/app/billing.py", line 88, in charge\n'
    "    response = await client.post(url, json=payload, timeout=30)\n"
    '  File "/srv/app/.venv/lib/python3.12/site-packages/httpx/_client.py", '
    "line 1859, in post\n    return await self.request(\n"
    '  File "/srv/app/.venv/lib/python3.12/site-packages/httpx/_client.py", '
    "line 1540, in request\n    return await self.send(request, auth=auth)\n"
    '  File "/srv/app/.venv/lib/python3.12/site-packages/httpx/_transports/default.py", '
    "line 371, in handle_async_request\n    raise mapped_exc(message) from exc\n"
    "httpx.ReadTimeout: the upstream service did not answer within 30 s\n\n"
    "The above exception was the direct cause of the following exception:\n\n"
    f"{ERROR}\n"
)

#: What a store's row gets, column by column: SQL of the generated row
#: (``i``: its number, in the order performed; ``t``: when it was
#: performed; ``state``; ``us``, ``ux``, ``up``: random numbers in
#: 0..9999), with the dialect's ``{true}`` and ``{false}``.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("id", "id"),
    ("name", "{name}"),
    ("registered", "{true}"),
    ("owner", "NULL"),
    ("state", "state"),
    ("args", "'[' || i || ']'"),
    ("kwargs", """'{{"account": ' || (i % 5000) || '}}'"""),
    ("progress", "CASE WHEN state = 'succeeded' AND ux < 2000 THEN 1.0 END"),
    (
        "data",
        """CASE WHEN state = 'succeeded' AND ux < 2000 THEN '{{"done": 40, "total": 40}}' END""",
    ),
    (
        "result",
        """CASE WHEN state = 'succeeded' THEN '{{"ok": true, "items": ' || up || '}}' END""",
    ),
    ("error", "CASE WHEN state = 'failed' THEN {error} END"),
    ("traceback", "CASE WHEN state = 'failed' THEN {traceback} END"),
    ("errors", "CASE WHEN state = 'failed' THEN {errors} END"),
    (
        "attempts",
        "CASE WHEN state = 'failed' THEN 3"
        " WHEN state IN ('succeeded', 'running') THEN 1 ELSE 0 END",
    ),
    ("queue", "{queue}"),
    ("priority", "CASE WHEN up < 1000 THEN 10 WHEN up < 2000 THEN -10 ELSE 0 END"),
    ("unique_key", "NULL"),
    ("cancel_requested", "{false}"),
    ("enqueued_at", "t"),
    ("run_after", f"CASE WHEN state = '{SCHEDULED}' THEN {{now}} + ux * 60.48 ELSE t END"),
    (
        "started_at",
        "CASE WHEN state IN ('succeeded', 'failed', 'running') THEN t + ux / 5000.0 END",
    ),
    (
        "finished_at",
        "CASE WHEN state IN ('succeeded', 'failed') THEN t + ux / 5000.0 + (up % 300) * 0.1"
        " WHEN state = 'cancelled' THEN t + ux / 100.0 END",
    ),
    ("locked_by", "CASE WHEN state = 'running' THEN 'bench-worker' END"),
    # Running jobs stay held for the whole run, as a live worker keeps them.
    ("lease_expires_at", "CASE WHEN state = 'running' THEN {now} + 86400.0 END"),
)


def quote(text: str) -> str:
    """An SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def float_sql(kind: str, value: float) -> str:
    """A float literal (PostgreSQL reads ``1.5e-05`` as ``numeric``, slower)."""
    return f"{value!r}::float8" if kind == "postgres" else repr(value)


def fill_sql(kind: str, table: str, n: int, now: float) -> str:
    """One statement that writes ``n`` jobs as the store would hold them,
    generated by the database itself.

    Job ``i`` was performed at ``t``, in order: the first ``n`` minus
    :data:`RECENT_SHARE` spread evenly over the month before the last
    :data:`RECENT` seconds, the others over those. Its name (and with it
    its queue), its state and its times are drawn from the database's
    random numbers (PostgreSQL's seeded: the same store every run), so
    that name, state and time are independent; the ids are random, as
    the store's are. Ended jobs started up to 2 s after they were
    performed and ran up to 30 s; cancelled ones never started; delayed
    ones are due within a week; running ones are held by a worker.
    """
    pg = kind == "postgres"
    recent = max(1, round(n * RECENT_SHARE))
    older = n - recent
    early, late = now - SPAN, now - RECENT
    step_old = (SPAN - RECENT) / max(older, 1)
    step_new = RECENT / recent
    t = (
        f"CASE WHEN i < {older} THEN {float_sql(kind, early)} + i * {float_sql(kind, step_old)}"
        f" ELSE {float_sql(kind, late)} + (i - {older}) * {float_sql(kind, step_new)} END"
    )
    rnd = "CAST(floor(random() * 10000) AS integer)" if pg else "abs(random() % 10000)"
    job_id = "md5(random()::text || i::text)" if pg else "lower(hex(randomblob(16)))"
    seq = (
        f"SELECT generate_series(0, {n - 1})"
        if pg
        else f"SELECT 0 UNION ALL SELECT i + 1 FROM seq WHERE i < {n - 1}"
    )
    state_cases, bound = [], 0
    for state, share in STATES:
        bound += share
        state_cases.append(f"WHEN us < {bound} THEN '{state}'")
    state = (
        f"CASE WHEN t > {float_sql(kind, now - RUNNING_FOR)} THEN 'running'"
        f" WHEN t > {float_sql(kind, now - WAITING_FOR)} THEN 'queued' "
        + " ".join(state_cases[:-1])
        + f" ELSE '{STATES[-1][0]}' END"
    )
    name_cases, queue_cases, bound = [], [], 0
    for name, queue, share in NAMES[:-1]:
        bound += share
        name_cases.append(f"WHEN un < {bound} THEN '{name}'")
        queue_cases.append(f"WHEN un < {bound} THEN '{queue}'")
    last_name, last_queue, _ = NAMES[-1]
    values = {
        "name": f"CASE {' '.join(name_cases)} ELSE '{last_name}' END",
        "queue": f"CASE {' '.join(queue_cases)} ELSE '{last_queue}' END",
        "true": "true" if pg else "1",
        "false": "false" if pg else "0",
        "now": float_sql(kind, now),
        "error": quote(ERROR),
        "traceback": quote(TRACEBACK),
        "errors": quote(json.dumps([ERROR, ERROR])),
    }
    names = ", ".join(column for column, _ in COLUMNS)
    exprs = ",\n               ".join(expr.format(**values) for _, expr in COLUMNS)
    return f"""
        WITH RECURSIVE seq(i) AS ({seq}),
        r AS MATERIALIZED (
            SELECT i, {job_id} AS id, {t} AS t,
                   {rnd} AS un, {rnd} AS us, {rnd} AS ux, {rnd} AS up
            FROM seq
        ),
        s AS (SELECT r.*, {state} AS state FROM r)
        INSERT INTO {table} ({names})
        SELECT {exprs}
        FROM s"""


# -- the databases ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Target:
    """One database the benchmark fills: its store's URL, and the driver's
    address for the raw baseline (asyncpg's DSN, or SQLite's file)."""

    kind: str
    url: str
    dsn: str
    prefix: str

    @property
    def table(self) -> str:
        return f"{self.prefix}jobs"


@dataclasses.dataclass
class Filled:
    """What the fill made, and what it took."""

    now: float  # the clock the jobs' times were drawn from
    insert_s: float
    analyze_s: float
    table_bytes: int
    index_bytes: int
    states: dict[str, int]
    ended_last_hour: int
    cursors: list[str]  # ids of jobs from the middle of the listing
    some_ids: list[str]  # ids of jobs drawn at random


class Raw(Protocol):
    """The raw baseline: a driver connection of its own."""

    async def rows(self, sql: str, params: Sequence[Any]) -> list[Any]: ...

    async def close(self) -> None: ...


class RawPostgres:
    """asyncpg, as SQLAlchemy's asyncpg dialect drives it: every statement
    prepared, and cached on the connection."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    @classmethod
    async def connect(cls, dsn: str) -> RawPostgres:
        return cls(await asyncpg.connect(dsn))

    async def rows(self, sql: str, params: Sequence[Any]) -> list[Any]:
        return list(await self.conn.fetch(sql, *params))

    async def close(self) -> None:
        await self.conn.close()


class RawSqlite:
    """aiosqlite with the store's pragmas: the thread hop per statement
    that the store pays too, and nothing else."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self.conn = conn

    @classmethod
    async def connect(cls, path: str) -> RawSqlite:
        return cls(await sqlite_connect(path))

    async def rows(self, sql: str, params: Sequence[Any]) -> list[Any]:
        async with self.conn.execute(sql, tuple(params)) as cursor:
            return list(await cursor.fetchall())

    async def close(self) -> None:
        await self.conn.close()


async def raw_connect(target: Target) -> Raw:
    if target.kind == "postgres":
        return await RawPostgres.connect(target.dsn)
    return await RawSqlite.connect(target.dsn)


def targets(kinds: Sequence[str], pg: str, directory: Path, prefix: str) -> list[Target]:
    """Where each database's store lives: PostgreSQL's under ``prefix`` in
    the database borrowed, SQLite's in a file of ``directory``."""
    found = []
    for kind in kinds:
        if kind == "postgres":
            dsn = make_url(pg).set(drivername="postgresql").render_as_string(hide_password=False)
            found.append(Target(kind, pg, dsn, prefix))
        else:
            path = directory / "jobs.db"
            found.append(Target(kind, f"sqlite+aiosqlite:///{path}", str(path), prefix))
    return found


async def create_schema(target: Target) -> None:
    """The store's tables, indexes and triggers, as a first ``SQLStore`` makes them."""
    store = SQLStore(target.url, table_prefix=target.prefix)
    await store.open()
    await store.close()


async def fill(target: Target, n: int, analyze: bool) -> Filled:
    """Create the schema and write ``n`` jobs (see :func:`fill_sql`); then
    leave the database as a store in use would be: on PostgreSQL vacuumed
    and analyzed, as autovacuum would have it, and checkpointed, so that
    the writing-back of the fill does not share the disk with the reads
    timed next; on SQLite analyzed (unless ``analyze`` is false) and its
    log checkpointed into the file. The notification triggers are off
    while PostgreSQL is filled: they would announce a million jobs to
    nobody."""
    await create_schema(target)
    now = time.time()
    sql = fill_sql(target.kind, target.table, n, now)
    table = target.table
    if target.kind == "postgres":
        conn = await asyncpg.connect(target.dsn)
        try:
            began = time.perf_counter()
            await conn.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
            await conn.execute("SELECT setseed(0.42)")
            await conn.execute(sql)
            await conn.execute(f"ALTER TABLE {table} ENABLE TRIGGER USER")
            inserted = time.perf_counter()
            await conn.execute(f"VACUUM (ANALYZE) {table}")
            await conn.execute("CHECKPOINT")
            analyzed = time.perf_counter()
            sizes = await conn.fetchrow(
                "SELECT pg_table_size($1::regclass), pg_indexes_size($1::regclass)", table
            )
            table_bytes, index_bytes = int(sizes[0]), int(sizes[1])
        finally:
            await conn.close()
    else:

        def write() -> tuple[float, float]:
            db = sqlite3.connect(target.dsn, isolation_level=None, timeout=30.0)
            try:
                db.execute("PRAGMA cache_size = -262144")  # 256 MB: the fill's indexes
                began = time.perf_counter()
                db.execute(sql)
                inserted = time.perf_counter()
                if analyze:
                    db.execute("ANALYZE")
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                return inserted - began, time.perf_counter() - inserted
            finally:
                db.close()

        insert_s, analyze_s = await asyncio.to_thread(write)
        began, inserted, analyzed = 0.0, insert_s, insert_s + analyze_s
        table_bytes, index_bytes = await asyncio.to_thread(sqlite_sizes, target)
    raw = await raw_connect(target)
    try:
        counted = await raw.rows(f"SELECT state, count(*) FROM {table} GROUP BY state", ())
        ended = await raw.rows(
            f"SELECT count(*) FROM {table} WHERE finished_at >= {float_sql(target.kind, now)}"
            " - 3600",
            (),
        )
        middle = max(0, n // 2 - 1)
        step = max(1, n // 4000)
        # The jobs at the middle of the listing and a little past it, a few apart.
        cursors = await raw.rows(
            f"SELECT id FROM (SELECT id, row_number() OVER"
            f" (ORDER BY enqueued_at DESC, id DESC) AS pos FROM {table}) AS listed"
            f" WHERE pos > {middle} AND pos <= {middle + step * 1000}"
            f" AND (pos - {middle} - 1) % {step} = 0 ORDER BY pos",
            (),
        )
        some = await raw.rows(f"SELECT id FROM {table} ORDER BY random() LIMIT 1000", ())
    finally:
        await raw.close()
    return Filled(
        now=now,
        insert_s=inserted - began,
        analyze_s=analyzed - inserted,
        table_bytes=table_bytes,
        index_bytes=index_bytes,
        states={str(state): int(count) for state, count in counted},
        ended_last_hour=int(ended[0][0]),
        cursors=[str(row[0]) for row in cursors],
        some_ids=[str(row[0]) for row in some],
    )


def sqlite_sizes(target: Target) -> tuple[int, int]:
    """The jobs table's bytes and its indexes' (``dbstat`` if this SQLite
    has it; else the whole file, as the table's)."""
    db = sqlite3.connect(target.dsn)
    try:
        rows = db.execute(
            "SELECT name, sum(pgsize) FROM dbstat WHERE name LIKE ? GROUP BY name",
            (f"{target.prefix}jobs%",),
        ).fetchall()
    except sqlite3.Error:
        return os.path.getsize(target.dsn), 0
    finally:
        db.close()
    table = sum(int(size) for name, size in rows if name == target.table)
    return table, sum(int(size) for _, size in rows) - table


# -- the calls of the page --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Line:
    """One call the page makes, and what varies from one sample to the next."""

    key: str
    label: str
    #: The arguments of the samples: a JobQuery (the list), a job id
    #: (a job's page), or None (the overview).
    args: Callable[[Filled, int], list[Hashable]]


def query(**kwargs: Any) -> JobQuery:
    """A query as the page makes it: a page of 50, and one more job."""
    return JobQuery(**{"limit": PAGE + 1, **kwargs})


def same(**kwargs: Any) -> Callable[[Filled, int], list[Hashable]]:
    """The same query every time: the first page, as the page loads it."""
    return lambda filled, count: [query(**kwargs)] * count


def deep(**kwargs: Any) -> Callable[[Filled, int], list[Hashable]]:
    """A page from the middle of the listing, a different cursor each time."""
    return lambda filled, count: [
        query(before=filled.cursors[k % len(filled.cursors)], **kwargs) for k in range(count)
    ]


def hours_a_week_ago(filled: Filled, count: int) -> list[Hashable]:
    """An hour's jobs, from about a week ago (within 12 hours of it)."""
    draw = random.Random(11)
    found: list[Hashable] = []
    for _ in range(count):
        since = filled.now - 7 * 86_400 + draw.uniform(-43_200, 43_200)
        found.append(query(since=since, until=since + 3_600))
    return found


def last_day(**kwargs: Any) -> Callable[[Filled, int], list[Hashable]]:
    """The first page of the jobs performed over the last day: the bound
    the page offers already (``since``)."""
    return lambda filled, count: [query(since=filled.now - 86_400, **kwargs)] * count


FAILED = frozenset({JobState.failed})
CANCELLED = frozenset({JobState.cancelled})


LINES = (
    Line("newest", "newest page, no filter", same()),
    Line("deep", "page at the middle (from the {middle:,}th job)", deep()),
    Line("big", f"newest page of {BIG_PAGE}", same(limit=BIG_PAGE + 1)),
    Line("failed", "state=failed (3 %)", same(states=FAILED)),
    Line("failed_deep", "state=failed, from the middle", deep(states=FAILED)),
    Line(
        "queued", "state=queued (10 %: queued + delayed)", same(states=frozenset({JobState.queued}))
    ),
    Line("name", f"name={COMMON_NAME} (6 %)", same(name=COMMON_NAME)),
    Line("name_rare", f"name={RARE_NAME} (0.1 %)", same(name=RARE_NAME)),
    Line("queue", f"queue={SOME_QUEUE} (13 %)", same(queue=SOME_QUEUE)),
    Line(
        "name_state",
        f"name={COMMON_NAME}, state=failed (0.2 %)",
        same(name=COMMON_NAME, states=FAILED),
    ),
    Line("range", "since/until: one hour, a week ago", hours_a_week_ago),
    Line(
        "rare",
        f"name={RARE_NAME}, state=cancelled (5 per million)",
        same(name=RARE_NAME, states=CANCELLED),
    ),
    Line(
        "rare_day",
        "the same, since a day ago",
        last_day(name=RARE_NAME, states=CANCELLED),
    ),
    Line("overview", "overview()", lambda filled, count: [None] * count),
    Line(
        "get",
        "get(id)",
        lambda filled, count: [filled.some_ids[k % len(filled.some_ids)] for k in range(count)],
    ),
)


def label_of(line: Line, rows: int) -> str:
    """A line's label, with the position of the middle of ``rows`` jobs."""
    return line.label.format(middle=rows // 2)


async def call(store: SQLStore, arg: Hashable) -> int:
    """One call of the page's; how many jobs it returned."""
    if arg is None:
        await store.overview()
        return 0
    if isinstance(arg, str):
        return 0 if await store.get(arg) is None else 1
    assert isinstance(arg, JobQuery)
    return len((await store.list_page(arg)).jobs)


# -- measuring --------------------------------------------------------------------------

Statement = tuple[str, tuple[Any, ...]]


class Catcher:
    """The statements a store sends, as its driver receives them."""

    def __init__(self) -> None:
        self.caught: list[Statement] = []

    def __call__(
        self,
        conn: Any,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> None:
        self.caught.append((statement, tuple(parameters or ())))


async def caught(store: SQLStore, arg: Hashable) -> tuple[list[Statement], float, int]:
    """The statements a call sends, how long it took, how many jobs it returned."""
    catcher = Catcher()
    engine = store.db.engine
    event.listen(engine, "before_cursor_execute", catcher)
    try:
        began = time.perf_counter()
        found = await call(store, arg)
        took = time.perf_counter() - began
    finally:
        event.remove(engine, "before_cursor_execute", catcher)
    return catcher.caught, took, found


async def replay(raw: Raw, statements: list[Statement]) -> list[int]:
    """The statements again, straight through the driver: each one's rows
    (a short page of a filtered listing sends one more, for where it
    stopped looking)."""
    return [len(await raw.rows(sql, params)) for sql, params in statements]


@dataclasses.dataclass
class Timed:
    """One line's samples in one repetition, in seconds."""

    store: list[float]
    raw: list[float]
    rows: list[int]


async def measure_line(
    store: SQLStore, raw: Raw, line: Line, filled: Filled, sizes: Sizes
) -> Timed:
    """Warm the line up while catching its statements; then time the store's
    call and the raw replay of its statements, one after the other, the
    order switched at every sample so that neither always finds the
    other's pages in the cache. A slow line gets fewer samples."""
    args = line.args(filled, sizes.samples)
    statements: dict[Hashable, list[Statement]] = {}
    first, _, _ = await caught(store, args[0])
    statements[args[0]] = first
    began = time.perf_counter()
    await call(store, args[0])
    await replay(raw, first)
    one = time.perf_counter() - began
    count = min(len(args), max(MIN_SAMPLES, int(sizes.budget / max(one, 1e-9))))
    args = args[:count]
    for arg in args:
        if arg not in statements:
            statements[arg] = (await caught(store, arg))[0]
    timed = Timed([], [], [])
    clock = time.perf_counter
    for k, arg in enumerate(args):
        sent = statements[arg]
        if k % 2:
            began = clock()
            raw_rows = await replay(raw, sent)
            middle = clock()
            rows = await call(store, arg)
            ended = clock()
            timed.raw.append(middle - began)
            timed.store.append(ended - middle)
        else:
            began = clock()
            rows = await call(store, arg)
            middle = clock()
            raw_rows = await replay(raw, sent)
            ended = clock()
            timed.store.append(middle - began)
            timed.raw.append(ended - middle)
        if arg is not None and rows not in raw_rows:
            raise AssertionError(f"{line.key}: the store returned {rows} jobs, raw {raw_rows}")
        timed.rows.append(rows)
    return timed


async def repetition(
    target: Target, filled: Filled, sizes: Sizes, keys: Sequence[str]
) -> dict[str, Timed]:
    """Every line once, on a store opened for it and a raw connection."""
    store = SQLStore(target.url, table_prefix=target.prefix)
    await store.open()
    raw = await raw_connect(target)
    found: dict[str, Timed] = {}
    try:
        for line in LINES:
            if line.key not in keys:
                continue
            gc.collect()
            timed = await measure_line(store, raw, line, filled, sizes)
            found[line.key] = timed
            progress(
                f"{target.kind:<8} {line.key:<12} n={len(timed.store):<4}"
                f" asyncjob p50 {ms(statistics.median(timed.store)):8.2f} ms"
                f" p99 {ms(percentile(timed.store, 0.99)):8.2f} ms"
                f"   raw p50 {ms(statistics.median(timed.raw)):8.2f} ms"
            )
    finally:
        await raw.close()
        await store.close()
    return found


def ms(seconds: float) -> float:
    return seconds * 1000.0


# -- the plans --------------------------------------------------------------------------


def short(sql: str) -> str:
    """A statement, its long select list shortened for reading."""
    sql = re.sub(r"^SELECT ([^\n]*,){10,}[^\n]*\nFROM", "SELECT <every column>\nFROM", sql)
    return sql.strip()


#: Of a call's statements, the plans shown: the slowest, this many at most,
#: and only those that take this share of the call's time or more.
PLANS_SHOWN = 3
PLAN_SHARE = 0.1


async def explain(target: Target, filled: Filled, line: Line, n: int) -> str:
    """How a line's first call spends its time: each statement it sends,
    timed through the driver, and the plans of the slowest."""
    store = SQLStore(target.url, table_prefix=target.prefix)
    await store.open()
    raw = await raw_connect(target)
    try:
        arg = line.args(filled, 1)[0]
        await caught(store, arg)
        statements, took, _ = await caught(store, arg)  # warm, as timed
        timed: list[tuple[float, str, tuple[Any, ...]]] = []
        for sql, params in statements:
            await raw.rows(sql, params)
            began = time.perf_counter()
            await raw.rows(sql, params)
            timed.append((time.perf_counter() - began, sql, params))
        total = sum(t for t, _, _ in timed)
        parts = [
            f"{target.kind}: {label_of(line, n)}: {ms(took):.1f} ms through the store;"
            f" {len(statements)} statement(s), {ms(total):.1f} ms through the driver:\n"
            + "\n".join(f"  {ms(t):8.2f} ms  {one_line(sql)}" for t, sql, _ in timed)
        ]
        slowest = sorted(timed, key=lambda item: -item[0])[:PLANS_SHOWN]
        for t, sql, params in slowest:
            if t < PLAN_SHARE * total:
                break
            if isinstance(raw, RawPostgres):
                text = await postgres_plans(raw.conn, sql, params)
            else:
                plan = await raw.rows(f"EXPLAIN QUERY PLAN {sql}", params)
                text = "\n".join(str(row[3]) for row in plan)
            shown = ", ".join(repr(p) for p in params)
            parts.append(f"{short(sql)}\n-- parameters: {shown}\n{text}")
    finally:
        await raw.close()
        await store.close()
    return "\n\n".join(parts)


#: PostgreSQL plans a prepared statement for its values 5 times; then it
#: may keep a generic plan, made for any values, if that one seems no
#: dearer. Both drivers here prepare every statement, so a call that
#: runs often runs its generic plan: it is the one to look at.
CUSTOM_PLANS = 5


async def postgres_plans(conn: Any, sql: str, params: tuple[Any, ...]) -> str:
    """``EXPLAIN (ANALYZE, BUFFERS)`` of a statement as planned for its
    values, and, if the driver's prepared statement went over to a generic
    plan, of that one too (made by ``PREPARE`` and ``plan_cache_mode =
    force_generic_plan``)."""
    for _ in range(CUSTOM_PLANS + 1):
        await conn.fetch(sql, *params)
    used = await conn.fetchrow(
        "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement = $1",
        sql,
    )
    custom = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", *params)
    text = "planned for these values:\n" + "\n".join(str(row[0]) for row in custom)
    if used is None or not used["generic_plans"]:
        return text
    await conn.execute(f"PREPARE listing_plan AS {sql}")
    try:
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        values = ", ".join(literal(p) for p in params)
        generic = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) EXECUTE listing_plan({values})")
    finally:
        await conn.execute("RESET plan_cache_mode")
        await conn.execute("DEALLOCATE listing_plan")
    return (
        f"the generic plan, which the driver's prepared statement ran"
        f" ({used['generic_plans']} generic, {used['custom_plans']} custom plans so far):\n"
        + "\n".join(str(row[0]) for row in generic)
        + f"\n\n{text}"
    )


def literal(value: Any) -> str:
    """A parameter's value as SQL text, for ``EXECUTE``."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return quote(str(value))


def one_line(sql: str, width: int = 110) -> str:
    """A statement on one line, cut to ``width``."""
    flat = " ".join(short(sql).split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


# -- the report -------------------------------------------------------------------------


def versions(pg: str, kinds: Sequence[str]) -> dict[str, str]:
    found = {name: importlib.metadata.version(dist) for name, dist in LIBRARIES}
    found["sqlite"] = sqlite3.sqlite_version
    if "postgres" in kinds:
        dsn = make_url(pg).set(drivername="postgresql").render_as_string(hide_password=False)

        async def server() -> str:
            conn = await asyncpg.connect(dsn)
            try:
                return str(await conn.fetchval("SHOW server_version")).split()[0]
            finally:
                await conn.close()

        found["postgresql"] = asyncio.run(server())
    return found


def summary(kind: str, n: int, filled: Filled, analyze: bool) -> str:
    """What was filled, as measured after the fill: the mix is checked, not assumed."""
    states = ", ".join(
        f"{state} {count / n:.1%}"
        for state, count in sorted(filled.states.items(), key=lambda item: -item[1])
    )
    stats = (
        "VACUUM (ANALYZE)"
        if kind == "postgres"
        else ("ANALYZE" if analyze else "no ANALYZE (as the store leaves it)")
    )
    return (
        f"{kind}: {n:,} jobs written in {filled.insert_s:.1f} s"
        f" ({n / filled.insert_s:,.0f} rows/s), then {stats} in {filled.analyze_s:.1f} s;"
        f" table {filled.table_bytes / 2**20:,.0f} MB,"
        f" indexes {filled.index_bytes / 2**20:,.0f} MB\n"
        f"  states: {states}; {filled.ended_last_hour:,} ended in the hour before the fill"
    )


@dataclasses.dataclass
class Figures:
    """A line's medians over the repetitions (ms), and its verdict."""

    p50: float
    p99: float
    raw_p50: float
    raw_p99: float
    samples: int
    rows: float

    @property
    def passes(self) -> bool:
        return self.p99 <= TARGET_MS


def figures(reps: list[Timed]) -> Figures:
    """Medians over the repetitions: one noisy repetition moves nothing."""

    def over(pick: Callable[[Timed], float]) -> float:
        return statistics.median(pick(t) for t in reps)

    return Figures(
        p50=over(lambda t: ms(statistics.median(t.store))),
        p99=over(lambda t: ms(percentile(t.store, 0.99))),
        raw_p50=over(lambda t: ms(statistics.median(t.raw))),
        raw_p99=over(lambda t: ms(percentile(t.raw, 0.99))),
        samples=int(over(lambda t: len(t.store))),
        rows=over(lambda t: statistics.median(t.rows)),
    )


def fmt_ms(value: float) -> str:
    return f"{value:.2f} ms" if value < 100 else f"{value:,.0f} ms"


def table(kind: str, n: int, found: dict[str, Figures], markdown: bool) -> str:
    rows: list[tuple[str, ...]] = [
        (
            "call",
            "jobs",
            "n",
            "asyncjob p50",
            "p99",
            "raw p50",
            "raw p99",
            "ratio p50",
            f"p99 <= {TARGET_MS:g} ms",
        )
    ]
    for line in LINES:
        f = found.get(line.key)
        if f is None:
            continue
        rows.append(
            (
                label_of(line, n),
                "-" if line.key == "overview" else f"{f.rows:g}",
                str(f.samples),
                fmt_ms(f.p50),
                fmt_ms(f.p99),
                fmt_ms(f.raw_p50),
                fmt_ms(f.raw_p99),
                f"{f.p50 / f.raw_p50:.2f}x",
                "PASS" if f.passes else "MISS",
            )
        )
    return f"{kind}:\n\n" + render(rows, "<>>>>>>><", markdown)


def header(sizes: Sizes, digest: str, found: dict[str, str], analyze: bool) -> str:
    libraries = ", ".join(f"{k} {v}" for k, v in found.items() if k != "asyncjob")
    return (
        f"asyncjob {found['asyncjob']} (sources {digest}) the jobs page at {sizes.rows:,} jobs:"
        f" Python {platform.python_version()}, {os.cpu_count()} CPU(s),"
        f" medians of {sizes.repeat} repetition(s)\n"
        f"{libraries}\n"
        f"up to {sizes.samples} samples per call and repetition (fewer for slow calls: n);"
        f" pages of {PAGE} (+1, as the page asks); p50 and p99 per repetition, medians shown;"
        " raw = the same statements through the driver; ratio = asyncjob / raw"
    )


def write_json(
    path: Path,
    sizes: Sizes,
    digest: str,
    found: dict[str, str],
    fills: dict[str, Filled],
    samples: dict[str, dict[str, list[Timed]]],
    medians: dict[str, dict[str, Figures]],
) -> None:
    doc = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "sources": digest,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "versions": found,
        "sizes": dataclasses.asdict(sizes),
        "target_ms": TARGET_MS,
        "fills": {
            kind: {
                k: v for k, v in dataclasses.asdict(f).items() if k not in ("cursors", "some_ids")
            }
            for kind, f in fills.items()
        },
        "lines": {
            kind: {
                key: {
                    "label": label_of(next(x for x in LINES if x.key == key), sizes.rows),
                    **dataclasses.asdict(medians[kind][key]),
                    "verdict": "PASS" if medians[kind][key].passes else "MISS",
                    "repetitions": [dataclasses.asdict(t) for t in reps],
                }
                for key, reps in lines.items()
            }
            for kind, lines in samples.items()
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")


# -- the command line -------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--quick", action="store_true",
        help="100,000 jobs, 50 samples per call, 1 repetition: a smoke run",
    )  # fmt: skip
    parser.add_argument("--rows", type=int, help="jobs in the store (default 1,000,000)")
    parser.add_argument("--repeat", type=int, help="repetitions (default 3, or 1 with --quick)")
    parser.add_argument("--only", choices=KINDS, help="one kind of database only")
    parser.add_argument(
        "--lines", metavar="KEYS",
        help="only these calls, comma-separated: " + ", ".join(x.key for x in LINES),
    )  # fmt: skip
    parser.add_argument(
        "--pg", default=DEFAULT_PG, metavar="URL",
        help="the PostgreSQL database to borrow (its tables get a prefix of their own, "
        "dropped at the end); default $ASYNCJOB_BENCH_PG or "
        "postgresql+asyncpg://postgres@127.0.0.1:5432/test",
    )  # fmt: skip
    parser.add_argument(
        "--explain", action="store_true", help="print the plans of the calls that miss"
    )
    parser.add_argument(
        "--no-analyze", action="store_true",
        help="SQLite: no ANALYZE after the fill, as a store in use is",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results here")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables too")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.rows is not None:
        if args.rows < 1000:
            sys.exit("--rows must be at least 1000")
        sizes = dataclasses.replace(sizes, rows=args.rows)
    if args.repeat is not None:
        if args.repeat < 1:
            sys.exit("--repeat must be at least 1")
        sizes = dataclasses.replace(sizes, repeat=args.repeat)
    keys = [x.key for x in LINES]
    if args.lines:
        wanted = args.lines.split(",")
        unknown = set(wanted) - set(keys)
        if unknown:
            sys.exit(f"--lines: unknown {', '.join(sorted(unknown))}")
        keys = wanted
    kinds = (args.only,) if args.only else KINDS
    prefix = new_prefix()
    directory = Path(tempfile.mkdtemp(prefix="asyncjob-listing-"))
    try:
        return run_benchmark(sizes, kinds, keys, targets(kinds, args.pg, directory, prefix), args)
    finally:
        if "postgres" in kinds:
            asyncio.run(drop_store_tables(args.pg, prefix))
        shutil.rmtree(directory, ignore_errors=True)


def run_benchmark(
    sizes: Sizes,
    kinds: Sequence[str],
    keys: Sequence[str],
    where: list[Target],
    args: argparse.Namespace,
) -> int:
    digest = source_digest()
    found = versions(args.pg, kinds)
    load_before = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    analyze = not args.no_analyze
    fills: dict[str, Filled] = {}
    for target in where:
        progress(f"{target.kind}: writing {sizes.rows:,} jobs ...")
        fills[target.kind] = asyncio.run(fill(target, sizes.rows, analyze))
        progress(summary(target.kind, sizes.rows, fills[target.kind], analyze))
    samples: dict[str, dict[str, list[Timed]]] = {t.kind: {} for t in where}
    for i in range(sizes.repeat):
        progress(f"repetition {i + 1}/{sizes.repeat} ...")
        for target in where if i % 2 == 0 else where[::-1]:
            reps = asyncio.run(repetition(target, fills[target.kind], sizes, keys))
            for key, timed in reps.items():
                samples[target.kind].setdefault(key, []).append(timed)
    medians = {
        kind: {key: figures(reps) for key, reps in lines.items()} for kind, lines in samples.items()
    }
    parts = [header(sizes, digest, found, analyze)]
    parts += [summary(t.kind, sizes.rows, fills[t.kind], analyze) for t in where]
    for markdown in (False, True) if args.markdown else (False,):
        parts += [table(kind, sizes.rows, medians[kind], markdown) for kind in kinds]
    if args.explain:
        for target in where:
            for line in LINES:
                f = medians[target.kind].get(line.key)
                if f is not None and not f.passes:
                    progress(f"{target.kind}: the plans of {line.key} ...")
                    parts.append(asyncio.run(explain(target, fills[target.kind], line, sizes.rows)))
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    parts.append(f"load average at the start: {load_before}; at the end: {load}")
    if source_digest() != digest:
        parts.append(
            "WARNING: the asyncjob sources changed during the run (what was measured is"
            f" what was imported at the start: sources {digest})"
        )
    print(*parts, sep="\n\n")
    if args.json is not None:
        write_json(args.json, sizes, digest, found, fills, samples, medians)
    return 0


if __name__ == "__main__":
    sys.exit(main())
