"""The seed's "Progress Tracking with Multiple Processes", with the SQL store.

``tgext.asyncjob`` 0.3.1 needed a Redis tracker for it: several processes
serve one TurboGears2 application, one of them performs the job, and
another one's ``/state`` page must follow its progress. Here each process
is a real one (``tg_process_app.py``): it builds the same application with
``start_async_worker(store=URL)`` and serves it over HTTP on 127.0.0.1. The
job's status and progress are in the database, which every process reads.

The jobs are held at each step by the process that runs them, and let go
through that process's HTTP endpoints: the test never sleeps to wait for a
job. Only the other process's view of the progress, which the store writes
a moment after the job reports it, is polled, within ``TIMEOUT``.
"""

from __future__ import annotations

import http.client
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from sqlalchemy import create_engine

from . import tg_app
from .conftest import TIMEOUT, Database

ROOT = Path(__file__).resolve().parent.parent

#: How long the test waits between two reads of a ``/state`` page that has
#: not changed yet (seconds): the store writes progress at most every 0.1 s.
POLL_INTERVAL = 0.02

#: How a process is started: by importing the module by name, so that the
#: jobs it registers are named as in every other process.
ENTRY = "import sys; from tests.tg_process_app import main; sys.exit(main())"


@dataclass(frozen=True)
class Reply:
    """An HTTP answer."""

    status: int
    location: str | None
    text: str


class Server:
    """One process serving the application, and its output."""

    def __init__(self, name: str, process: subprocess.Popen[bytes], ready: int, log: Path) -> None:
        self.name = name
        self.process = process
        self.log = log
        self._ready: int | None = ready
        self.port: int | None = None

    def wait_ready(self, deadline: float) -> None:
        """Read the port the process listens on, which it writes once it serves.

        Raises:
            AssertionError: the process ended, or did not serve in time.
        """
        assert self._ready is not None, f"{self.name} was waited for already"
        received = b""
        try:
            while not received.endswith(b"\n"):
                remaining = deadline - time.monotonic()
                readable, _, _ = select.select([self._ready], [], [], max(remaining, 0))
                assert readable, f"{self.name} did not serve in time:\n{self.output()}"
                chunk = os.read(self._ready, 64)
                assert chunk, f"{self.name} ended before serving:\n{self.output()}"
                received += chunk
        finally:
            self.close_pipe()
        self.port = int(received)

    def close_pipe(self) -> None:
        """Close the read end of the pipe the port comes on; idempotent."""
        if self._ready is not None:
            os.close(self._ready)
            self._ready = None

    def get(self, path: str, expect: int = 200) -> Reply:
        """GET ``path`` (with its query), not following redirects."""
        assert self.port is not None, f"{self.name} is not serving"
        # Longer than what a controller itself waits for a job (TIMEOUT).
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT + 5)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            reply = Reply(
                response.status,
                response.getheader("Location"),
                response.read().decode("utf-8", "replace"),
            )
        finally:
            conn.close()
        assert reply.status == expect, f"{self.name} {path}: {reply}\n{self.output()}"
        return reply

    def output(self) -> str:
        """What the process printed."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"---- {self.name} (pid {self.process.pid}) ----\n{text}"


class Servers:
    """The processes a test starts, all stopped after it."""

    def __init__(self, db: Database, logs: Path) -> None:
        self.db = db
        self.logs = logs
        self.started: list[Server] = []

    def start(self, name: str, *, producer_only: bool = False) -> Server:
        """Start a process serving the application on the test database;
        :meth:`wait_ready` waits for it."""
        ready, write_end = os.pipe()
        command = [sys.executable, "-c", ENTRY, "--store", self.db.async_url]
        command += ["--db", self.db.sync_url, "--ready-fd", str(write_end)]
        if producer_only:
            command.append("--producer-only")
        log = self.logs / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                command,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                pass_fds=[write_end],
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        os.close(write_end)  # the child has its own: EOF here when it ends
        server = Server(name, process, ready, log)
        self.started.append(server)
        return server

    def wait_ready(self) -> None:
        """Wait until every process started serves (they start at once)."""
        deadline = time.monotonic() + TIMEOUT * 2
        for server in self.started:
            if server.port is None:
                server.wait_ready(deadline)

    def stop_all(self) -> list[int | None]:
        """SIGTERM, then kill what is still running; their exit codes."""
        for server in self.started:
            if server.process.poll() is None:
                server.process.send_signal(signal.SIGTERM)
        for server in self.started:
            try:
                server.process.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait(TIMEOUT)
            server.close_pipe()
        return [server.process.returncode for server in self.started]

    def output(self) -> str:
        """What every process printed."""
        return "\n".join(server.output() for server in self.started)


@pytest.fixture
def servers(database: Database, tmp_path: Path) -> Iterator[Servers]:
    """Start application processes on the test database; stop them
    afterwards, and print what they printed (shown when the test fails)."""
    # The application's own tables, made once here (gearbox setup-app's
    # work): the processes that start together then do not race to make them.
    engine = create_engine(database.sync_url)
    try:
        tg_app.DeclarativeModel.metadata.create_all(engine)
    finally:
        engine.dispose()
    made = Servers(database, tmp_path)
    try:
        yield made
    finally:
        made.stop_all()
        print(made.output())


def state_page(reply: Reply) -> str:
    """The path and query of the ``/state`` page a controller redirected to."""
    assert reply.status == 302, reply
    assert reply.location is not None
    address = urlsplit(reply.location)
    assert address.path == "/state", reply.location
    return f"{address.path}?{address.query}"


def says(text: str, what: str | int) -> bool:
    """Whether a ``/state`` page's text is ``what``: a text, or a step's
    number (compared as a number: see :func:`test_state_page_shows_the_number_as_reported`)."""
    if isinstance(what, str):
        return text == what
    try:
        return float(text) == what
    except ValueError:
        return False


def follow(server: Server, page: str, until: str | int, meanwhile: str | int) -> None:
    """Read ``page`` until it says ``until``; until then it may only say
    ``meanwhile`` (what it said before), within ``TIMEOUT``."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        text = server.get(page).text
        if says(text, until):
            return
        assert says(text, meanwhile), f"{server.name} {page}: {text!r}, expected {until!r}"
        assert time.monotonic() < deadline, f"{server.name} {page} still says {text!r}"
        time.sleep(POLL_INTERVAL)  # a poll: the store writes progress a moment later


