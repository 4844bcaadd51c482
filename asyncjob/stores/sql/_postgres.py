"""PostgreSQL: everything the SQL store does differently there.

- The frequent writes (performs, claims, ends, progress) go straight to
  asyncpg, on connections the store holds open (:class:`DirectConnection`):
  through SQLAlchemy's pool and execution each would cost about four times
  a bare round trip (a checkout, an isolation level set and reset, events,
  a result). A batch of performs or ends travels as one JSON text,
  unpacked by ``json_to_recordset()`` on the server (asyncpg checks each
  item of an array against abstract base classes: thirteen arrays cost a
  perform a quarter of its producer's time), other batches as one array per
  column, unpacked by ``unnest()``: one round trip and one execution of
  the statement (and of its triggers) whatever the batch's size, and one
  prepared statement for every size. Performs
  and ends go on one connection, durable, which plans without sequential
  scans (:data:`WRITES`); claims and progress on another, which commits
  without waiting for the disk.
- Workers claiming at once skip each other's rows (``FOR UPDATE SKIP
  LOCKED``).
- Triggers announce changes at commit (``NOTIFY``), and a connection of
  its own listens (:class:`PostgresListener`): workers and watchers in
  every process are woken at once, whoever wrote.
- The engine's pool never hands out a connection the server has closed.

Errors come out as SQLAlchemy's, as from the rest of the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from sqlalchemy import Connection, Table, event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DatabaseError, DisconnectionError, IntegrityError, OperationalError

from asyncjob._core.log import logger
from asyncjob._core.models import Claimed, JobState
from asyncjob.stores.kit import Report

from ._dialect import (
    NEW_COLUMNS,
    Dialect,
    Ending,
    Listener,
    WriteLock,
    by_claim_order,
    ending_sql,
    new_job_sql,
    unique_insert_sql,
)
from ._schema import HOLDS_KEY, SCHEDULED

__all__ = ("DirectConnection", "PostgresDialect", "PostgresListener", "asyncpg_args")

_RUNNING = JobState.running.value

#: The changes of the jobs table that its triggers announce, each through
#: a function of its own (:func:`trigger_function`).
ANNOUNCED_CHANGES = ("insert", "update")


def trigger_function(jobs: str, change: str) -> str:
    """The name of the function, and of the trigger, that announces
    ``change`` (one of :data:`ANNOUNCED_CHANGES`) of the table ``jobs``:
    what a store leaves behind besides its tables."""
    return f"{jobs}_notify_{change}"


#: Any number, the same in every process: the schema's advisory lock.
_LOCK_KEY = 0x61737963  # "asyc"

#: Job ids per notification: 32 characters and a comma each, well within
#: the 8,000 bytes a payload may hold.
IDS_PER_NOTIFICATION = 200

#: Seconds between two tries to listen again after the connection was lost.
RECONNECT_AFTER = 1.0
#: Seconds the first listen() waits for the connection, at most.
CONNECT_WAIT = 5.0


class PostgresDialect(Dialect):
    """The SQL store on PostgreSQL, through asyncpg."""

    name = "postgresql"
    now_sql = "CAST(EXTRACT(EPOCH FROM statement_timestamp()) AS float8)"
    minute_sql = "CAST(floor({column} / 60) AS bigint)"
    # The rows are found again by their physical address, which their lock
    # keeps from changing until the statement updates them: no second
    # look-up by the primary key.
    address = "ctid"
    lock_rows = " FOR UPDATE SKIP LOCKED"
    promote_in_claim = True
    autocommit_options: ClassVar[dict[str, Any]] = {"isolation_level": "AUTOCOMMIT"}

    def __init__(self, url: str, tables: Any, owner: str) -> None:
        super().__init__(url, tables, owner)
        self._durable: DirectConnection | None = None
        self._relaxed: DirectConnection | None = None
        jobs = tables.jobs.name
        now = self.now_sql
        # Each of these is sent again if its connection turns out dead (see
        # DirectConnection.fetch): an end that was committed first finds its
        # job no longer running; an insert is sent again as one for which
        # rows committed first are conflicts, and do nothing (the first try
        # skips that check, a fifth of an insert's cost).
        leased, state, due = new_job_sql(now, "v.registered", "$2", "v.at", "v.delay")
        self._insert = f"""
            INSERT INTO {jobs} ({NEW_COLUMNS})
            SELECT v.id, v.name, v.registered, v.owner, v.owner, {leased}, {state},
                   v.args, v.kwargs, 0, v.enqueued_at, {due}, v.queue, v.priority, v.unique_key,
                   v.trace
            FROM json_to_recordset($1::json)
                 AS v(id varchar, name varchar, registered boolean, owner varchar, args text,
                      kwargs text, enqueued_at float8, queue varchar, priority int,
                      unique_key varchar, at float8, delay float8, trace text)
            """
        self._insert_again = f"{self._insert} ON CONFLICT (id) DO NOTHING"
        # With unique keys: a key held, nothing; sent again, an id taken
        # (by the first try) is nothing too, and the look-up of the key's
        # holder finds the job itself.
        self._insert_unique = unique_insert_sql(self._insert)
        self._insert_unique_again = f"{self._insert} ON CONFLICT DO NOTHING RETURNING id"
        self._holders = f"""SELECT unique_key, id FROM {jobs}
                            WHERE unique_key = ANY($1::varchar[]) AND {HOLDS_KEY}"""
        # The limits' locks: one per name, taken in the order of the names
        # by every worker, so that none waits for another in a circle.
        self._lock_limits = """
            SELECT count(pg_advisory_xact_lock(hashtext($1), hashtext(n)))
            FROM unnest($2::varchar[]) AS n
            """
        ending = ending_sql("j.cancel_requested", "v.state", "v.result", "v.error", "v.traceback")
        self._finish = f"""
            UPDATE {jobs} AS j
            SET {ending},
                finished_at = v.finished_at, lease_expires_at = NULL,
                progress = CASE WHEN v.reported THEN v.progress ELSE j.progress END,
                data = CASE WHEN v.reported THEN v.data ELSE j.data END
            FROM (  -- each end an Ending, as JSON writes a tuple: an array
                SELECT e->>0 AS id, e->>1 AS state, e->>2 AS result, e->>3 AS error,
                       e->>4 AS traceback, (e->>5)::float8 AS finished_at,
                       json_typeof(e->6) = 'array' AS reported,
                       (e->6->>0)::float8 AS progress, e->6->>1 AS data, (e->>7)::int AS attempt
                FROM json_array_elements($1::json) AS e
            ) AS v
            -- A job whose lease ran out and that another worker took
            -- meanwhile is that worker's to finish; a later attempt of it,
            -- even here, is that attempt's.
            WHERE j.id = v.id AND j.state = '{_RUNNING}' AND j.locked_by = $2
              AND (v.attempt IS NULL OR j.attempts = v.attempt)
            RETURNING j.id, j.state
            """
        self._progress = f"""
            UPDATE {jobs} AS j SET progress = v.progress, data = v.data
            FROM unnest($1::varchar[], $2::float8[], $3::text[]) AS v(id, progress, data)
            WHERE j.id = v.id AND j.state = '{_RUNNING}'
            """

    def chosen_sql(self, addresses: str) -> str:
        return f"ctid = ANY(ARRAY({addresses}))"

    def mark(self, n: int, sql_type: str) -> str:
        return f"${n}::{sql_type}"

    # -- the engine ------------------------------------------------------------

    def engine_options(self, *, durable: bool = True) -> dict[str, Any]:
        if durable:
            return {}
        return {"connect_args": {"server_settings": {"synchronous_commit": "off"}}}

    def prepare_engine(self, engine: Engine) -> None:
        """Never hand out a connection that the server has closed.

        asyncpg reads every open connection all the time, so it learns at
        once when the server closes one (a restart, ``pg_terminate_backend``):
        a connection it knows closed is replaced as the pool hands it out,
        with no round trip, unlike ``pool_pre_ping``. One that dies
        unnoticed fails its statement, which
        :meth:`Database.execute` sends again.
        """

        @event.listens_for(engine, "checkout")
        def checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
            if dbapi_connection.driver_connection.is_closed():
                raise DisconnectionError("the server closed this connection")

        broken = engine.dialect.loaded_dbapi.InternalClientError

        @event.listens_for(engine, "handle_error")
        def handle_error(context: Any) -> None:
            # Killed while idle, a connection has read the server's last
            # message and not yet its end: asyncpg then refuses to use it
            # with an "internal client error". It is as good as disconnected.
            if isinstance(context.original_exception, broken):
                context.is_disconnect = True

    # -- the schema --------------------------------------------------------------

    def lock_schema(self, conn: Connection) -> None:
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})

    def install_triggers(self, conn: Connection) -> None:
        """Changes of jobs notify, from the database itself: whoever writes
        them, watchers and workers everywhere hear of them at commit.

        Once per statement, whatever its number of rows (a batch of five
        hundred jobs ended at once sends three notifications, not five
        hundred), and only for the changes a watcher can see: a lease
        renewed notifies nobody. A cancel requested is announced on a
        channel of its own too, which the holders of jobs listen to. A
        registered job queued, or ended (its slot of a concurrency limit
        freed), is announced to the workers.
        """
        queued, changed, cancel = self.channels()
        jobs = self.tables.jobs.name
        # Schema version 1 notified once per row, from this trigger.
        conn.execute(text(f"DROP TRIGGER IF EXISTS {jobs}_notify ON {jobs}"))
        conn.execute(text(f"DROP FUNCTION IF EXISTS {jobs}_notify()"))
        per = IDS_PER_NOTIFICATION
        for change, rows in zip(
            ANNOUNCED_CHANGES,
            (
                "SELECT n.id, n.state, n.registered, false AS stop, false AS freed"
                " FROM new_rows AS n",
                "SELECT n.id, n.state, n.registered,"
                " (n.cancel_requested AND NOT o.cancel_requested) AS stop,"
                f" (o.state = '{_RUNNING}' AND n.state <> '{_RUNNING}') AS freed"
                " FROM new_rows AS n JOIN old_rows AS o ON o.id = n.id"
                " WHERE (n.state, n.progress, n.data, n.attempts, n.cancel_requested)"
                " IS DISTINCT FROM"
                " (o.state, o.progress, o.data, o.attempts, o.cancel_requested)",
            ),
            strict=True,
        ):
            function = trigger_function(jobs, change)
            conn.execute(
                text(
                    f"""
                    CREATE OR REPLACE FUNCTION {function}() RETURNS trigger AS $$
                    DECLARE
                        ids text;
                        anew boolean := false;
                        stopped text;
                    BEGIN
                        FOR ids, anew, stopped IN
                            SELECT string_agg(c.id, ','),
                                   bool_or((c.state IN ('queued', '{SCHEDULED}')
                                            OR c.freed) AND c.registered),
                                   string_agg(c.id, ',') FILTER (WHERE c.stop)
                            FROM (SELECT r.*, (row_number() OVER ()) / {per} AS part
                                  FROM ({rows}) AS r) AS c
                            GROUP BY c.part
                        LOOP
                            PERFORM pg_notify('{changed}', ids);
                            IF anew THEN
                                PERFORM pg_notify('{queued}', '');
                            END IF;
                            IF stopped IS NOT NULL THEN
                                PERFORM pg_notify('{cancel}', stopped);
                            END IF;
                        END LOOP;
                        RETURN NULL;
                    END
                    $$ LANGUAGE plpgsql
                    """
                )
            )
            old = " OLD TABLE AS old_rows" if change == "update" else ""
            conn.execute(text(f"DROP TRIGGER IF EXISTS {function} ON {jobs}"))
            conn.execute(
                text(
                    f"CREATE TRIGGER {function} AFTER {change.upper()} ON {jobs}"
                    f" REFERENCING{old} NEW TABLE AS new_rows"
                    f" FOR EACH STATEMENT EXECUTE FUNCTION {function}()"
                )
            )

    def insert_construct(self, table: Table) -> Any:
        from sqlalchemy.dialects.postgresql import insert

        return insert(table)

    # -- the frequent writes ---------------------------------------------------

    async def open(self, write_lock: WriteLock) -> None:
        self._durable = DirectConnection(self.url, settings=WRITES)
        self._relaxed = DirectConnection(self.url, settings=CLAIMS)

    async def close(self) -> None:
        for conn in (self._durable, self._relaxed):
            if conn is not None:
                await conn.close()

    @property
    def _connections(self) -> tuple[DirectConnection, DirectConnection]:
        if self._durable is None or self._relaxed is None:
            raise RuntimeError("the store is not open: a Runner opens it when it starts")
        return self._durable, self._relaxed

    async def claim(
        self,
        limit: int,
        lease: float,
        queues: frozenset[str] | None,
        limits: Mapping[str, int] | None,
    ) -> list[Claimed]:
        _, relaxed = self._connections
        claim, args = self.claim_statement(limit, lease, queues, limits)
        found: list[Any] = []
        for _ in range(2):
            if not limits:
                rows = await relaxed.fetch(claim, *args, retry=False)
            else:
                # Each worker counts a name's running jobs only once it holds
                # the name's lock, in a snapshot taken after it: a count read
                # before another worker's claim committed would let both take
                # the last place (the statement takes its snapshot as it starts).
                lock = (self._lock_limits, (self.tables.prefix, sorted(limits)))
                rows = await relaxed.fetch_in_transaction([lock, (claim, args)])
            found = [tuple(row)[:-1] for row in rows if row[0] is not None]
            if found or not rows[0][-1]:
                break
            # It moved jobs come due, and could not see them: they are
            # claimed now, not after another look at when the next is due.
        return by_claim_order(found)

    async def next_due(
        self, queues: frozenset[str] | None, limits: Mapping[str, int] | None
    ) -> float | None:
        _, relaxed = self._connections
        sql, args = self.next_due_statement(queues, limits)
        wait = (await relaxed.fetch(sql, *args))[0][0]
        return None if wait is None else max(0.0, float(wait))

    async def insert(self, rows: list[dict[str, Any]], lease: float) -> list[str]:
        durable, _ = self._connections
        columns = (json.dumps(rows), lease)
        if all(r["unique_key"] is None for r in rows):
            await durable.fetch(self._insert, *columns, retry=self._insert_again)
            return [r["id"] for r in rows]
        written = await durable.fetch(
            self._insert_unique, *columns, retry=self._insert_unique_again
        )
        inserted = {row[0] for row in written}
        keys = [r["unique_key"] for r in rows if r["id"] not in inserted]
        holders = dict(await durable.fetch(self._holders, keys)) if keys else {}
        recorded = [r["id"] if r["id"] in inserted else holders.get(r["unique_key"]) for r in rows]
        if None in recorded:
            # A key's holder ended between the insert and the look-up: the
            # key is free, and the job is recorded after all.
            freed = [r for r, job_id in zip(rows, recorded, strict=True) if job_id is None]
            again = iter(await self.insert(freed, lease))
            recorded = [next(again) if job_id is None else job_id for job_id in recorded]
        return [job_id for job_id in recorded if job_id is not None]

    async def finish(self, endings: list[Ending]) -> list[str | None]:
        durable, _ = self._connections
        # One JSON text for the batch: asyncpg's arrays check each of their
        # items against abstract base classes, ten arrays of them per end.
        # The ends as they are, arrays: an object an end, with its keys,
        # cost the worker 7 % of its CPU a job (23.0 -> 21.3 us).
        done = await durable.fetch(self._finish, json.dumps(endings), self.owner)
        ended = dict(done)
        return [ended.get(e.job_id) for e in endings]

    async def progress(self, reports: dict[str, Report]) -> None:
        _, relaxed = self._connections
        await relaxed.fetch(
            self._progress,
            list(reports),
            [value for value, _ in reports.values()],
            [data for _, data in reports.values()],
        )

    def listener(self, on_notify: Callable[[str, str], None]) -> Listener:
        return PostgresListener(self.url, on_notify)


def asyncpg_args(url: str) -> dict[str, Any]:
    """``asyncpg.connect()``'s arguments for an SQLAlchemy URL."""
    parsed = make_url(url)
    args: dict[str, Any] = parsed.translate_connect_args(username="user")
    args.update(parsed.query)
    return args


