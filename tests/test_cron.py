"""Periodic jobs: cron schedules parsed, refused when wrong, and each tick
performed once, by one runner or by several worker processes."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import asyncjob
from asyncjob._core.cron import Cron
from asyncjob._core.registry import schedules
from asyncjob._worker.scheduler import tick_job_id
from asyncjob.stores import Store
from asyncjob.testing import make_job

from .conftest import TIMEOUT, Database, RunnerFactory
from .processes import Workers

pytestmark = pytest.mark.usefixtures("clean_registry")

#: Where tests/cron_jobs.py, which this process must not import (its other
#: runners would keep the schedule), finds the port of the listener here.
PORT_VARIABLE = "ASYNCJOB_TEST_CRON_PORT"


def at(text: str) -> float:
    """A moment, as seconds since the epoch, from an ISO text in UTC."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


# -- parsing ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        ("*/5 * * * *", "2026-12-04 10:02:30", "2026-12-04 10:05:00"),
        ("*/5 * * * *", "2026-12-04 10:05:00", "2026-12-04 10:10:00"),  # after, not at
        ("0 3 * * *", "2026-12-04 10:00:00", "2026-12-05 03:00:00"),
        ("0 9 * * mon", "2026-12-04 10:00:00", "2026-12-07 09:00:00"),  # a Friday
        ("*/10 * * * * *", "2026-12-04 10:00:01", "2026-12-04 10:00:10"),  # seconds first
        ("  0   3 * * *  ", "2026-12-04 10:00:00", "2026-12-05 03:00:00"),
    ],
)
def test_next_tick(expression: str, after: str, expected: str) -> None:
    """Ticks fall where crontab puts them, in UTC; a sixth field, first,
    gives seconds; spacing does not matter."""
    assert Cron(expression).next_after(at(after)) == at(expected)


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        ("2026-12-04 10:07:00", "2026-12-04 10:05:00"),
        ("2026-12-04 10:05:00", "2026-12-04 10:05:00"),  # at, included
        ("2026-12-04 10:04:59.9", "2026-12-04 10:00:00"),
    ],
)
def test_last_tick(moment: str, expected: str) -> None:
    """The tick a runner performs when it looks at ``moment``."""
    assert Cron("*/5 * * * *").last_at_or_before(at(moment)) == at(expected)


@pytest.mark.parametrize(
    ("expression", "why"),
    [
        ("61 * * * *", "its minute field is wrong"),
        ("* 25 * * *", "its hour field is wrong"),
        ("* * 32 * *", "its day-of-month field is wrong"),
        ("0 0 30 2 *", "its day-of-month field is wrong"),  # February has no 30th
        ("* * * 13 *", "its month field is wrong"),
        ("* * * * mon-xyz", "its day-of-week field is wrong"),
        ("*/0 * * * *", "its minute field is wrong"),
        ("99 * * * * *", "its second field is wrong"),
        ("* * * *", "it has 4 fields"),
        ("* * * * * * *", "it has 7 fields"),
        ("", "it has 0 fields"),
    ],
)
def test_a_malformed_schedule_says_which_field(expression: str, why: str) -> None:
    """The message quotes the expression and names the field at fault, at
    the decorator: nothing is registered."""
    with pytest.raises(
        ValueError, match=f"^{re.escape(repr(expression))} is not a cron schedule: {why}"
    ):
        asyncjob.periodic(expression)
    with pytest.raises(ValueError, match=why):
        Cron(expression)
    assert schedules() == []


def test_a_schedule_is_a_string() -> None:
    with pytest.raises(TypeError, match="a cron schedule is a string such as"):
        asyncjob.periodic(5)  # type: ignore[arg-type]


# -- registering ----------------------------------------------------------------


def needs_a_day(day: str) -> None:
    """A job that cannot run on a schedule: it needs an argument."""


def has_defaults(day: str = "today", *args: object, **kwargs: object) -> None:
    """A job that can: everything it takes has a default."""


async def refresh() -> None:
    """A periodic job of the tests below, registered by each test."""


