"""Hearing of other processes' commits on SQLite, at once and for free.

SQLite announces nothing across processes: a process learns of another's
commit only by reading. Reading often enough to be quick (a few
milliseconds) costs an idle process its CPU; reading seldom (the store's
``poll_interval``) makes a job performed in one process wait in another.
But in WAL mode every commit appends to the write-ahead log, the file
``<database>-wal``, whoever makes it (a worker, a web process's
transaction, the ``sqlite3`` shell): the kernel can tell us, the moment it
happens, that the file was written. :class:`FileWatch` asks it, with inotify
on Linux; elsewhere it is not available and the store polls as before.

A wake-up says only that *something* was committed, not what: the store
then looks (a claim, its watched jobs, its held jobs' cancels), once for
however many commits came while it looked. The commits of the store's own
writing connection, most of a busy worker's (its claims and ends), do not
wake it: SQLite's ``PRAGMA data_version`` on that connection moves only
with the commits of *other* connections, and the store tells itself of its
own writes where they are made. Nor are the log's events read while that
connection writes, one transaction after another: each would wake the
loop to find it was the process's own (8 % of a busy SQLite worker's
throughput, measured); the version it reads after each of its commits
tells of the others' meanwhile, and the events are read again once it has
been quiet for :data:`QUIET`.

inotify is three calls of the C library, through :mod:`ctypes`, so that
no dependency is added for them. A watch is lost if the log is deleted,
which SQLite does only when the last connection to the database closes,
and the store keeps one open while it is open.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import os
import struct
import sys
from collections.abc import Callable
from typing import Protocol

from asyncjob._core.log import logger

__all__ = (
    "CONFIRM_EVERY",
    "CONFIRM_FOR",
    "CONFIRM_LATE",
    "CONFIRM_SOON",
    "QUIET",
    "CommitWatch",
    "Versions",
)

#: After a write to the log, how often and for how long (seconds) to read
#: whether a commit became visible: at each turn of the loop for the first
#: CONFIRM_SOON, then every CONFIRM_EVERY until CONFIRM_FOR. A commit writes
#: its pages to the log one by one, then makes them visible: the first
#: write wakes the watch before the commit is done, and the loop's timers
#: wait a millisecond at least (the kernel's wait counts whole
#: milliseconds), so that a commit the first reading missed was seen some
#: 1.1 ms later (perform->start in another process, p50: 2.6 ms, against
#: 1.7 when that reading happened to come late enough). After CONFIRM_FOR,
#: at growing intervals (each as long as the time since the write) until
#: CONFIRM_LATE: the committing process may lose its CPU between its last
#: write to the log and making the commit visible, and on a loaded machine
#: it did, for more than CONFIRM_FOR (a commit missed until the next poll).
CONFIRM_SOON = 0.001
CONFIRM_EVERY = 0.001
CONFIRM_FOR = 0.01
CONFIRM_LATE = 1.0

#: Seconds without a write of the process's own after which the log's
#: events are read again (see :meth:`CommitWatch.writing`). Longer than the
#: gaps between a busy worker's claims and ends (a few tenths of a
#: millisecond), short enough that a commit of another process, made just
#: after the process's last write, is heard of about as soon as before.
QUIET = 0.001

# From <sys/inotify.h>.
_IN_MODIFY = 0x00000002
_IN_IGNORED = 0x00008000
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (of the name that follows)


class Versions(Protocol):
    """Where a watch reads whether other connections committed: SQLite's
    ``PRAGMA data_version`` of one connection, which changes only with the
    commits of the others (``WriterThread``: the store's own writes are
    not heard of)."""

    def data_version(self, ask_again: Callable[[], None]) -> int | None:
        """The version now; or None when it cannot be read at the moment,
        and then ``ask_again()`` is called, once, when it can."""

    def watched_by(self, watch: CommitWatch | None) -> None:
        """Tell ``watch`` (None: nobody any more) when the connection writes:
        :meth:`CommitWatch.writing` before each of its transactions, and
        :meth:`CommitWatch.written` after, with the version it read then."""


class CommitWatch:
    """Calls ``on_commit()`` on the loop after another connection than
    ``versions``' commits to the SQLite database at ``path`` (in WAL mode),
    from any process; several commits between two turns of the loop make
    one call.

    The log is written before the commit is visible (SQLite then publishes
    it in the shared-memory index), so a write is confirmed by
    ``versions.data_version``, which changes once another connection's
    commit is visible: read at once, then every :data:`CONFIRM_EVERY`
    seconds for up to :data:`CONFIRM_FOR` (a write that is not a commit,
    such as a large transaction spilling pages to the log, is followed by
    the commit's own write later, which is heard of in turn; a write of
    the connection itself is not a commit of another, and is confirmed by
    nothing), then less and less often until :data:`CONFIRM_LATE`.

    Raises (from :meth:`start`):
        OSError: the log cannot be watched (not Linux, no log file, or the
            system's limit of inotify watches reached): poll instead.
    """

    def __init__(
        self,
        path: str,
        on_commit: Callable[[], None],
        versions: Versions,
        *,
        quiet: float = QUIET,
    ) -> None:
        self.path = path
        self._on_commit = on_commit
        self._versions = versions
        self._quiet = quiet
        self._fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._version: int | None = None
        self._confirming: asyncio.Handle | None = None
        self._written_at = self._confirm_soon_until = self._confirm_until = 0.0
        # The log's events are read (its file descriptor is among the
        # loop's readers); not while the versions' connection writes.
        self._reading = False
        self._writes = 0  # transactions of the versions' connection under way
        self._quiet_from = 0.0  # the loop's time from which it is quiet
        self._resuming: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Watch from now on; on the loop that will hear of the commits."""
        libc = _libc()
        if libc is None:
            raise OSError(f"files cannot be watched on {sys.platform}")
        fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            raise _os_error("inotify_init1")
        try:
            if libc.inotify_add_watch(fd, os.fsencode(f"{self.path}-wal"), _IN_MODIFY) < 0:
                raise _os_error(f"inotify_add_watch {self.path}-wal")
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(fd, self._read)
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._reading = fd, True
        self._version = self._versions.data_version(self._confirm)
        self._versions.watched_by(self)

    def stop(self) -> None:
        """Stop watching; idempotent."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        self._versions.watched_by(None)
        for timer in (self._confirming, self._resuming):
            if timer is not None:
                timer.cancel()
        if self._reading and self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(fd)
        self._reading = False
        os.close(fd)

    def writing(self) -> None:
        """The versions' connection begins a transaction: its writes to the
        log are its own, and each read would wake the loop for nothing. So
        the events wait unread, from now until it has been quiet for
        ``quiet`` seconds; meanwhile the version it reads after each commit
        tells of the others' commits (:meth:`written`), and then the events
        come in, once, with whatever commit of another fell after its
        last one."""
        if self._fd is None:
            return
        assert self._loop is not None
        self._writes += 1
        if self._reading:
            self._loop.remove_reader(self._fd)
            self._reading = False
        if self._confirming is not None:  # the version read after it will do
            self._confirming.cancel()
            self._confirming = None

    def written(self, version: int | None) -> None:
        """The transaction :meth:`writing` announced is over, and the
        connection read ``version`` after committing it (None: it did not
        commit, or could not read)."""
        if self._fd is None:
            return
        assert self._loop is not None
        self._writes -= 1
        if version is not None:
            self._seen(version)
        self._quiet_from = self._loop.time() + self._quiet
        if self._resuming is None:  # one timer for a run of writes, not one each
            self._resuming = self._loop.call_at(self._quiet_from, self._resume)

    def _resume(self) -> None:
        """Read the log's events again, if no write came for ``quiet`` seconds."""
        self._resuming = None
        if self._fd is None or self._writes:
            return  # stopped; or written() sets this timer again
        assert self._loop is not None
        if self._loop.time() < self._quiet_from:
            self._resuming = self._loop.call_at(self._quiet_from, self._resume)
            return
        self._loop.add_reader(self._fd, self._read)
        self._reading = True
        # The events that waited are the connection's own, but for a commit
        # of another after its last (read as below, without reading at each
        # turn of the loop for them: they are written already).
        self._read(soon=False)

    def _read(self, soon: bool = True) -> None:
        """The kernel has events: read them all, then confirm the commit
        (``soon``: at each turn of the loop at first)."""
        assert self._fd is not None
        assert self._loop is not None
        written = lost = False
        with contextlib.suppress(BlockingIOError):
            while data := os.read(self._fd, 4096):
                offset = 0
                while offset < len(data):
                    _, mask, _, length = _EVENT.unpack_from(data, offset)
                    written |= bool(mask & _IN_MODIFY)
                    lost |= bool(mask & _IN_IGNORED)
                    offset += _EVENT.size + length
        if lost:
            logger.warning(
                "%s-wal was deleted: other processes' commits are seen at each poll now",
                self.path,
            )
            self.stop()
            self._on_commit()
        elif written:
            self._written_at = now = self._loop.time()
            self._confirm_soon_until = now + CONFIRM_SOON if soon else now
            self._confirm_until = now + CONFIRM_FOR
            if self._confirming is not None:  # a reading to come: now, rather
                self._confirming.cancel()
            self._confirm()

    def _confirm(self) -> None:
        self._confirming = None
        if self._fd is None or not self._reading:
            return  # stopped; or the connection writes: written() will do
        assert self._loop is not None
        version = self._versions.data_version(self._confirm_again)
        if version is None:
            return  # busy: _confirm_again, once it is not
        if self._seen(version):
            return
        now = self._loop.time()
        if now < self._confirm_soon_until:
            self._confirming = self._loop.call_soon(self._confirm)
        elif now < self._confirm_until:
            self._confirming = self._loop.call_later(CONFIRM_EVERY, self._confirm)
        elif (waited := now - self._written_at) < CONFIRM_LATE:
            self._confirming = self._loop.call_later(waited, self._confirm)

    def _confirm_again(self) -> None:
        """The version can be read again, after a wait that may have taken
        the whole window: confirm for as long again."""
        if self._loop is not None and self._confirming is None:
            self._confirm_until = max(self._confirm_until, self._loop.time() + CONFIRM_FOR)
            self._confirm()

    def _seen(self, version: int) -> bool:
        """The version read now: True, calling back, if another connection
        committed since the last reading."""
        if self._version is None:
            self._version = version  # the first reading, deferred from start()
            return False
        if version == self._version:
            return False
        self._version = version
        self._on_commit()
        return True


def _os_error(call: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{call}: {os.strerror(err)}")


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The C library, where it has inotify."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    except (OSError, AttributeError):
        return None
    return libc