#: The session of the connection that claims, reads when the next job is
#: due and writes progress. ``synchronous_commit=off``: the server reports
#: a commit before its log reaches the disk, which saves a flush from each
#: of these writes, whose loss in a crash does no harm (a claim's job stays
#: queued; progress). No bitmap scans: a claim must read the claim index in
#: its order and stop at the jobs it takes. With statistics that say few
#: jobs are queued (a new table, or one analyzed while its queues were
#: empty, before a burst: when it matters most) the planner chose to read
#: every queued row through a bitmap and sort them, at each claim: 3.4 ms
#: instead of 0.3 with 10,000 jobs queued, measured; and more with more.
#: (Sorts stay allowed: a claim under concurrency limits ranks the few
#: hundred rows it picked, and with sorts priced out the planner chose a
#: plan that made such claims take a second.)
CLAIMS = {"synchronous_commit": "off", "enable_bitmapscan": "off"}

#: The session of the connection that performs and ends jobs, every one of
#: its statements finding its rows by a key. No sequential scans: with
#: statistics that say few jobs run (a new table, or one analyzed before a
#: burst), the planner read the whole table at each batch of ends and
#: matched every running row against every end in the batch: 2.5 s for 500
#: ends with 20,000 jobs running, instead of 23 ms through the primary key,
#: measured; and a worker whose ends fall behind that way only falls
#: further behind.
WRITES = {"enable_seqscan": "off"}


