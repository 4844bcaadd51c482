"""Scheduling and flow control at the runner level: asyncjob.using's options
(delay, at, priority, queue, unique, transaction), registered defaults,
concurrency limits and the queues a runner takes, on the memory store and
the SQL stores.

Every wait is bounded (``TIMEOUT``) and nothing sleeps to synchronise: jobs
wait on events the test sets, and the test waits on the runner. Delays are
short (``DELAY``); the only timing facts asserted are orderings
(``started_at >= run_after``), never durations.
"""

from __future__ import annotations

import asyncio
import functools
import math
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

import asyncjob
from asyncjob import JobState, JobStatus
from asyncjob._core.models import Claimed
from asyncjob._core.registry import definition_of, limits
from asyncjob.stores import MemoryStore, Store
from asyncjob.stores.sql import SQLStore

from . import scheduling_jobs
from .conftest import TIMEOUT, Database, RunnerFactory

#: How long delayed jobs wait: long enough for the test to read them while
#: they wait, short enough to keep the file fast.
DELAY = 0.4

#: What a delayed job's ``run_after`` may differ from the ``at`` it was
#: given: stores keep times as float seconds since the epoch, and a
#: datetime made back from them is rounded to the microsecond.
ROUNDING = timedelta(microseconds=1)

StoreMaker = Callable[[], Store]

# The tests name the database (``new_store``, ``database``) before
# ``make_runner``: fixtures are torn down in the reverse order, so their
# runners stop before their database is dropped, not while it goes away.


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def new_store(request: pytest.FixtureRequest) -> StoreMaker:
    """Makes stores of one kind: memory, or SQL on a test database (the
    stores made for one test share its database)."""
    if request.param == "memory":
        return MemoryStore
    db: Database = request.getfixturevalue(f"{request.param}_db")
    return functools.partial(SQLStore, db.async_url, poll_interval=0.05)


def new_gate() -> str:
    """The name of a gate of :func:`scheduling_jobs.gated` of its own: an
    event is bound to the loop of the test that first waits on it."""
    return f"gate-{uuid.uuid4().hex}"


def open_gate(name: str) -> None:
    """Let the :func:`scheduling_jobs.gated` jobs waiting on ``name`` end."""
    scheduling_jobs.GATES.setdefault(name, asyncio.Event()).set()


async def until(runner: asyncjob.Runner, job_id: str, state: JobState) -> JobStatus:
    """The job's status once it is in ``state`` (within ``TIMEOUT``)."""
    async with asyncio.timeout(TIMEOUT):
        async for status in runner.watch(job_id):
            if status.state is state:
                return status
    raise AssertionError(f"job {job_id} ended without being {state.value}")


async def noop() -> None:
    """A job that does nothing."""


def never_registered(n: int) -> int:
    """A module-level function that the refused registrations leave alone."""
    return n


# -- what using(), @asyncjob.job and Runner(queues=) refuse -------------------------------

NAIVE = datetime(2030, 1, 1, 12, 0)
AWARE = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