def test_a_periodic_job_needs_no_arguments() -> None:
    """@periodic performs with no arguments: a function that needs one is
    refused at the decorator, saying which, and nothing is registered."""
    with pytest.raises(TypeError, match=r"performs needs_a_day with no arguments.*needs day"):
        asyncjob.periodic("* * * * *")(needs_a_day)
    assert schedules() == []
    assert asyncjob.periodic("* * * * *")(has_defaults) is has_defaults
    assert [s.name for s in schedules()] == ["tests.test_cron.has_defaults"]


def test_a_periodic_job_is_module_level() -> None:
    """As every registered job: a worker finds it by its name."""

    async def local() -> None: ...

    with pytest.raises(TypeError):
        asyncjob.periodic("* * * * *")(local)
    assert schedules() == []


def test_periodic_with_job_options() -> None:
    """Options are @job's: a name, retries, a queue; the schedule is named
    after the job."""
    asyncjob.periodic("0 3 * * *", name="reports.nightly", queue="reports", retries=2)(refresh)
    [schedule] = schedules()
    assert (schedule.name, schedule.cron.expression) == ("reports.nightly", "0 3 * * *")


def test_periodic_above_job() -> None:
    """Above @asyncjob.job it takes that registration; options given to
    both would leave one of them unsaid, so they are refused."""
    asyncjob.periodic("0 3 * * *")(asyncjob.job(name="reports.daily", queue="q")(refresh))
    assert [s.name for s in schedules()] == ["reports.daily"]
    with pytest.raises(ValueError, match=r"registered with @asyncjob\.job already"):
        asyncjob.periodic("0 4 * * *", retries=3)(refresh)
    assert [s.cron.expression for s in schedules()] == ["0 3 * * *"]


# -- performing ------------------------------------------------------------------


class Enqueued(asyncjob.JobHooks):
    """Hears of every job the runner records, in order."""

    def __init__(self) -> None:
        self.ids: asyncio.Queue[str] = asyncio.Queue()

    async def enqueued(self, jobs: Sequence[asyncjob.JobInfo]) -> None:
        for job in jobs:
            self.ids.put_nowait(job.id)

    async def next(self) -> str:
        async with asyncio.timeout(TIMEOUT):
            return await self.ids.get()


def tick_of(name: str, job_id: str, near: float) -> int:
    """The tick (a whole second) whose job has ``job_id``, within a minute
    of ``near``."""
    for tick in range(int(near) - 60, int(near) + 60):
        if tick_job_id(name, tick) == job_id:
            return tick
    raise AssertionError(f"{job_id} is the job of no tick of {name} near {near}")


async def test_ticks_on_the_memory_store(make_runner: RunnerFactory) -> None:
    """One runner, in-process: each second's tick performed once, in order,
    the first after the runner started; the schedule says the last tick
    and the next."""
    asyncjob.periodic("* * * * * *")(refresh)
    name = "tests.test_cron.refresh"
    heard = Enqueued()
    runner = await make_runner(hooks=[heard])
    [before] = await runner.schedules()
    assert (before.name, before.cron, before.last_tick) == (name, "* * * * * *", None)
    ids = [await heard.next() for _ in range(3)]
    started = (await runner.status(ids[0])).enqueued_at.timestamp()
    ticks = [tick_of(name, job_id, started) for job_id in ids]
    assert ticks == [ticks[0], ticks[0] + 1, ticks[0] + 2]
    for job_id in ids:
        assert await runner.wait(job_id, TIMEOUT) is None
    [after] = await runner.schedules()
    assert after.last_tick is not None
    assert after.next_tick is not None
    assert after.last_tick >= datetime.fromtimestamp(ticks[-1], UTC)
    assert after.next_tick == after.last_tick + timedelta(seconds=1)


async def test_a_producer_keeps_no_schedule(database: Database, make_runner: RunnerFactory) -> None:
    """Producer-only runners perform, never tick; a worker taking other
    queues leaves the schedule to the workers of its queue."""
    asyncjob.periodic("* * * * * *", queue="reports")(refresh)
    producer = await make_runner(database.async_url, producer_only=True)
    other = await make_runner(database.async_url, queues=["mail"])
    worker = await make_runner(database.async_url, queues=["reports"])
    assert producer._scheduler() is None
    assert other._scheduler() is None
    assert worker._scheduler() is not None