def test_one_process_performs_another_follows_its_progress(servers: Servers) -> None:
    """Process A performs the seed's progress job (a closure: it runs in A);
    process B's ``/state`` page reads 'Not yet started' while A's single
    worker is busy, then each step's number as the job in A reaches it,
    then 'Job Completed'."""
    a, b = servers.start("A"), servers.start("B")
    servers.wait_ready()
    a.get("/block")
    a.get("/blocking")  # A's worker is held: the next job waits queued

    page = state_page(a.get("/controller_method", expect=302))
    assert b.get(page).text == "Not yet started"
    assert a.get(page).text == "Not yet started"

    a.get("/unblock")
    before: str | int = "Not yet started"
    for i in range(5):
        a.get(f"/reached?step={i}")  # the job is in A, at step i
        follow(b, page, i, meanwhile=before)
        a.get(f"/release?step={i}")
        before = i
    follow(b, page, "Job Completed", meanwhile=before)
    assert a.get(page).text == "Job Completed"

    assert servers.stop_all() == [0, 0], "the processes did not stop cleanly on SIGTERM"


def test_registered_job_runs_in_a_worker_process_and_the_producer_follows_it(
    servers: Servers,
) -> None:
    """Process A only produces (``producer_only=True``) and performs the job
    registered with ``@asyncjob.job``; process B, a worker, runs it. A's
    ``/state`` page reads 'Not yet started' while the job waits in the store
    for B's single worker, then each step's number as the job in B reaches
    it, then 'Job Completed'; the result says B ran it."""
    a, b = servers.start("A", producer_only=True), servers.start("B")
    servers.wait_ready()
    a.get("/block_registered")
    b.get("/blocking")  # B's worker is held: the next job waits in the store

    reply = a.get("/controller_method_registered", expect=302)
    page = state_page(reply)
    uid = page.split("uid=", 1)[1]
    assert a.get(page).text == "Not yet started"
    assert b.get(page).text == "Not yet started"

    b.get("/unblock")
    before: str | int = "Not yet started"
    for i in range(5):
        b.get(f"/reached?step={i}")  # the job is in B, at step i
        follow(a, page, i, meanwhile=before)
        b.get(f"/release?step={i}")
        before = i
    follow(a, page, "Job Completed", meanwhile=before)
    assert b.get(page).text == "Job Completed"
    assert json.loads(a.get(f"/result?uid={uid}").text) == b.process.pid

    assert servers.stop_all() == [0, 0], "the processes did not stop cleanly on SIGTERM"


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_state_page_shows_the_number_as_reported(servers: Servers) -> None:
    """The seed's job reports ``0``, ``1``…; its state page shows them as
    ``str(state[0])``: the same text whichever process reads it, as with
    ``tgext.asyncjob``'s trackers and the memory store."""
    a = servers.start("A")
    servers.wait_ready()
    page = state_page(a.get("/controller_method", expect=302))
    a.get("/reached?step=0")
    follow(a, page, 0, meanwhile="Not yet started")
    assert a.get(page).text == "0"