#: Past the year 9999 in UTC: a start no datetime can hold.
LAST_HOUR_OF_9999_IN_NEW_YORK = datetime(9999, 12, 31, 23, 0, tzinfo=timezone(-timedelta(hours=5)))


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"at": NAIVE}, ValueError, r"at must be an aware datetime .*tzinfo=datetime\.UTC"),
        ({"at": 1893499200.0}, TypeError, "at must be a datetime, not float"),
        ({"at": "2030-01-01T12:00Z"}, TypeError, "at must be a datetime, not str"),
        ({"delay": 5, "at": AWARE}, ValueError, "give delay= or at=, not both"),
        ({"delay": timedelta(0), "at": AWARE}, ValueError, "not both"),
        ({"delay": -1}, ValueError, r"delay must be from 0 to 3153600000 seconds .*not -1"),
        ({"delay": -0.001}, ValueError, "delay must be from 0 to"),
        ({"delay": timedelta(seconds=-1)}, ValueError, "delay must be from 0 to"),
        ({"delay": math.nan}, ValueError, "delay must be from 0 to"),
        ({"delay": math.inf}, ValueError, "delay must be from 0 to"),
        # Later than a century: one past the year 9999 could not be read back.
        ({"delay": 1e12}, ValueError, r"delay must be from 0 to 3153600000 seconds \(a century\)"),
        ({"delay": timedelta(days=365 * 101)}, ValueError, "delay must be from 0 to"),
        ({"at": LAST_HOUR_OF_9999_IN_NEW_YORK}, ValueError, "at must be within a century"),
        ({"delay": "1"}, TypeError, "delay must be a number of seconds or a timedelta, not str"),
        ({"delay": True}, TypeError, "delay must be a number of seconds or a timedelta, not bool"),
        ({"priority": -101}, ValueError, "priority must be from -100 to 100 .*not -101"),
        ({"priority": 101}, ValueError, "priority must be from -100 to 100 .*not 101"),
        ({"priority": True}, TypeError, "priority must be an int from -100 to 100, not bool"),
        ({"priority": 1.5}, TypeError, "priority must be an int from -100 to 100, not float"),
        ({"priority": "1"}, TypeError, "priority must be an int from -100 to 100, not str"),
        ({"queue": ""}, ValueError, "queue must be a non-empty string of at most 64 characters"),
        ({"queue": "   "}, ValueError, "queue must be a non-empty string"),
        ({"queue": "q" * 65}, ValueError, "queue must be a non-empty string of at most 64"),
        ({"queue": "a\x00b"}, ValueError, "without NUL"),
        ({"queue": 1}, TypeError, "queue must be a string, not int"),
        ({"queue": b"mail"}, TypeError, "queue must be a string, not bytes"),
        ({"queue": ["a"]}, TypeError, "queue must be a string, not list"),
        ({"unique": ""}, ValueError, "unique must be a non-empty string of at most 255"),
        ({"unique": "k" * 256}, ValueError, "unique must be a non-empty string of at most 255"),
        ({"unique": 7}, TypeError, "unique must be a string, not int"),
        ({"unique": ("a", 1)}, TypeError, "unique must be a string, not tuple"),
        (
            {"retries": 3},
            TypeError,
            r"using\(\) takes the options delay, at, priority, queue, unique, transaction, "
            r"not retries: the job's own arguments go to perform\(\)",
        ),
        ({"prio": 1, "delai": 2}, TypeError, "takes the options .*, not delai, prio"),
        ({"transaction": "session"}, TypeError, "transaction must be an SQLAlchemy AsyncSession"),
    ],
)
async def test_using_refuses_a_bad_option_and_records_nothing(
    runner: asyncjob.Runner, options: dict[str, Any], error: type[Exception], message: str
) -> None:
    """A wrong option fails at using() itself, with the exception the
    contract names and a message that says what is allowed; no job is
    recorded, and none is left for the runner to wait for."""
    with pytest.raises(error, match=message):
        await runner.perform(asyncjob.using(noop, **options))
    assert await runner.jobs() == []
    await runner.join(TIMEOUT)


@pytest.mark.parametrize(
    ("func", "message"),
    [
        (42, r"using\(\) needs a callable, not int"),
        ("tests.scheduling_jobs.echo", r"using\(\) needs a callable, not str"),
        (None, r"using\(\) needs a callable, not NoneType"),
    ],
)
async def test_using_refuses_what_is_not_callable(
    runner: asyncjob.Runner, func: Any, message: str
) -> None:
    """Only a callable can be performed: a TypeError that names what was given."""
    with pytest.raises(TypeError, match=message):
        asyncjob.using(func)
    with pytest.raises(TypeError, match=message):
        asyncjob.using(func, priority=5)
    assert await runner.jobs() == []