class DirectConnection:
    """One asyncpg connection, held open, for statements sent one after the
    other.

    It opens its connection when first used, and again when it is found
    dead (the server restarted, the connection was killed); a statement
    that is harmless when run twice is then sent again, once.

    Args:
        url: the store's SQLAlchemy URL (``postgresql+asyncpg://...``).
        settings: the server's settings for this connection's session
            (see :data:`CLAIMS`).
    """

    def __init__(self, url: str, *, settings: Mapping[str, str] | None = None) -> None:
        self._args = asyncpg_args(url)
        if settings:
            self._args["server_settings"] = {**self._args.get("server_settings", {}), **settings}
        self._conn: Any = None
        self._lock = asyncio.Lock()

    async def fetch(self, sql: str, *args: Any, retry: bool | str = True) -> list[Any]:
        """Run ``sql`` (its own transaction) and return its rows.

        Sent again on a new connection if the first turns out dead, unless
        ``retry`` is false: only for statements that do no harm when run
        twice, since the first may have been committed before its answer
        was lost. ``retry`` may also be the statement to send the second
        time (one made harmless to run after the first, at a cost the first
        need not pay).

        Raises:
            sqlalchemy.exc.OperationalError: the connection was lost (and
                could not be replaced, or ``retry`` is false).
            sqlalchemy.exc.IntegrityError: the statement broke a constraint.
            sqlalchemy.exc.DatabaseError: the database refused it otherwise.
        """
        async with self._lock:
            try:
                return await self._fetch(sql, args)
            except OperationalError:
                if retry is False:
                    raise
            return await self._fetch(sql if retry is True else retry, args)

    async def fetch_in_transaction(self, steps: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]:
        """Run the statements ``steps`` (each with its arguments) in one
        transaction, and return the last one's rows. Never sent again: a
        transaction lost with its connection was rolled back, or committed.

        Raises:
            as :meth:`fetch` does.
        """
        async with self._lock:
            return await self._fetch("", (), steps)

    async def close(self) -> None:
        async with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), timeout=1)

    async def _fetch(
        self,
        sql: str,
        args: Sequence[Any],
        steps: Sequence[tuple[str, Sequence[Any]]] = (),
    ) -> list[Any]:
        import asyncpg

        try:
            if self._conn is None or self._conn.is_closed():
                self._drop()
                self._conn = await asyncpg.connect(**self._args)
            rows: list[Any]
            if not steps:
                rows = await self._conn.fetch(sql, *args)
                return rows
            async with self._conn.transaction():
                for sql, args in steps:
                    rows = await self._conn.fetch(sql, *args)
            return rows
        except (
            OSError,
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            asyncpg.InternalClientError,
            ValueError,  # a value asyncpg cannot encode (text that is not UTF-8)
            OverflowError,
        ) as exc:
            if isinstance(exc.__context__, asyncio.CancelledError):
                # Cancelled mid-statement, the rollback may fail ("another
                # operation is in progress"): the task is stopping, and must
                # not take that error for a lost database.
                self._drop()
                raise exc.__context__ from None
            if _is_disconnect(exc, self._conn):
                self._drop()
                raise OperationalError(sql, args, exc, connection_invalidated=True) from exc
            if isinstance(exc, asyncpg.IntegrityConstraintViolationError):
                raise IntegrityError(sql, args, exc) from exc
            raise DatabaseError(sql, args, exc) from exc

    def _drop(self) -> None:
        """Let go of a connection that is dead, or as good as."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()


def _is_disconnect(exc: BaseException, conn: Any) -> bool:
    import asyncpg

    if conn is None or conn.is_closed():
        return True
    return isinstance(
        exc,
        OSError
        | asyncpg.InternalClientError  # killed while idle: see prepare_engine
        | asyncpg.PostgresConnectionError
        | asyncpg.exceptions.OperatorInterventionError,  # the server is going down
    )


class PostgresListener(Listener):
    """LISTEN on the channels given to :meth:`listen`, calling
    ``on_notify(channel, payload)`` on the loop.

    One connection per store, apart from the pool: workers listen on the
    channel of queued jobs from the start; a process that watches jobs, on
    the channel of changes, from its first watcher on (a worker that
    watches nothing is spared a notification per change). When the
    connection is lost (the server restarted, the connection was killed)
    it is opened again, and meanwhile the store falls back on polling.
    """

    def __init__(self, url: str, on_notify: Callable[[str, str], None]) -> None:
        self._connect_args = asyncpg_args(url)
        self._on_notify = on_notify
        self._channels: list[str] = []
        self._conn: Any = None
        self._adding = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()
        self.connections = 0

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def listen(self, channel: str) -> None:
        """Listen on ``channel`` too, from now on (and after reconnecting).

        The first call opens the connection. Returns once the server
        listens, so that no change made afterwards is missed; or, if the
        server cannot be reached within :data:`CONNECT_WAIT` seconds,
        without it (the store polls meanwhile, and the channel is listened
        on once the connection is made)."""
        async with self._adding:
            if channel not in self._channels:
                self._channels.append(channel)
                if self._task is None:
                    self._task = asyncio.get_running_loop().create_task(self._listen_forever())
                elif self._conn is not None:
                    with contextlib.suppress(Exception):  # lost meanwhile: the reconnection adds it
                        await self._conn.add_listener(channel, self._deliver)
        if self.connections == 0:  # not connected yet: the first connection is on its way
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CONNECT_WAIT):
                    await self.listening.wait()

    async def _listen_forever(self) -> None:
        """Listen, and connect again whenever the connection is lost, for as
        long as the store is open: whatever asyncpg raises, this task must
        not end, or the process would poll for good. A connection killed
        just as it was made raised ``InternalClientError`` ("cannot switch
        to state 11") from the ``LISTEN``; a server that answers nonsense
        makes ``connect`` raise anything at all (an ``AttributeError``)."""
        import asyncpg

        while True:
            lost = asyncio.Event()
            try:
                conn = await asyncpg.connect(**self._connect_args)
            except Exception as exc:  # noqa: BLE001 - see the docstring
                logger.warning("cannot listen for job changes (%r); polling meanwhile", exc)
                await asyncio.sleep(RECONNECT_AFTER)
                continue
            try:
                conn.add_termination_listener(lambda _, lost=lost: lost.set())
                async with self._adding:
                    for channel in self._channels:
                        await conn.add_listener(channel, self._deliver)
                    self._conn = conn
                self.connections += 1
                self.listening.set()
                await lost.wait()
                logger.warning("lost the connection that listens for job changes; reconnecting")
            except Exception as exc:  # noqa: BLE001 - see the docstring
                logger.warning("stopped listening for job changes (%r); reconnecting", exc)
                await asyncio.sleep(RECONNECT_AFTER)
            finally:
                self._conn = None
                self.listening.clear()
                with contextlib.suppress(Exception):
                    await conn.close(timeout=1)

    def _deliver(self, connection: Any, pid: int, channel: str, payload: str) -> None:
        self._on_notify(channel, payload)
