"""SQLite across processes: a process hears of another's commit at once,
not at its next poll. Each test sets the poll interval to a minute, longer
than any of its waits: what it sees, it saw through the wake-up. And the
writing thread's log, which those wake-ups watch: its checkpoints."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

import asyncjob
from asyncjob.stores.sql import SQLStore, _sqlite, _wakeup
from asyncjob.stores.sql._dialect import WriteLock
from asyncjob.stores.sql._schema import Tables
from asyncjob.stores.sql._sqlite import PRAGMAS, SQLiteDialect, WriterThread
from asyncjob.stores.sql._wakeup import CommitWatch

from .conftest import TIMEOUT, Database
from .processes import ROOT
from .worker_jobs import whoami

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="commits are heard of on Linux; elsewhere, polled"
)

#: Longer than every wait of these tests.
NEVER = 60.0


def write_from_another_process(path: Path, statement: str) -> None:
    """Commit ``statement`` to the database at ``path`` from another process."""
    subprocess.run(
        [sys.executable, "-c", f"import sqlite3; c = sqlite3.connect({str(path)!r}); "
         f"c.execute({statement!r}); c.commit(); c.close()"],
        check=True,
        timeout=TIMEOUT,
    )  # fmt: skip


def wal_database(tmp_path: Path, *statements: str) -> Path:
    """A database file in WAL mode, made by ``statements``."""
    path = tmp_path / "app.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        for statement in statements:
            conn.execute(statement)
        conn.commit()
    return path


@contextlib.asynccontextmanager
async def watched(
    path: Path, on_commit: Callable[[], None], quiet: float = _wakeup.QUIET
) -> AsyncIterator[tuple[WriterThread, CommitWatch]]:
    """A writing thread on the database at ``path``, and a watch of the
    other connections' commits, which calls ``on_commit``."""
    writer = WriterThread(str(path), PRAGMAS, WriteLock())
    await writer.connect()
    watch = CommitWatch(str(path), on_commit, writer, quiet=quiet)
    watch.start()
    try:
        yield writer, watch
    finally:
        watch.stop()
        await writer.close()


async def test_a_commit_elsewhere_is_heard_of(tmp_path: Path) -> None:
    """The watch calls back once another process's commit is visible."""
    path = wal_database(tmp_path, "CREATE TABLE t (x)")
    heard = asyncio.Event()
    async with watched(path, heard.set) as (_, watch):
        for n in range(3):
            await asyncio.to_thread(write_from_another_process, path, f"INSERT INTO t VALUES ({n})")
            async with asyncio.timeout(TIMEOUT):
                await heard.wait()
            heard.clear()
        watch.stop()  # stopped again on the way out: idempotent


