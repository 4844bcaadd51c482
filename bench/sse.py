"""Live progress to many browsers: one job's ``set_progress`` reaching 1, 100
and 1,000 Server-Sent-Events clients, against a bare sse-starlette fan-out.

Usage::

    python bench/sse.py [--quick] [--repeat N] [--clients 1,100,1000] [--json PATH]
    python bench/sse.py --profile PATH [--clients 1000]

Each measurement starts a server process of its own (uvicorn on 127.0.0.1,
as ``asyncjob dashboard`` runs it), so that the clients' CPU is not counted
as the server's; the clients are raw asyncio connections in this process,
which stamp each event's arrival before parsing it. The server is told over
its stdin when to report the next step; the time of the report travels in
the event's data (``time.time()``: one clock for every process of a
machine), so the delay is measured from ``set_progress`` to the complete
event in a client's hands. Each figure is the median of the repetitions, and
every ratio compares asyncjob with the baseline measured next to it.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import cProfile
import dataclasses
import importlib.metadata
import importlib.util
import io
import json
import os
import platform
import pstats
import re
import resource
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Protocol, cast

import uvicorn
from core import percentile, source_digest
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import asyncjob
import asyncjob.web

#: The subjects: asyncjob's dashboard stream, and the floor it is held to.
SUBJECTS = ("asyncjob", "baseline")

#: Seconds a server process may take to import, start its runner and listen.
SERVER_START_TIMEOUT = 30.0
#: Seconds a server process answers a command within (it is idle then).
COMMAND_TIMEOUT = 30.0
#: A server process ends itself after this many seconds, whatever happens
#: to the benchmark; it also ends as soon as its stdin closes.
SERVER_LIFETIME = 3600.0
#: Seconds for every client to connect and receive its first event.
CONNECT_TIMEOUT = 60.0
#: Clients that connect at once: a thousand SYNs together would overflow
#: nothing here (the backlog is 2,048), but batches keep the start gentle.
CONNECT_BATCH = 100
#: Seconds one step may take to reach every client; past that, the clients
#: still without it are left behind and the run goes on (what never comes
#: is counted as lost).
STEP_TIMEOUT = 10.0
#: Seconds every stream may take to end after the job's final status.
END_TIMEOUT = 30.0
#: Seconds the server is watched idle, its clients connected, before the
#: steps.
IDLE = 1.0
#: Extra seconds between the last client's event of a step and the next
#: step, beyond the stream's coalescing window: so that each step is an
#: event of its own, sent at once, and coalescing never adds to a delay.
GAP = 0.05

#: What the benchmark's steps carry in their data, and how a client finds
#: them in the bytes without parsing the JSON around them.
STEP = re.compile(rb'"bench_step":(\d+),"bench_t":([0-9.eE+-]+)')
#: How a client tells the final event (asyncjob's final status; the
#: baseline's imitation of it).
FINAL = b'"state":"succeeded"'
#: Both servers separate lines with sse-starlette's default, CRLF.
EVENT_END = b"\r\n\r\n"


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much work one repetition does."""

    clients: tuple[int, ...]
    steps: int
    warmup: int
    spacing: float
    repeat: int


FULL = Sizes(clients=(1, 100, 1000), steps=20, warmup=2, spacing=0.25, repeat=3)
QUICK = Sizes(clients=(1, 50), steps=5, warmup=1, spacing=0.25, repeat=1)

#: The target of issue 11: the median delay at this many clients.
TARGET_CLIENTS = 1000
TARGET_P50_MS = 50.0


# -- the server process's side ---------------------------------------------------------------


class Subject(Protocol):
    """What a server process serves: an app, the path of its stream, and
    what to do when told to report a step or to end."""

    app: Any
    path: str

    def step(self) -> None: ...

    def end(self) -> None: ...