async def test_a_runner_of_the_default_queue_keeps_its_schedules(
    make_runner: RunnerFactory,
) -> None:
    """A periodic job registered without a queue waits in "default": a
    runner given that queue (``asyncjob worker --queue default``) performs
    its ticks. It compared the queue the job was registered with, none,
    and kept no schedule: a fleet of a worker per queue never ran them."""
    asyncjob.periodic("* * * * * *")(refresh)
    heard = Enqueued()
    runner = await make_runner(queues=["default"], hooks=[heard])
    assert await runner.wait(await heard.next(), TIMEOUT) is None


@contextlib.asynccontextmanager
async def opened(url: str) -> AsyncIterator[Store]:
    async with asyncjob.Runner(url, producer_only=True) as runner:
        yield runner.store


async def test_missed_ticks_give_one_late_run(
    database: Database, make_runner: RunnerFactory
) -> None:
    """The store last performed the schedule an hour ago (no runner ran
    since): a runner starting now performs the last tick once, late, not
    the sixty it missed."""
    asyncjob.periodic("* * * * *")(refresh)
    name = "tests.test_cron.refresh"
    async with opened(database.async_url) as store:
        hour_ago = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=1)
        recorded = asyncjob.ScheduleStatus(name, "* * * * *", hour_ago, None)
        assert await store.tick(recorded, make_job("seen", registered=True)) is False
    heard = Enqueued()
    runner = await make_runner(database.async_url, hooks=[heard])
    late = await heard.next()
    assert await runner.wait(late, TIMEOUT) is None
    minute = tick_of_minute(name, late)
    assert minute > hour_ago.timestamp()
    # One run for the hour missed; another only if a minute began since.
    ran = await runner.jobs(name=name)
    assert [s.id for s in ran if s.id != late] in ([], [tick_job_id(name, minute + 60)])


def tick_of_minute(name: str, job_id: str) -> int:
    now = int(datetime.now(UTC).timestamp()) // 60 * 60
    for minute in range(now - 120, now + 120, 60):
        if tick_job_id(name, minute) == job_id:
            return minute
    raise AssertionError(f"{job_id} is the job of no minute's tick of {name}")


async def test_two_worker_processes_perform_each_tick_once(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two ``asyncjob worker`` processes keep the same every-second
    schedule: over several ticks, each tick is run once, by one of them,
    and none is skipped. Each run tells a listener here its job id."""
    runs: asyncio.Queue[tuple[str, str]] = asyncio.Queue()

    async def hear(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        job_id, pid = (await reader.readline()).decode().split()
        runs.put_nowait((job_id, pid))
        writer.close()

    server = await asyncio.start_server(hear, "127.0.0.1", 0)
    monkeypatch.setenv(PORT_VARIABLE, str(server.sockets[0].getsockname()[1]))
    workers = Workers(tmp_path, url=database.async_url, module="tests.cron_jobs")
    name = "tests.cron_jobs.every_second"
    heard: list[tuple[str, str]] = []
    ticks: set[int] = set()
    try:
        workers.start()
        workers.start()
        # Until five ticks in a row were heard (runs of two workers may
        # arrive out of order).
        async with asyncio.timeout(TIMEOUT + 5):
            while not ticks or not set(range(min(ticks), min(ticks) + 5)) <= ticks:
                job_id, pid = await runs.get()
                heard.append((job_id, pid))
                ticks.add(tick_of(name, job_id, datetime.now(UTC).timestamp()))
    except BaseException:
        print(workers.output())
        raise
    finally:
        workers.stop_all()
        server.close()
        await server.wait_closed()
    while not runs.empty():
        heard.append(runs.get_nowait())
    ids = [job_id for job_id, _ in heard]
    assert len(set(ids)) == len(ids), f"a tick ran twice: {heard}\n{workers.output()}"