async def test_options_are_given_once_in_one_using_call(runner: asyncjob.Runner) -> None:
    """A spec carries its options, and perform() takes no options of its own
    (its keywords are the job's). Wrapping a spec in using() again, to add
    or change options, is refused saying to give them all in one call,
    rather than silently keeping one set of options or the other."""
    made = asyncjob.using(scheduling_jobs.echo, priority=5)
    assert isinstance(made, asyncjob.JobSpec)
    spec: Any = made  # what a caller without a type checker may pass
    made_already = r"a spec made already .*: give all the options in one using\(\) call"
    with pytest.raises(TypeError, match=made_already):
        asyncjob.using(spec)
    with pytest.raises(TypeError, match=made_already):
        asyncjob.using(spec, queue="other")
    assert await runner.jobs() == []


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"concurrency": 0}, ValueError, "concurrency must be an int >= 1, or None, not 0"),
        ({"concurrency": -1}, ValueError, "concurrency must be an int >= 1, or None, not -1"),
        ({"concurrency": True}, ValueError, "concurrency must be an int >= 1, or None, not True"),
        ({"concurrency": 1.5}, ValueError, "concurrency must be an int >= 1"),
        ({"concurrency": "2"}, ValueError, "concurrency must be an int >= 1"),
        ({"queue": ""}, ValueError, "queue must be a non-empty string"),
        ({"queue": 3}, TypeError, "queue must be a string, not int"),
        ({"priority": 101}, ValueError, "priority must be from -100 to 100"),
        ({"priority": -101}, ValueError, "priority must be from -100 to 100"),
        ({"priority": "high"}, TypeError, "priority must be an int from -100 to 100, not str"),
        ({"priority": False}, TypeError, "priority must be an int from -100 to 100, not bool"),
    ],
)
@pytest.mark.usefixtures("clean_registry")
def test_job_refuses_bad_defaults_and_registers_nothing(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    """@asyncjob.job checks its queue, priority and concurrency when it is
    given them, before registering anything: the function stays
    unregistered and no limit is kept for it."""
    limits_before = dict(limits())
    with pytest.raises(error, match=message):
        asyncjob.job(**options)(never_registered)
    assert definition_of(never_registered) is None
    assert dict(limits()) == limits_before


@pytest.mark.parametrize(
    ("queues", "error", "message"),
    [
        ([], ValueError, r"queues must name at least one queue \(or be None: every queue\)"),
        ((), ValueError, "queues must name at least one queue"),
        (iter([]), ValueError, "queues must name at least one queue"),
        ("mail", TypeError, "queues must be a list of queue names, not 'mail'"),
        (5, TypeError, "queues must be a list of queue names, not 5"),
        ([1], TypeError, "a queue name must be a string, not int"),
        (["a", None], TypeError, "a queue name must be a string, not NoneType"),
        (["a", ""], ValueError, "a queue name must be a non-empty string"),
        (["q" * 65], ValueError, "a queue name must be a non-empty string of at most 64"),
    ],
)
async def test_runner_refuses_bad_queues(queues: Any, error: type[Exception], message: str) -> None:
    """Runner(queues=...) takes a list of queue names: an empty list, a bare
    string (a list of letters, by mistake) or a name that is not one is
    refused when the runner is made, so no runner starts taking jobs."""
    with pytest.raises(error, match=message):
        asyncjob.Runner(MemoryStore(), queues=queues)
    with pytest.raises(asyncjob.RunnerNotRunning):
        await asyncjob.perform(noop)


def test_runner_takes_any_iterable_of_queue_names() -> None:
    """The counterpart of the refusals: a tuple or a generator of names is
    fine, and None means every queue."""
    assert asyncjob.Runner(MemoryStore(), queues=("a", "b")).queues == frozenset({"a", "b"})
    assert asyncjob.Runner(MemoryStore(), queues=(q for q in ["a"])).queues == frozenset({"a"})
    assert asyncjob.Runner(MemoryStore()).queues is None


async def test_the_bounds_are_allowed(new_store: StoreMaker, make_runner: RunnerFactory) -> None:
    """The limits are inclusive: priorities -100 and 100, a queue name of 64
    characters, a key of 255; a zero delay or a moment already past start
    the job at once, with no run_after."""
    runner = await make_runner(new_store())
    past = datetime.now(UTC) - timedelta(days=1)
    specs = [
        (asyncjob.using(scheduling_jobs.echo, priority=-100), "default", -100, None),
        (asyncjob.using(scheduling_jobs.echo, priority=100), "default", 100, None),
        (asyncjob.using(scheduling_jobs.echo, queue="q" * 64), "q" * 64, 0, None),
        (asyncjob.using(scheduling_jobs.echo, unique="k" * 255), "default", 0, "k" * 255),
        (asyncjob.using(scheduling_jobs.echo, delay=0), "default", 0, None),
        (asyncjob.using(scheduling_jobs.echo, delay=timedelta(0)), "default", 0, None),
        (asyncjob.using(scheduling_jobs.echo, at=past), "default", 0, None),
    ]
    for n, (spec, queue, priority, unique) in enumerate(specs):
        job_id = await runner.perform(spec, n)
        status = await runner.status(job_id)
        assert (status.queue, status.priority, status.unique) == (queue, priority, unique)
        assert status.run_after is None
        assert await runner.wait(job_id, TIMEOUT) == n


# -- the job's own arguments ----------------------------------------------------------------

OWN = {"delay": 5, "priority": "high", "queue": [1, 2], "unique": True, "at": "noon"}


async def test_a_jobs_own_arguments_are_never_options(
    new_store: StoreMaker, make_runner: RunnerFactory
) -> None:
    """A job whose parameters are called delay, priority, queue, unique and
    at gets them as given, performed plain or through using(): perform()
    never reads options from the job's arguments, and the options given to
    using() never reach the job."""
    runner = await make_runner(new_store())
    job = scheduling_jobs.own_options

    plain = await runner.perform(job, **OWN)
    assert await runner.wait(plain, TIMEOUT) == OWN
    status = await runner.status(plain)
    assert (status.queue, status.priority, status.unique) == ("default", 0, None)

    positional = await runner.perform(job, *OWN.values())
    assert await runner.wait(positional, TIMEOUT) == OWN

    spec = asyncjob.using(job, priority=3, queue="own", unique=f"own-{uuid.uuid4().hex}")
    with_options = await runner.perform(spec, **OWN)
    assert await runner.wait(with_options, TIMEOUT) == OWN
    status = await runner.status(with_options)
    assert (status.queue, status.priority, status.unique) == ("own", 3, spec.unique)

    many = await runner.perform_many(asyncjob.using(job, priority=-3), [OWN, tuple(OWN.values())])
    assert [await runner.wait(job_id, TIMEOUT) for job_id in many] == [OWN, OWN]
    assert {(await runner.status(job_id)).priority for job_id in many} == {-3}


# -- delayed jobs ---------------------------------------------------------------------------


def delayed(func: Callable[..., Any], when: str) -> tuple[asyncjob.JobSpec, datetime | None]:
    """``func`` performed ``DELAY`` seconds from now, as ``when`` says, and
    the moment given to ``at=``, if it was."""
    if when == "delay seconds":
        return asyncjob.using(func, delay=DELAY), None
    if when == "delay timedelta":
        return asyncjob.using(func, delay=timedelta(seconds=DELAY)), None
    at = datetime.now(UTC) + timedelta(seconds=DELAY)
    return asyncjob.using(func, at=at), at


async def check_delayed(
    runner: asyncjob.Runner, spec: asyncjob.JobSpec, at: datetime | None
) -> None:
    """Perform ``spec`` (a job returning its argument), and check that it
    waits queued with a run_after, then runs, not before its run_after.

    ``started_at`` and ``run_after`` come from one clock: on the memory
    store the process's, on an SQL store the database's for a registered
    job (both written by the database), and, for a job that runs where it
    was performed, the process's and the database's, one machine's here.
    """
    job_id = await runner.perform(spec, 7)
    queued = await runner.status(job_id)
    assert queued.state is JobState.queued
    assert queued.run_after is not None
    assert queued.run_after.utcoffset() == timedelta(0)  # aware, UTC
    assert queued.enqueued_at is not None
    assert queued.run_after > queued.enqueued_at
    if at is not None:
        assert abs(queued.run_after - at) <= ROUNDING
    assert await runner.wait(job_id, TIMEOUT) == 7
    ran = await runner.status(job_id)
    assert ran.state is JobState.succeeded
    assert ran.run_after is None
    assert ran.started_at is not None
    assert ran.started_at >= queued.run_after


@pytest.mark.parametrize("when", ["delay seconds", "delay timedelta", "at"])
async def test_a_delayed_job_waits_for_its_time(
    new_store: StoreMaker, make_runner: RunnerFactory, when: str
) -> None:
    """delay= (seconds or a timedelta) and at= (an aware datetime) keep a
    registered job queued, its run_after saying until when; it then runs,
    and did not start before its run_after."""
    runner = await make_runner(new_store())
    spec, at = delayed(scheduling_jobs.echo, when)
    await check_delayed(runner, spec, at)


@pytest.mark.parametrize("when", ["delay seconds", "at"])
async def test_a_delayed_job_that_runs_where_it_was_performed(
    database: Database, make_runner: RunnerFactory, when: str
) -> None:
    """On an SQL store, a job that is not registered runs in the process
    that performed it: it too waits for its run_after, recorded by the
    database."""
    runner = await make_runner(SQLStore(database.async_url, poll_interval=0.05))

    async def here(n: int) -> int:
        return n

    spec, at = delayed(here, when)
    await check_delayed(runner, spec, at)


@pytest.mark.parametrize("registered", [True, False], ids=["registered", "not-registered"])
async def test_a_cancelled_delayed_job_never_runs(
    new_store: StoreMaker, make_runner: RunnerFactory, registered: bool
) -> None:
    """A delayed job cancelled while it waits is cancelled at once, nothing
    is left for join() to wait for, its unique key is free again, and it
    does not start when its time comes: a job performed after it, due
    after it, runs while it stays cancelled."""
    runner = await make_runner(new_store())
    ran: list[int] = []

    async def here(n: int) -> int:
        ran.append(n)
        return n

    func: Callable[..., Any] = scheduling_jobs.echo if registered else here
    key = f"delayed-{uuid.uuid4().hex}"
    job_id = await runner.perform(asyncjob.using(func, delay=DELAY, unique=key), 1)
    assert (await runner.status(job_id)).run_after is not None
    assert await runner.cancel(job_id)
    assert (await runner.status(job_id)).state is JobState.cancelled
    await runner.join(TIMEOUT)

    later = await runner.perform(asyncjob.using(func, delay=DELAY, unique=key), 2)
    assert later != job_id  # the key was freed by the cancel
    assert await runner.wait(later, TIMEOUT) == 2
    with pytest.raises(asyncjob.JobCancelled):
        await runner.wait(job_id, TIMEOUT)
    cancelled = await runner.status(job_id)
    assert cancelled.state is JobState.cancelled
    assert (cancelled.started_at, cancelled.attempts) == (None, 0)
    assert 1 not in ran


# -- priorities -----------------------------------------------------------------------------


async def test_higher_priorities_start_first_then_fifo(make_runner: RunnerFactory) -> None:
    """Memory store, one slot: jobs waiting behind a running one start by
    priority, highest first, and in the order performed within a priority
    (a plain perform is priority 0). The priority never stops the job that
    runs."""
    runner = await make_runner(concurrency=1)
    started = asyncio.Event()
    release = asyncio.Event()
    order: list[str] = []

    async def blocker() -> None:
        started.set()
        await release.wait()

    async def job(label: str) -> None:
        order.append(label)

    first = await runner.perform(asyncjob.using(blocker, priority=-100))
    async with asyncio.timeout(TIMEOUT):
        await started.wait()
    performed = [
        ("low1", -5),
        ("mid1", 0),
        ("high1", 10),
        ("plain", None),
        ("mid2", 0),
        ("top", 100),
        ("low2", -5),
        ("high2", 10),
        ("bottom", -100),
    ]
    for label, priority in performed:
        spec = job if priority is None else asyncjob.using(job, priority=priority)
        job_id = await runner.perform(spec, label)
        assert (await runner.status(job_id)).priority == (priority or 0)
    assert order == []
    release.set()
    await runner.wait(first, TIMEOUT)
    await runner.join(TIMEOUT)
    assert order == ["top", "high1", "high2", "mid1", "plain", "mid2", "low1", "low2", "bottom"]


# -- queues ---------------------------------------------------------------------------------


async def test_a_memory_runner_refuses_a_queue_it_does_not_take(
    make_runner: RunnerFactory,
) -> None:
    """On the memory store no other runner could ever run a registered job
    of a queue this runner does not take: performing one is a ValueError
    naming the queues, and nothing is recorded; a plain perform waits in
    "default", and is treated as using(func, queue="default") is. A job of
    a queue it takes runs."""
    runner = await make_runner(queues=["a"])
    refusal = r"takes the queues \['a'\], and no other runner could take this job from the queue"
    with pytest.raises(ValueError, match=f"{refusal} 'b'"):
        await runner.perform(asyncjob.using(scheduling_jobs.echo, queue="b"), 1)
    with pytest.raises(ValueError, match=f"{refusal} 'b'"):
        await runner.perform_many(asyncjob.using(scheduling_jobs.echo, queue="b"), [(1,), (2,)])
    with pytest.raises(ValueError, match=f"{refusal} 'default'"):
        await runner.perform(asyncjob.using(scheduling_jobs.echo, queue="default"), 1)
    with pytest.raises(ValueError, match=f"{refusal} 'default'"):
        await runner.perform(scheduling_jobs.echo, 1)
    assert await runner.jobs() == []
    await runner.join(TIMEOUT)

    job_id = await runner.perform(asyncjob.using(scheduling_jobs.echo, queue="a"), 3)
    assert await runner.wait(job_id, TIMEOUT) == 3
    assert (await runner.status(job_id)).queue == "a"


async def test_jobs_not_registered_run_where_performed_whatever_their_queue(
    make_runner: RunnerFactory,
) -> None:
    """A closure or lambda runs in the process that performed it (no worker
    could import it): its queue is a label, and no runner refuses it."""
    runner = await make_runner(queues=["a"])

    async def here(n: int) -> int:
        return n

    job_id = await runner.perform(asyncjob.using(here, queue="b"), 1)
    assert await runner.wait(job_id, TIMEOUT) == 1
    assert (await runner.status(job_id)).queue == "b"
    assert await runner.wait(await runner.perform(here, 2), TIMEOUT) == 2


async def test_workers_take_only_their_queues(
    database: Database, make_runner: RunnerFactory
) -> None:
    """SQL store: a producer performs registered jobs to the queues "a" and
    "b"; a worker of "a" runs the "a" job and leaves the "b" job queued
    (performed first, so a worker taking every queue would have claimed it
    first); a worker of "b" then runs it."""
    producer = await make_runner(
        SQLStore(database.async_url, poll_interval=0.05), producer_only=True
    )
    in_b = await producer.perform(asyncjob.using(scheduling_jobs.echo, queue="b"), 2)
    in_a = await producer.perform(asyncjob.using(scheduling_jobs.echo, queue="a"), 1)

    worker_a = await make_runner(SQLStore(database.async_url, poll_interval=0.05), queues=["a"])
    assert await worker_a.wait(in_a, TIMEOUT) == 1
    waiting = await worker_a.status(in_b)
    assert (waiting.state, waiting.queue, waiting.attempts) == (JobState.queued, "b", 0)

    worker_b = await make_runner(SQLStore(database.async_url, poll_interval=0.05), queues=["b"])
    assert await worker_b.wait(in_b, TIMEOUT) == 2
    assert (await producer.status(in_a)).queue == "a"
    assert (await producer.status(in_b)).queue == "b"


# -- unique keys ----------------------------------------------------------------------------


async def test_a_unique_key_holds_while_queued_or_running(
    new_store: StoreMaker, make_runner: RunnerFactory
) -> None:
    """While a job performed with a key is queued or running, performing
    the same key (perform or perform_many) records nothing and returns that
    job's id; another key is another job. Once the job has ended, the key
    is free: the next perform records a new job."""
    runner = await make_runner(new_store())
    gate = new_gate()
    key = f"index-{uuid.uuid4().hex}"
    spec = asyncjob.using(scheduling_jobs.gated, unique=key)

    first = await runner.perform(spec, gate)
    assert await runner.perform(spec, gate) == first
    await until(runner, first, JobState.running)
    assert await runner.perform(spec, gate) == first
    assert await runner.perform_many(spec, [(gate,), (gate,)]) == [first, first]
    other = await runner.perform(asyncjob.using(scheduling_jobs.gated, unique=f"{key}-2"), gate)
    assert other != first
    assert {status.id for status in await runner.jobs()} == {first, other}
    assert (await runner.status(first)).unique == key

    open_gate(gate)
    assert await runner.wait(first, TIMEOUT) == gate
    assert await runner.wait(other, TIMEOUT) == gate
    again = await runner.perform(spec, gate)
    assert again not in (first, other)
    assert await runner.wait(again, TIMEOUT) == gate
    assert len(await runner.jobs()) == 3


async def test_a_unique_key_in_one_batch(new_store: StoreMaker, make_runner: RunnerFactory) -> None:
    """perform_many with a key records one job for the whole batch, and
    every item gets its id; so do performs of the same key at once."""
    runner = await make_runner(new_store())
    gate = new_gate()
    key = f"batch-{uuid.uuid4().hex}"
    ids = await runner.perform_many(
        asyncjob.using(scheduling_jobs.gated, unique=key), [(gate,), (gate,), (gate,)]
    )
    assert len(set(ids)) == 1
    spec = asyncjob.using(scheduling_jobs.gated, unique=f"{key}-at-once")
    together = await asyncio.gather(*(runner.perform(spec, gate) for _ in range(5)))
    assert len(set(together)) == 1
    assert len(await runner.jobs()) == 2
    open_gate(gate)
    assert await runner.wait(ids[0], TIMEOUT) == gate
    assert await runner.wait(together[0], TIMEOUT) == gate


async def test_a_unique_key_in_the_applications_transaction(
    database: Database, make_runner: RunnerFactory
) -> None:
    """using(func, transaction=session, unique=...): a key held by a job
    recorded outside the transaction returns that job's id, and a key
    performed twice in the transaction records one job, seen by the second
    perform before the commit. Once committed, the jobs run, and their keys
    are free again."""
    producer = await make_runner(
        SQLStore(database.async_url, poll_interval=0.05), producer_only=True
    )
    key = f"tx-{uuid.uuid4().hex}"
    outside = await producer.perform(asyncjob.using(scheduling_jobs.echo, unique=key), 1)
    engine = create_async_engine(database.async_url)
    try:
        sessions = async_sessionmaker(engine)
        async with sessions() as db, db.begin():
            held = asyncjob.using(scheduling_jobs.echo, transaction=db, unique=key)
            assert await producer.perform(held, 2) == outside
            fresh = asyncjob.using(scheduling_jobs.echo, transaction=db, unique=f"{key}-new")
            inside = await producer.perform(fresh, 3)
            assert await producer.perform(fresh, 4) == inside
            assert await producer.perform_many(fresh, [(5,)]) == [inside]
        assert {status.id for status in await producer.jobs()} == {outside, inside}

        worker = await make_runner(SQLStore(database.async_url, poll_interval=0.05))
        assert await worker.wait(outside, TIMEOUT) == 1
        assert await worker.wait(inside, TIMEOUT) == 3
        async with sessions() as db, db.begin():
            fresh = asyncjob.using(scheduling_jobs.echo, transaction=db, unique=f"{key}-new")
            anew = await producer.perform(fresh, 6)
        assert anew != inside
        assert await worker.wait(anew, TIMEOUT) == 6
    finally:
        await engine.dispose()


# -- concurrency limits ---------------------------------------------------------------------


@pytest.mark.usefixtures("clean_registry")
async def test_a_concurrency_limit_holds_and_holds_nobody_else_up(
    new_store: StoreMaker, make_runner: RunnerFactory
) -> None:
    """@asyncjob.job(concurrency=2): of six jobs performed to a runner of
    ten slots, two run at once, never more; the others wait queued without
    taking the free slots, so a job of another name performed after them
    starts and ends while they wait."""
    scheduling_jobs.register_limited()
    tally = scheduling_jobs.reset_limited()
    runner = await make_runner(new_store(), concurrency=10)
    ids = [await runner.perform(scheduling_jobs.limited, n) for n in range(6)]
    async with asyncio.timeout(TIMEOUT):
        await tally.full.wait()

    after = await runner.perform(scheduling_jobs.echo, 99)
    assert await runner.wait(after, TIMEOUT) == 99
    assert tally.running == scheduling_jobs.LIMIT
    states = [(await runner.status(job_id)).state for job_id in ids]
    assert states.count(JobState.running) == scheduling_jobs.LIMIT
    assert states.count(JobState.queued) == 6 - scheduling_jobs.LIMIT

    tally.release.set()
    assert [await runner.wait(job_id, TIMEOUT) for job_id in ids] == list(range(6))
    assert tally.peak == scheduling_jobs.LIMIT
    assert sorted(tally.started) == list(range(6))


class _EndsHeldBack(SQLStore):
    """An SQL store that writes no end before ``gate`` opens, and says
    (``looked``) when a claim came back after ``expected`` ends were handed
    to it: the jobs it may have waited for still count as running."""

    def __init__(self, url: str, expected: int) -> None:
        super().__init__(url, poll_interval=60.0)  # longer than any wait here
        self.gate, self.looked = asyncio.Event(), asyncio.Event()
        self.expected, self.handed = expected, 0

    def finish_soon(self, *args: Any, **kwargs: Any) -> None:
        self.handed += 1
        super().finish_soon(*args, **kwargs)

    async def claim(self, *args: Any, **kwargs: Any) -> list[Claimed]:
        handed = self.handed
        claimed = await super().claim(*args, **kwargs)
        if handed >= self.expected:
            self.looked.set()
        return claimed

    async def _finish(self, endings: list[Any]) -> list[str | Exception | None]:
        await self.gate.wait()
        return await super()._finish(endings)


@pytest.mark.usefixtures("clean_registry")
async def test_a_limits_slot_is_taken_once_the_end_is_written(
    database: Database, make_runner: RunnerFactory
) -> None:
    """A worker frees a job's slot when its code returns, but the store
    counts the job against its limit until its end is written: the worker
    claims the next one of its kind then, not at its next poll (a minute
    away). On SQLite the worker does not hear of its own commits: the
    engine wakes it when such an end is written."""
    scheduling_jobs.register_limited()
    tally = scheduling_jobs.reset_limited()
    tally.release.set()  # each job ends at once
    # Performed before the worker starts: its own start's commits (it lists
    # itself among the workers) are heard of before it claims, and nothing
    # else wakes it meanwhile.
    async with asyncjob.Runner(SQLStore(database.async_url), producer_only=True) as producer:
        ids = [await producer.perform(scheduling_jobs.limited, n) for n in range(3)]
    store = _EndsHeldBack(database.async_url, expected=scheduling_jobs.LIMIT)
    runner = await make_runner(store, concurrency=10)
    async with asyncio.timeout(TIMEOUT):
        await store.looked.wait()  # the third one is not to be had yet
    assert tally.started == [0, 1]
    store.gate.set()
    assert [await runner.wait(job_id, TIMEOUT) for job_id in ids] == [0, 1, 2]
    assert tally.peak <= scheduling_jobs.LIMIT


# -- perform_many with options, and registered defaults -------------------------------------


async def test_perform_many_gives_every_job_the_options(
    new_store: StoreMaker, make_runner: RunnerFactory
) -> None:
    """perform_many(using(func, ...), items): each job is recorded with the
    spec's priority, queue and delay, and none starts before its time."""
    runner = await make_runner(new_store())
    spec = asyncjob.using(scheduling_jobs.echo, priority=5, queue="many", delay=DELAY)
    ids = await runner.perform_many(spec, [(1,), (2,), {"n": 3}])
    assert len(set(ids)) == 3
    queued = [await runner.status(job_id) for job_id in ids]
    for status in queued:
        assert (status.state, status.priority, status.queue) == (JobState.queued, 5, "many")
        assert status.run_after is not None
    assert [await runner.wait(job_id, TIMEOUT) for job_id in ids] == [1, 2, 3]
    for before in queued:
        ran = await runner.status(before.id)
        assert (ran.priority, ran.queue) == (5, "many")
        assert before.run_after is not None
        assert ran.started_at is not None
        assert ran.started_at >= before.run_after


async def test_registered_defaults_and_using_overrides(
    new_store: StoreMaker, make_runner: RunnerFactory
) -> None:
    """@asyncjob.job(queue="q", priority=7): a plain perform (or a spec with
    no options, or perform_many) gets those; using() overrides either one,
    with any value, 0 and "default" included."""
    runner = await make_runner(new_store())
    job = scheduling_jobs.with_defaults
    cases: list[tuple[Callable[..., Any] | asyncjob.JobSpec, str, int]] = [
        (job, "q", 7),
        (asyncjob.using(job), "q", 7),
        (asyncjob.using(job, priority=0), "q", 0),
        (asyncjob.using(job, priority=-7), "q", -7),
        (asyncjob.using(job, queue="default"), "default", 7),
        (asyncjob.using(job, queue="r", priority=100), "r", 100),
    ]
    for n, (func, queue, priority) in enumerate(cases):
        job_id = await runner.perform(func, n)
        status = await runner.status(job_id)
        assert (status.queue, status.priority) == (queue, priority), (n, status)
        assert await runner.wait(job_id, TIMEOUT) == n
    [many] = await runner.perform_many(job, [(10,)])
    assert ((await runner.status(many)).queue, (await runner.status(many)).priority) == ("q", 7)
    assert await runner.wait(many, TIMEOUT) == 10


class CancelTurnedIntoError(SQLStore):
    """An SQL store whose claim, cancelled while it waits for the database,
    raises a database error instead of the CancelledError: what asyncpg
    does when the cancel lands as the answer of a claim under a limit (a
    transaction) arrives, and the transaction's rollback fails with
    InternalClientError ("cannot switch to state 15; another operation (2)
    is in progress"), which the store reports as an OperationalError."""

    def __init__(self, url: str) -> None:
        super().__init__(url, poll_interval=0.05)
        self.claiming = asyncio.Event()
        self.claimed_again = asyncio.Event()
        self.was_cancelled = False

    async def claim(
        self,
        limit: int,
        queues: frozenset[str] | None = None,
        limits: Mapping[str, int] | None = None,
    ) -> list[Claimed]:
        if self.was_cancelled:
            self.claimed_again.set()
            return []
        self.claiming.set()
        try:
            await asyncio.Event().wait()  # the database's answer, late
        except asyncio.CancelledError:
            self.was_cancelled = True
            cause = Exception("cannot switch to state 15; another operation (2) is in progress")
            raise OperationalError("claim", None, cause) from None
        return []


async def test_stop_is_not_lost_in_a_claim_that_fails_as_it_is_cancelled(
    sqlite_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runner.stop() cancels the producer, once its claim under way has had
    STOP_TIMEOUT to answer (here 0.1 s). If the claim raises a
    database error as it is cancelled (asyncpg does, for a claim under a
    concurrency limit on PostgreSQL: seen when this file's runners were
    stopped), the producer must still end: taking the error for a failed
    claim, it tries again, forever, and stop() waits for it, forever."""
    monkeypatch.setattr("asyncjob._runner.runner.STOP_TIMEOUT", 0.1)
    store = CancelTurnedIntoError(sqlite_db.async_url)
    runner = asyncjob.Runner(store)  # not make_runner's: its stop() is the test
    await runner.start()
    async with asyncio.timeout(TIMEOUT):
        await store.claiming.wait()
    stopping = asyncio.create_task(runner.stop())
    claimed_again = asyncio.create_task(store.claimed_again.wait())
    try:
        await asyncio.wait(
            {stopping, claimed_again}, timeout=TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        assert not store.claimed_again.is_set(), "the producer claimed again after stop()"
        assert stopping.done()
    finally:
        claimed_again.cancel()
        for task in runner._background:  # end the producer stop() could not end
            task.cancel()
        await asyncio.wait_for(stopping, TIMEOUT)