async def test_the_writers_own_commits_are_not_heard_of(tmp_path: Path) -> None:
    """The store's writing connection commits most of what a busy worker
    commits: those commits wake nobody; another connection's commit, made
    while the writer was busy with its own, is heard of once it is done."""
    path = wal_database(tmp_path, "CREATE TABLE t (x)")
    heard: list[str] = []
    other = asyncio.Event()

    def committed() -> None:
        heard.append("commit")
        other.set()

    def insert(n: int) -> Callable[[sqlite3.Connection], object]:
        return lambda conn: conn.execute("INSERT INTO t VALUES (?)", (n,))

    async with watched(path, committed) as (writer, _):
        for n in range(20):
            await writer.write(insert(n))
        # A commit of another, made while the writer's transaction is open:
        # it waits for the writer's lock, and is visible once that is done.
        in_writer, go_on = threading.Event(), threading.Event()

        def held(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO t VALUES (-1)")
            in_writer.set()
            go_on.wait(TIMEOUT)

        writing = asyncio.ensure_future(writer.write(held))
        await asyncio.to_thread(in_writer.wait, TIMEOUT)
        elsewhere = asyncio.ensure_future(
            asyncio.to_thread(write_from_another_process, path, "INSERT INTO t VALUES (-2)")
        )
        go_on.set()
        await asyncio.gather(writing, elsewhere)
        async with asyncio.timeout(TIMEOUT):
            await other.wait()
        # The writer's commits, each heard of by the loop before the next
        # (as the old watch did, calling back for each), woke nobody: the
        # calls are the other process's commit. Two, at times: when the
        # log was all copied into the database, a commit starts it over,
        # and a reading between that new start and the commit sees a change.
        assert heard in (["commit"], ["commit", "commit"])


async def test_the_log_is_not_read_while_the_writer_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The log's events from the writer's own transactions, one after
    another, would each wake the loop for nothing: they are left unread
    while it writes. Another process's commit meanwhile is heard of from
    the version the writer reads after its next commit; one after its last
    write, once it has been quiet for a while."""
    path = wal_database(tmp_path, "CREATE TABLE t (x)")
    heard = asyncio.Event()
    reads = 0
    read = CommitWatch._read

    def counted(watch: CommitWatch, soon: bool = True) -> None:  # the loop's reads of events
        nonlocal reads
        reads += 1
        read(watch, soon)

    monkeypatch.setattr(CommitWatch, "_read", counted)

    def insert(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t VALUES (1)")

    # Quiet for a minute: the events stay unread for the whole test.
    async with watched(path, heard.set, quiet=NEVER) as (writer, _):
        for _ in range(20):
            await writer.write(insert)
        await asyncio.to_thread(write_from_another_process, path, "INSERT INTO t VALUES (2)")
        await writer.write(insert)  # its commit's version tells of the other's
        async with asyncio.timeout(TIMEOUT):
            await heard.wait()
        assert reads == 0

    # Quiet soon: a commit of another after the writer's last write.
    heard.clear()
    async with watched(path, heard.set, quiet=0.01) as (writer, _):
        for _ in range(3):
            await writer.write(insert)
        await asyncio.to_thread(write_from_another_process, path, "INSERT INTO t VALUES (3)")
        async with asyncio.timeout(TIMEOUT):
            await heard.wait()


class LateVersions:
    """Versions (``_wakeup.Versions``) whose next commit is visible once
    ``visible(readings)`` says so, asked at each reading; the first reading
    is the watch's own, when it starts."""

    def __init__(self, visible: Callable[[int], bool]) -> None:
        self.visible = visible
        self.readings = 0

    def data_version(self, ask_again: Callable[[], None]) -> int:
        self.readings += 1
        return 2 if self.visible(self.readings) else 1

    def watched_by(self, watch: CommitWatch | None) -> None:
        pass


@contextlib.asynccontextmanager
async def a_page_heard_of(tmp_path: Path, versions: LateVersions) -> AsyncIterator[CommitWatch]:
    """A watch of the log at ``tmp_path`` that reads ``versions``, once it
    has heard of a page written to the log (the watch stops on the way out)."""
    log = tmp_path / "app.db-wal"
    log.write_bytes(b"")
    heard = asyncio.Event()
    watch = CommitWatch(str(tmp_path / "app.db"), heard.set, versions)
    watch.start()
    try:
        with log.open("ab") as file:
            file.write(b"a page")
        async with asyncio.timeout(TIMEOUT):
            await heard.wait()
        yield watch
    finally:
        watch.stop()


async def test_a_commit_not_yet_visible_is_read_again_at_the_loops_next_turns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit's first write to the log wakes the watch before the commit
    is visible. The next readings come at the loop's next turns, not at
    its timers, which wait a millisecond at least: here the timers would
    wait a minute, and the commit, visible at the third reading after the
    write, is heard of all the same."""
    monkeypatch.setattr(_wakeup, "CONFIRM_SOON", NEVER)
    monkeypatch.setattr(_wakeup, "CONFIRM_EVERY", NEVER)
    versions = LateVersions(lambda readings: readings >= 4)
    async with a_page_heard_of(tmp_path, versions):
        assert versions.readings == 4


async def test_a_commit_made_visible_late_is_heard_of(tmp_path: Path) -> None:
    """The committing process lost its CPU between its last write to the
    log and making the commit visible, for longer than CONFIRM_FOR (seen on
    a loaded machine): the watch reads on, less often, and hears of it."""
    loop = asyncio.get_running_loop()
    visible_from = loop.time() + 5 * _wakeup.CONFIRM_FOR
    async with a_page_heard_of(
        tmp_path, LateVersions(lambda _: loop.time() >= visible_from)
    ) as watch:
        assert watch._confirming is None  # nothing more to read


async def test_without_a_log_the_store_polls(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A database whose log cannot be watched (here: no file at all) gives
    no listener, and says that the store polls."""
    dialect = SQLiteDialect(f"sqlite+aiosqlite:///{tmp_path / 'none.db'}", Tables("t_"), "me")
    await dialect.open(WriteLock())
    try:
        assert dialect._writer is not None
        with pytest.raises(OSError, match="inotify_add_watch"):
            CommitWatch(str(tmp_path / "none.db"), lambda: None, dialect._writer).start()
        with caplog.at_level(logging.WARNING):
            assert dialect.listener(lambda channel, payload: None) is None
    finally:
        await dialect.close()
    assert "seen at each poll, not at once" in caplog.text


def slow_store(db: Database, lease: float = 30.0) -> SQLStore:
    return SQLStore(db.async_url, poll_interval=NEVER, lease=lease)


async def test_a_worker_process_takes_a_job_at_once(sqlite_db: Database, tmp_path: Path) -> None:
    """A job performed here starts in a worker process that polls once a
    minute; its end reaches the waiter here, which polls as seldom."""
    async with asyncjob.Runner(slow_store(sqlite_db), producer_only=True) as producer:
        log = tmp_path / "worker.log"
        with log.open("w") as out:
            worker = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "asyncjob", "worker", "--store", sqlite_db.async_url,
                "--import", "tests.worker_jobs", "--poll-interval", str(NEVER),
                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            for n in range(3):
                job_id = await producer.perform(whoami, n)
                assert (await producer.wait(job_id, TIMEOUT))["pid"] == worker.pid
        finally:
            worker.terminate()
            async with asyncio.timeout(TIMEOUT):
                await worker.wait()
            print(log.read_text())


async def test_progress_and_cancel_cross_at_once(sqlite_db: Database) -> None:
    """Two runners on one file, each its own connections (as two processes
    would have): the one watching sees the other's progress, and its cancel
    reaches the job running in the other, both long before a poll."""
    started, reported = asyncio.Event(), asyncio.Event()

    async def report_then_wait() -> None:
        started.set()
        asyncjob.set_progress(0.5, "half")
        await reported.wait()
        await asyncio.Event().wait()  # until cancelled

    async with (
        asyncjob.Runner(slow_store(sqlite_db, NEVER)) as running,
        asyncjob.Runner(slow_store(sqlite_db, NEVER), producer_only=True) as looking,
    ):
        job_id = await running.perform(report_then_wait)
        async with asyncio.timeout(TIMEOUT):
            async for status in looking.watch(job_id):
                if status.progress == 0.5:
                    reported.set()
                    break
        assert await looking.cancel(job_id) is True
        with pytest.raises(asyncjob.JobCancelled):
            await looking.wait(job_id, TIMEOUT)


# -- the log's checkpoints --------------------------------------------------------


async def test_the_log_is_copied_beside_the_writes_and_starts_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store's connections leave checkpoints to the writer's thread of
    them (one in a commit made it take 10 ms): they run beside the writes,
    and when the log passes LOG_LIMIT pages, which they cannot bring back
    while writes never pause, the writing connection checkpoints in its
    commits again, so that the log starts over instead of growing."""
    monkeypatch.setattr(_sqlite, "CHECKPOINT_EVERY", 0.0)  # one after each commit, if free
    monkeypatch.setattr(_sqlite, "CHECKPOINT_ROWS", 0)
    monkeypatch.setattr(_sqlite, "LOG_LIMIT", 300)
    path = wal_database(
        tmp_path,
        "CREATE TABLE t (n INTEGER PRIMARY KEY, x BLOB)",
        "WITH RECURSIVE s(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM s WHERE n < 99)"
        " INSERT INTO t SELECT n, x'' FROM s",
    )
    writer = WriterThread(str(path), PRAGMAS, WriteLock())
    try:
        autocheckpoint = await writer.read(
            lambda conn: conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
        )
        assert autocheckpoint == 0
        written, largest = 0, 0
        for n in range(150):  # a hundred pages each: 15,000 pages in all
            blob = bytes([n]) * 4000

            def rewrite(conn: sqlite3.Connection, blob: bytes = blob) -> int:
                return conn.execute("UPDATE t SET x = ?", (blob,)).rowcount

            written += await writer.write(rewrite)
            largest = max(largest, (path.parent / f"{path.name}-wal").stat().st_size)
        await asyncio.get_running_loop().run_in_executor(writer._checkpointer, lambda: None)
        assert writer.checkpoints > 0
        assert written == 15_000
        # Without it, the log holds all 15,000; with it, a few thousand at
        # most (the checkpointing thread sees the limit passed late on a
        # slow machine: 3,424 pages of 6,000 written, in the asyncio debug
        # mode of a loaded one).
        page = 4096
        assert largest < 7_500 * page, f"the log grew to {largest // page} pages"
    finally:
        await writer.close()


async def test_a_store_that_writes_little_checkpoints_seldom(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint after every commit of a store that writes little made
    the next transactions slower (delayed jobs started 0.6 ms later): the
    log is checkpointed once CHECKPOINT_ROWS rows were written since the
    last checkpoint, or CHECKPOINT_LATEST seconds after it."""
    monkeypatch.setattr(_sqlite, "CHECKPOINT_EVERY", 0.0)
    monkeypatch.setattr(_sqlite, "CHECKPOINT_ROWS", 50)
    monkeypatch.setattr(_sqlite, "CHECKPOINT_LATEST", 3600.0)
    path = wal_database(tmp_path, "CREATE TABLE t (n INTEGER PRIMARY KEY)")
    writer = WriterThread(str(path), PRAGMAS, WriteLock())
    loop = asyncio.get_running_loop()

    async def write_rows(count: int) -> int:
        """Write ``count`` rows, one a commit; the checkpoints made so far."""
        for _ in range(count):
            await writer.write(lambda conn: conn.execute("INSERT INTO t DEFAULT VALUES"))
        await loop.run_in_executor(writer._checkpointer, lambda: None)  # those asked for
        return writer.checkpoints

    try:
        # The first commit may find the last checkpoint long ago, or not.
        first = await write_rows(1)
        assert await write_rows(48) == first  # 49 rows: not yet
        assert await write_rows(2) == first + 1  # 51
        monkeypatch.setattr(_sqlite, "CHECKPOINT_LATEST", 0.0)  # long enough ago
        assert await write_rows(1) == first + 2
    finally:
        await writer.close()


async def test_a_write_committed_stands_when_the_log_setting_after_it_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Switching the writing connection's own checkpoints on or off comes
    after the commit: if that fails, the write has succeeded all the same
    (it must not be reported failed, and so made again), and the switch is
    tried again after the next commit."""
    # No checkpoint: it would find the log short, and switch them off again.
    monkeypatch.setattr(_sqlite, "CHECKPOINT_EVERY", float("inf"))
    path = wal_database(tmp_path, "CREATE TABLE t (n INTEGER PRIMARY KEY)")
    writer = WriterThread(str(path), PRAGMAS, WriteLock())

    def refuse_the_setting(action: int, arg1: str | None, *_: object) -> int:
        refused = action == sqlite3.SQLITE_PRAGMA and arg1 == "wal_autocheckpoint"
        return sqlite3.SQLITE_DENY if refused else sqlite3.SQLITE_OK

    def autocheckpoint(conn: sqlite3.Connection) -> int:
        return int(conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0])

    try:
        await writer.read(lambda conn: conn.set_authorizer(refuse_the_setting))
        writer._log_full = True  # as the checkpointing thread says of a long log
        await writer.write(lambda conn: conn.execute("INSERT INTO t VALUES (1)"))
        with contextlib.closing(sqlite3.connect(path)) as other:
            assert other.execute("SELECT n FROM t").fetchall() == [(1,)]
        await writer.read(lambda conn: conn.set_authorizer(None))
        assert await writer.read(autocheckpoint) == 0  # refused: still off
        await writer.write(lambda conn: conn.execute("INSERT INTO t VALUES (2)"))
        assert await writer.read(autocheckpoint) == 1000  # on, after the next commit
    finally:
        await writer.close()