class AsyncjobSubject:
    """asyncjob's dashboard on an in-process memory-store runner, with one
    job that reports a step each time it is told to (``set_progress``, the
    time of the call in its data) and returns when told to end."""

    def __init__(self, runner: asyncjob.Runner) -> None:
        self.runner = runner
        self.app = asyncjob.web.dashboard(runner)
        self.path = ""
        self._commands: asyncio.Queue[str] = asyncio.Queue()

    async def start(self) -> None:
        """Perform the job, and wait until it runs: every client then gets
        the same first event (a running job, no progress yet)."""
        commands, started = self._commands, asyncio.Event()

        async def report() -> int:
            started.set()
            step = 0
            while await commands.get() == "step":
                step += 1
                asyncjob.set_progress(step, {"bench_step": step, "bench_t": time.time()})
            return step

        job_id = await self.runner.perform(report)
        self.path = f"/api/jobs/{job_id}/events"
        async with asyncio.timeout(SERVER_START_TIMEOUT):
            await started.wait()

    def step(self) -> None:
        self._commands.put_nowait("step")

    def end(self) -> None:
        self._commands.put_nowait("end")


class BaselineSubject:
    """The floor of SSE fan-out in Python: sse-starlette's
    ``EventSourceResponse`` (as the dashboard uses it: same heartbeat, same
    headers) over one ``asyncio.Queue`` per client; each step is encoded
    once, as a JSON object of the same fields as asyncjob's status (a
    shorter job name: 455 bytes an event against 503), and put in every
    queue."""

    def __init__(self) -> None:
        self.path = "/events"
        self.app = Starlette(routes=[Route(self.path, self._events)])
        self._queues: set[asyncio.Queue[str | None]] = set()
        now = datetime.now(UTC).isoformat()
        self._status: dict[str, Any] = {
            "id": os.urandom(16).hex(), "name": "bench.report", "state": "running",
            "progress": None, "data": None, "result": None, "error": None,
            "traceback": None, "attempts": 1, "errors": [], "cancel_requested": False,
            "queue": "default", "priority": 0, "run_after": None, "unique": None,
            "enqueued_at": now, "started_at": now, "finished_at": None, "args": [],
            "kwargs": {},
        }  # fmt: skip
        self._payload = self._encode()
        self._step = 0

    def _encode(self) -> str:
        return json.dumps(self._status, separators=(",", ":"), ensure_ascii=False)

    async def _events(self, request: Request) -> Response:
        return EventSourceResponse(
            self._stream(),
            ping=15,  # the dashboard's HEARTBEAT
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def _stream(self) -> AsyncIterator[ServerSentEvent]:
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._queues.add(queue)
        try:
            number = 1
            yield ServerSentEvent(data=self._payload, id=str(number))
            while (payload := await queue.get()) is not None:
                number += 1
                yield ServerSentEvent(data=payload, id=str(number))
            yield ServerSentEvent(data=self._payload, id=str(number + 1))
        finally:
            self._queues.discard(queue)

    def step(self) -> None:
        self._step += 1
        self._status["progress"] = self._step
        self._status["data"] = {"bench_step": self._step, "bench_t": time.time()}
        self._payload = self._encode()
        for queue in self._queues:
            queue.put_nowait(self._payload)

    def end(self) -> None:
        self._status["state"] = "succeeded"
        self._status["result"] = self._step
        self._status["finished_at"] = datetime.now(UTC).isoformat()
        self._payload = self._encode()
        for queue in self._queues:
            queue.put_nowait(None)


def serve(kind: str, profile_path: Path | None) -> int:
    """Run as a server process (``--serve KIND``), on asyncio's default loop,
    as ``asyncjob dashboard`` does."""
    raise_open_files(1 << 20)  # as many as allowed: it cannot know how many clients come
    return asyncio.run(_serve(kind, profile_path))


async def _serve(kind: str, profile_path: Path | None) -> int:
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    async with asyncio.timeout(SERVER_LIFETIME):
        if kind == "asyncjob":
            # A short grace period: a server told to stop before its job
            # ended (the benchmark failed) stops within a second.
            async with asyncjob.Runner(grace_period=1.0) as runner:
                subject = AsyncjobSubject(runner)
                await subject.start()
                return await _control(subject, stdin, profile_path)
        return await _control(BaselineSubject(), stdin, profile_path)


async def _control(subject: Subject, stdin: asyncio.StreamReader, profile: Path | None) -> int:
    """Serve ``subject`` and obey the benchmark, line by line: ``step``,
    ``end``, ``cpu``, and ``begin`` and ``finish`` of the measured phase (the
    last three answered with this process's CPU seconds, all threads; the
    profiler, if any, runs from ``begin`` to ``finish``), until stdin closes."""
    server = uvicorn.Server(
        uvicorn.Config(
            subject.app,
            host="127.0.0.1",
            port=0,
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
    )
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(SERVER_START_TIMEOUT):
        while not server.started:  # uvicorn offers no event for it
            if task.done():
                task.result()  # its start-up failed: say why
                return 1
            await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    print(f"ready {port} {subject.path}", flush=True)
    profiler = None if profile is None else cProfile.Profile()
    try:
        while line := (await stdin.readline()).decode().strip():
            if line == "step":
                subject.step()
            elif line == "end":
                subject.end()
            elif line == "cpu":
                print(f"cpu {time.process_time()!r}", flush=True)
            elif line == "begin":
                print(f"cpu {time.process_time()!r}", flush=True)
                if profiler is not None:
                    profiler.enable()
            elif line == "finish":
                cpu = time.process_time()
                if profiler is not None and profile is not None:
                    profiler.disable()
                    profiler.dump_stats(profile)
                print(f"cpu {cpu!r}", flush=True)
    finally:
        server.should_exit = True
        async with asyncio.timeout(10):
            await task
    return 0


# -- the benchmark's side: server processes --------------------------------------------------

#: The server processes alive, killed at the latest when the benchmark ends
#: (however it ends: an error, Ctrl-C).
LIVE: set[int] = set()


def kill_leftovers() -> None:
    """Kill every server process still alive, and reap it."""
    for pid in list(LIVE):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        LIVE.discard(pid)


def tail(written: IO[bytes] | None) -> str:
    """The end of what a server process wrote to ``written``, for the error
    that says why it failed."""
    if written is None:
        return ""
    written.seek(0)
    return written.read().decode(errors="replace")[-4000:]


class ServerProcess:
    """``python bench/sse.py --serve KIND``: a server of its own session (a
    Ctrl-C reaches the benchmark alone, which stops it), stopped by closing
    its stdin, killed if it does not end within seconds."""

    def __init__(self, kind: str, profile: Path | None = None) -> None:
        self.command = [sys.executable, str(Path(__file__).resolve()), "--serve", kind]
        if profile is not None:
            self.command += ["--server-profile", str(profile)]
        self.proc: asyncio.subprocess.Process | None = None
        self._stderr: IO[bytes] | None = None
        self.port = 0
        self.path = ""

    async def __aenter__(self) -> ServerProcess:
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in __aexit__
        self.proc = await asyncio.create_subprocess_exec(
            *self.command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=self._stderr,
            start_new_session=True,
        )
        LIVE.add(self.proc.pid)
        try:
            _, port, self.path = (await self._expect("ready", SERVER_START_TIMEOUT)).split()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        self.port = int(port)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        proc = self.proc
        try:
            if proc is not None and proc.returncode is None:
                if proc.stdin is not None and exc_info[0] is None:
                    proc.stdin.close()  # it stops on its own
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(10):
                            await proc.wait()
                if proc.returncode is None:
                    proc.kill()
                    async with asyncio.timeout(10):
                        await proc.wait()
        finally:
            if proc is not None and proc.returncode is not None:
                LIVE.discard(proc.pid)
            if self._stderr is not None:
                self._stderr.close()

    def _ended(self) -> str:
        """Why the server stopped answering, as far as it can be told."""
        assert self.proc is not None
        return f"the server process ended ({self.proc.returncode}):\n{tail(self._stderr)}"

    async def say(self, word: str) -> None:
        assert self.proc is not None
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(f"{word}\n".encode())
            await self.proc.stdin.drain()
        except ConnectionError:
            await self.proc.wait()
            raise RuntimeError(self._ended()) from None

    async def _expect(self, word: str, timeout: float) -> str:
        """The next line the server prints that starts with ``word``."""
        assert self.proc is not None
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            while True:
                line = (await self.proc.stdout.readline()).decode()
                if not line:
                    await self.proc.wait()
                    raise RuntimeError(self._ended())
                if line.startswith(word):
                    return line.strip()

    async def cpu(self, command: str) -> float:
        """Say ``cpu``, ``begin`` or ``finish``; the server's CPU seconds then."""
        await self.say(command)
        return float((await self._expect("cpu", COMMAND_TIMEOUT)).split()[1])


# -- the benchmark's side: the clients -------------------------------------------------------


class Fanout:
    """The clients of one measurement, and how far each step got."""

    def __init__(self) -> None:
        self.clients: list[Client] = []
        self.reached: collections.Counter[int] = collections.Counter()
        self.cut = 0  # connections that closed before their stream ended
        self.pings = 0  # heartbeats received (each costs the server a send)

    def open(self) -> int:
        """Clients still connected, whose events may still come."""
        return len(self.clients) - self.cut


class Client(asyncio.Protocol):
    """One SSE connection, read as a browser's ``EventSource`` reads it, at
    the least cost: a plain HTTP/1.1 request on a raw asyncio connection, the
    chunked body taken apart by hand: a thousand of them in one process
    must drain their sockets faster than the server fills them, or the
    delays measured would be the clients'. An event's arrival is stamped
    as ``data_received`` begins, before any parsing, and only a regular
    expression looks at the event."""

    def __init__(self, fanout: Fanout, request: bytes) -> None:
        self.fanout = fanout
        self.request = request
        self.transport: asyncio.Transport | None = None
        self.raw = bytearray()
        self.body = bytearray()
        self.head = False  # the response's head was read
        self.chunked = True
        self.chunk = -1  # bytes of the current chunk, or -1 while its size line is due
        self.arrived: dict[int, float] = {}  # step -> when its event arrived
        self.sent: dict[int, float] = {}  # step -> when the server reported it
        self.events = 0
        self.event_bytes = 0
        self.final = False  # the final status came
        self.ended = False  # the stream ended properly (the last, empty chunk)
        self.error = ""
        self.ready = asyncio.Event()  # its first event came, or it failed
        self.closed = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ended:
            self.error = self.error or f"connection lost: {exc or 'closed by the server'}"
            self.fanout.cut += 1
        self.ready.set()
        self.closed.set()

    def fail(self, why: str) -> None:
        self.error = why
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        now = time.time()
        self.raw += data
        if not self.head:
            end = self.raw.find(b"\r\n\r\n")
            if end < 0:
                return
            status, *fields = bytes(self.raw[:end]).decode("latin-1").split("\r\n")
            del self.raw[: end + 4]
            if status.split()[1:2] != ["200"]:
                self.fail(f"answered {status!r}")
                return
            self.chunked = any(
                f.lower().replace(" ", "") == "transfer-encoding:chunked" for f in fields
            )
            self.head = True
        if self.chunked:
            self._dechunk()
        else:
            self.body += self.raw
            self.raw.clear()
        body = self.body
        while (end := body.find(EVENT_END)) >= 0:
            event = bytes(body[:end])
            del body[: end + len(EVENT_END)]
            if b"data:" in event:
                self._event(event, now)
            else:  # a comment: sse-starlette's heartbeat, every 15 s
                self.fanout.pings += 1
        if self.ended and self.transport is not None:
            self.transport.close()

    def _dechunk(self) -> None:
        raw = self.raw
        while not self.ended:
            if self.chunk < 0:
                eol = raw.find(b"\r\n")
                if eol < 0:
                    return
                size = int(bytes(raw[:eol]).split(b";")[0], 16)
                del raw[: eol + 2]
                if size == 0:
                    self.ended = True
                    return
                self.chunk = size
            if len(raw) < self.chunk + 2:
                return
            self.body += raw[: self.chunk]
            del raw[: self.chunk + 2]
            self.chunk = -1

    def _event(self, event: bytes, now: float) -> None:
        self.events += 1
        self.event_bytes += len(event)
        found = STEP.search(event)
        if found is not None:
            step = int(found[1])
            if step not in self.arrived:
                self.arrived[step] = now
                self.sent[step] = float(found[2])
                self.fanout.reached[step] += 1
        if FINAL in event:
            self.final = True
        self.ready.set()


def raise_open_files(needed: int) -> None:
    """Raise this process's soft limit of open files to ``needed`` (if the
    hard limit allows): a thousand clients are a thousand sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


async def connect(fanout: Fanout, port: int, path: str, n: int) -> None:
    """Open ``n`` streams, a batch at a time, each until its first event
    (the job's status as it is now); those that fail stay counted."""
    loop = asyncio.get_running_loop()
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Accept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
    ).encode()

    async def one() -> None:
        client = Client(fanout, request)
        fanout.clients.append(client)
        try:
            await loop.create_connection(lambda: client, "127.0.0.1", port)
        except OSError as exc:
            client.error = f"could not connect: {exc}"
            fanout.cut += 1
            return
        await client.ready.wait()

    async with asyncio.timeout(CONNECT_TIMEOUT):
        for start in range(0, n, CONNECT_BATCH):
            await asyncio.gather(*(one() for _ in range(min(CONNECT_BATCH, n - start))))


async def until_reached(fanout: Fanout, step: int, timeout: float) -> bool:
    """Wait until every open client has ``step``'s event; False if some did
    not within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while fanout.reached[step] < fanout.open():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.002)
    return True


# -- one measurement -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one measurement saw."""

    delays: list[float]  # seconds, every (client, measured step) that arrived
    slowest: list[float]  # seconds, per measured step: its last client's delay
    server_cpu: float  # seconds, over the measured steps, idle CPU taken out
    idle_rate: float  # the server's CPU seconds per second while idle
    client_cpu: float  # seconds, this process, over the measured steps
    wall: float  # seconds, the measured steps
    delivered: int  # events of the measured steps that arrived
    lost: int  # step events (of every step) that never arrived
    unended: int  # streams that did not end with the final status
    late_steps: int  # steps that some open client had not after STEP_TIMEOUT
    event_bytes: float  # the average event's size
    pings: int  # heartbeats received: a measurement longer than 15 s pays for them
    errors: list[str]


async def measure(kind: str, n: int, sizes: Sizes, profile: Path | None = None) -> Outcome:
    """One subject, ``n`` clients: connect them, report ``warmup + steps``
    steps (each once the last client has the previous one, and at least
    ``spacing`` seconds after it), then end the job and wait for the end of
    every stream."""
    fanout = Fanout()
    async with ServerProcess(kind, profile) as server:
        try:
            try:
                await connect(fanout, server.port, server.path, n)
            except TimeoutError:
                ready = sum(c.ready.is_set() for c in fanout.clients)
                raise RuntimeError(f"{kind}: only {ready} of {n} clients connected") from None
            return await _run(server, fanout, n, sizes)
        finally:
            for client in fanout.clients:
                if client.transport is not None:
                    client.transport.abort()


async def _run(server: ServerProcess, fanout: Fanout, n: int, sizes: Sizes) -> Outcome:
    total = sizes.warmup + sizes.steps
    # The server's CPU while nothing happens (uvicorn's tick every 0.1 s and
    # such), per second: taken out of the measured phase's, whose steps are
    # mostly waits, so that a step's cost at one client is not the idle
    # loop's. It also lets the first events' coalescing window pass.
    idle = time.monotonic()
    idle_cpu = await server.cpu("cpu")
    await asyncio.sleep(IDLE)
    idle_cpu = await server.cpu("cpu") - idle_cpu
    idle_rate = idle_cpu / (time.monotonic() - idle)
    next_at = time.time()
    late = 0
    server_cpu = client_cpu = wall = 0.0
    for step in range(1, total + 1):
        if step == sizes.warmup + 1:
            server_cpu = await server.cpu("begin")
            client_cpu, wall = time.process_time(), time.time()
        await asyncio.sleep(max(0.0, next_at - time.time()))
        told = time.time()
        await server.say("step")
        if not await until_reached(fanout, step, STEP_TIMEOUT):
            late += 1
        last = max((c.arrived[step] for c in fanout.clients if step in c.arrived), default=told)
        next_at = max(told + sizes.spacing, last + asyncjob.web.COALESCE + GAP)
    wall = time.time() - wall
    client_cpu = time.process_time() - client_cpu
    server_cpu = await server.cpu("finish") - server_cpu - idle_rate * wall
    await server.say("end")
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(END_TIMEOUT):
            for client in fanout.clients:
                await client.closed.wait()
    measured = range(sizes.warmup + 1, total + 1)
    delays: list[float] = []
    slowest: list[float] = []
    for step in measured:
        these = [c.arrived[step] - c.sent[step] for c in fanout.clients if step in c.arrived]
        delays += these
        if these:
            slowest.append(max(these))
    events = sum(c.events for c in fanout.clients)
    errors = collections.Counter(c.error for c in fanout.clients if c.error)
    return Outcome(
        delays=delays,
        slowest=slowest,
        server_cpu=server_cpu,
        idle_rate=idle_rate,
        client_cpu=client_cpu,
        wall=wall,
        delivered=len(delays),
        lost=n * total - sum(len(c.arrived) for c in fanout.clients),
        unended=sum(not (c.final and c.ended) for c in fanout.clients),
        late_steps=late,
        event_bytes=sum(c.event_bytes for c in fanout.clients) / max(1, events),
        pings=fanout.pings,
        errors=[f"{count} client(s): {why}" for why, count in errors.items()],
    )


def figures(outcome: Outcome, steps: int) -> dict[str, float]:
    """An outcome's figures, as the table shows them."""
    delays = outcome.delays or [float("nan")]
    return {
        "p50": percentile(delays, 0.50) * 1000,
        "p99": percentile(delays, 0.99) * 1000,
        "slowest": statistics.median(outcome.slowest or [float("nan")]) * 1000,
        "cpu_event": outcome.server_cpu / max(1, outcome.delivered) * 1e6,
        "cpu_step": outcome.server_cpu / steps * 1000,
        "lost": outcome.lost + outcome.unended,
        "server_idle": outcome.idle_rate * 100,
        "client_busy": outcome.client_cpu / outcome.wall * 100 if outcome.wall else 0.0,
        "client_cpu_event": outcome.client_cpu / max(1, outcome.delivered) * 1e6,
        "bytes": outcome.event_bytes,
    }


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def one_repetition(sizes: Sizes, index: int) -> dict[str, float]:
    """Every measurement once: for each number of clients, asyncjob and the
    baseline back to back, in an order that alternates between repetitions
    (the machine's drift then hits each first as often)."""
    found: dict[str, float] = {}
    order = SUBJECTS if index % 2 == 0 else SUBJECTS[::-1]
    for n in sizes.clients:
        raise_open_files(n + 100)
        for kind in order:
            outcome = asyncio.run(measure(kind, n, sizes))
            these = figures(outcome, sizes.steps)
            progress(
                f"  {kind:<8} {n:>5} clients: p50 {these['p50']:.2f} ms, "
                f"p99 {these['p99']:.2f} ms, server CPU {these['cpu_event']:.0f} us/event, "
                f"client busy {these['client_busy']:.0f} %"
                + (f"; lost {outcome.lost}, not ended {outcome.unended}" if these["lost"] else "")
                + (f"; {outcome.late_steps} step(s) late" if outcome.late_steps else "")
                + (f"; {outcome.pings} heartbeat(s) came" if outcome.pings else "")
            )
            for line in outcome.errors:
                progress(f"    {line}")
            for key, value in these.items():
                found[f"{n}.{kind}.{key}"] = value
    return found


# -- reporting --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Row:
    """One measure, for each number of clients: asyncjob's figure against
    the baseline's."""

    label: str
    key: str
    unit: str
    ratio: bool = True
    target: Callable[[int], str] = lambda n: ""
    passes: Callable[[float], bool] | None = None


def p50_target(n: int) -> str:
    return f"<= {TARGET_P50_MS:g} ms" if n == TARGET_CLIENTS else ""


ROWS = (
    Row("set_progress->event p50", "p50", "ms", target=p50_target,
        passes=lambda value: value <= TARGET_P50_MS),
    Row("set_progress->event p99", "p99", "ms"),
    Row("slowest client, per step", "slowest", "ms"),
    Row("server CPU per event", "cpu_event", "us"),
    Row("server CPU per step", "cpu_step", "ms"),
    Row("events lost or unended", "lost", "", ratio=False, target=lambda n: "none",
        passes=lambda value: value == 0),
    Row("client process busy", "client_busy", "%", ratio=False),
    Row("bytes per event", "bytes", "B"),
)  # fmt: skip


def fmt(value: float, unit: str) -> str:
    """A figure with its unit, rounded for reading."""
    if value != value:  # NaN: nothing arrived
        return "-"
    if unit == "ms":
        return f"{value:.2f} ms" if value < 100 else f"{value:,.0f} ms"
    if unit == "us":
        return f"{value:,.1f} us" if value < 100 else f"{value:,.0f} us"
    if unit == "%":
        return f"{value:.1f} %" if value < 10 else f"{value:.0f} %"
    return f"{value:,.0f} {unit}".rstrip()


def verdict(row: Row, n: int, value: float) -> str:
    """PASS, MISS, or '' where the row has no target at ``n`` clients."""
    if row.passes is None or not row.target(n):
        return ""
    return "PASS" if row.passes(value) else "MISS"


def table_rows(sizes: Sizes, medians: dict[str, float]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for n in sizes.clients:
        for row in ROWS:
            mine, base = medians[f"{n}.asyncjob.{row.key}"], medians[f"{n}.baseline.{row.key}"]
            ratio = f"{mine / base:.2f}x" if row.ratio and base else ""
            rows.append(
                (
                    f"{n:,}",
                    row.label,
                    fmt(mine, row.unit),
                    fmt(base, row.unit),
                    ratio,
                    row.target(n),
                    verdict(row, n, mine),
                )
            )
    return rows


def render(rows: list[tuple[str, ...]], markdown: bool) -> str:
    """The table, aligned as text, or in Markdown."""
    head = ("clients", "measure", "asyncjob", "baseline", "ratio", "target", "")
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "| ---: | --- | ---: | ---: | ---: | --- | --- |"]
        return "\n".join([*lines, *("| " + " | ".join(r) + " |" for r in rows)])
    every = [head, *rows]
    widths = [max(len(line[i]) for line in every) for i in range(len(head))]
    aligns = "><>>><<"
    out = [
        "  ".join(f"{c:{a}{w}}" for c, a, w in zip(line, aligns, widths, strict=True)).rstrip()
        for line in every
    ]
    rule = "-" * max(len(line) for line in out)
    return "\n".join([out[0], rule, *out[1:]])


def unit_of(key: str) -> str:
    measure = key.rsplit(".", 1)[1]
    for row in ROWS:
        if row.key == measure:
            return row.unit
    return {"client_cpu_event": "us", "server_idle": "%"}.get(measure, "")


def spread(samples: dict[str, list[float]]) -> str:
    """Each raw figure's median and range over the repetitions."""
    lines = []
    for key, values in samples.items():
        unit = unit_of(key)
        lo, mid, hi = min(values), statistics.median(values), max(values)
        lines.append(f"  {key:<30} {fmt(mid, unit):>12}   range {fmt(lo, unit)} .. {fmt(hi, unit)}")
    return "\n".join(lines)


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in ("asyncjob-runner", "uvicorn", "starlette", "sse-starlette", "h11"):
        found[name] = importlib.metadata.version(name)
    # What uvicorn's "auto" picks: httptools if it is installed, else h11.
    found["http"] = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return found


def header(sizes: Sizes, digest: str, found: dict[str, str]) -> str:
    """What was run, and where."""
    return (
        f"asyncjob {found['asyncjob-runner']} (sources {digest}) live progress to SSE clients: "
        f"Python {found['python']}, {os.cpu_count()} CPU(s), medians of {sizes.repeat} "
        f"repetition(s)\nuvicorn {found['uvicorn']} ({found['http']}, asyncio loop), "
        f"starlette {found['starlette']}, sse-starlette {found['sse-starlette']}; "
        f"{sizes.steps} steps measured after {sizes.warmup}, >= {sizes.spacing:g} s apart; "
        "ratio = asyncjob / baseline"
    )


def write_json(
    path: Path, sizes: Sizes, digest: str, found: dict[str, str], samples: dict[str, list[float]]
) -> None:
    """Save sizes, versions, every sample, medians and verdicts."""
    medians = {k: statistics.median(v) for k, v in samples.items()}
    rows = [dict(zip(("clients", "measure", "asyncjob", "baseline", "ratio", "target", "result"),
                     r, strict=True)) for r in table_rows(sizes, medians)]  # fmt: skip
    doc = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "sources": digest,
        "versions": found,
        "cpus": os.cpu_count(),
        "sizes": dataclasses.asdict(sizes),
        "samples": samples,
        "medians": medians,
        "rows": rows,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")


def profile(sizes: Sizes, path: Path) -> int:
    """One asyncjob measurement at the largest number of clients, its server
    under cProfile over the measured steps; the top of the profile printed."""
    n = max(sizes.clients)
    raise_open_files(n + 100)
    progress(f"profiling asyncjob's server, {n} clients, {sizes.steps} steps ...")
    outcome = asyncio.run(measure("asyncjob", n, sizes, profile=path))
    these = figures(outcome, sizes.steps)
    out = io.StringIO()
    for order in ("tottime", "cumulative"):
        pstats.Stats(str(path), stream=out).sort_stats(order).print_stats(25)
    print(
        f"asyncjob, {n} clients, under cProfile: p50 {these['p50']:.2f} ms, "
        f"p99 {these['p99']:.2f} ms, server CPU {these['cpu_event']:.0f} us/event "
        f"({outcome.delivered} events)\nprofile: {path}\n\n{out.getvalue()}"
    )
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--quick", action="store_true", help="1 and 50 clients, 5 steps, 1 repetition"
    )
    parser.add_argument("--repeat", type=int, help="repetitions (default 3, or 1 with --quick)")
    parser.add_argument("--clients", metavar="N,N,...", help="numbers of clients (1,100,1000)")
    parser.add_argument("--steps", type=int, help="steps measured (default 20, or 5 with --quick)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results here")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table too")
    parser.add_argument(
        "--profile", type=Path, metavar="PATH",
        help="instead of the benchmark: asyncjob's server under cProfile, at the most clients",
    )  # fmt: skip
    # The server process's side.
    parser.add_argument("--serve", choices=SUBJECTS, help=argparse.SUPPRESS)
    parser.add_argument("--server-profile", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve:
        return serve(args.serve, args.server_profile)
    sizes = QUICK if args.quick else FULL
    if args.repeat is not None:
        if args.repeat < 1:
            sys.exit("--repeat must be at least 1")
        sizes = dataclasses.replace(sizes, repeat=args.repeat)
    if args.steps is not None:
        if args.steps < 1:
            sys.exit("--steps must be at least 1")
        sizes = dataclasses.replace(sizes, steps=args.steps)
    if args.clients is not None:
        try:
            clients = tuple(int(n) for n in args.clients.split(","))
        except ValueError:
            sys.exit(f"--clients: numbers separated by commas, not {args.clients!r}")
        if not clients or min(clients) < 1:
            sys.exit("--clients: each at least 1")
        sizes = dataclasses.replace(sizes, clients=clients)
    try:
        if args.profile is not None:
            return profile(sizes, args.profile)
        return run_benchmark(sizes, args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        kill_leftovers()


def run_benchmark(sizes: Sizes, args: argparse.Namespace) -> int:
    digest = source_digest()  # of the code just imported, before any of it runs
    found = versions()
    samples: dict[str, list[float]] = {}
    for i in range(sizes.repeat):
        progress(f"repetition {i + 1}/{sizes.repeat} ...")
        for key, value in one_repetition(sizes, i).items():
            samples.setdefault(key, []).append(value)
    medians = {k: statistics.median(v) for k, v in samples.items()}
    rows = table_rows(sizes, medians)
    parts = [header(sizes, digest, found), render(rows, markdown=False)]
    if TARGET_CLIENTS not in sizes.clients:
        parts.append(f"(the p50 target is for {TARGET_CLIENTS:,} clients: not measured here)")
    if args.markdown:
        parts.append(render(rows, markdown=True))
    parts += ["medians and ranges:", spread(samples)]
    print(*parts, sep="\n\n")
    if args.json is not None:
        write_json(args.json, sizes, digest, found, samples)
    # A smoke run fails when a client lost an event or a stream did not end:
    # a broken promise, unlike a missed latency target (printed as MISS).
    broken = [k for k, v in samples.items() if k.endswith(".asyncjob.lost") and max(v)]
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
