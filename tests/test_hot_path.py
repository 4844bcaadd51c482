"""The engine's JobQueue (the order jobs start in, its takers' waits), and the
followers of a store's changes (stores.kit.Watchers): the hot path's own parts."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from asyncjob._core.models import Job, new_job_id
from asyncjob._core.spec import JobOptions
from asyncjob._engine.queue import JobQueue

from .conftest import TIMEOUT, compiled


def job(label: str, priority: int = 0) -> Job:
    options = None if priority == 0 else JobOptions(priority=priority)
    return Job(label, label, print, (), {}, False, 0.0, options=options)


def drain(queue: JobQueue) -> list[str | None]:
    taken: list[str | None] = []
    while not queue.empty():
        found = queue.get_nowait()
        taken.append(None if found is None else found.id)
    return taken


def test_higher_priorities_first_then_first_in_first_out() -> None:
    queue = JobQueue()
    for label, priority in [("a", 0), ("b", 5), ("c", -3), ("d", 0), ("e", 5), ("f", 100)]:
        queue.put(job(label, priority))
    assert len(queue) == 6
    assert drain(queue) == ["f", "b", "e", "a", "d", "c"]
    with pytest.raises(asyncio.QueueEmpty):
        queue.get_nowait()


def test_jobs_given_back_go_first_in_the_order_they_were_taken() -> None:
    """Two jobs taken, then given back in the reverse order (their limits
    freed the other way round), start before the jobs of their priority
    still queued, in the order they were first taken; a higher priority
    queued meanwhile still goes first."""
    queue = JobQueue()
    for label in ("p1", "p2", "q1", "q2"):
        queue.put(job(label))
    first, second = queue.get_nowait(), queue.get_nowait()
    assert first is not None
    assert second is not None
    taken = [queue.taken(), queue.taken()]
    queue.put(job("urgent", 1))
    queue.put_back(second, taken[1])
    queue.put_back(first, taken[0])
    assert drain(queue) == ["urgent", "p1", "p2", "q1", "q2"]


def test_workers_end_after_every_job() -> None:
    queue = JobQueue()
    queue.put(job("a"))
    queue.stop_one()
    queue.put(job("b"))
    assert queue.take_all() == [job("a"), job("b")]
    assert not queue.empty()  # the end stays for its worker
    assert drain(queue) == [None]


async def test_a_taker_waits_and_a_cancelled_one_passes_its_job_on() -> None:
    queue = JobQueue()
    first = asyncio.create_task(queue.get())
    second = asyncio.create_task(queue.get())
    await asyncio.sleep(0)  # one turn of the loop (not a timed wait): both wait now
    queue.put(job("a"))
    assert queue.waiting == 2
    assert queue.wake_one()  # the engine's part: a put wakes nobody
    assert (queue.coming, queue.waiting) == (1, 1)
    first.cancel()  # woken for "a", then cancelled before it ran
    async with asyncio.timeout(TIMEOUT):
        found = await second
    assert found is not None
    assert found.id == "a"
    with pytest.raises(asyncio.CancelledError):
        await first
    assert (queue.coming, queue.waiting) == (0, 0)


@pytest.mark.skipif(
    compiled("asyncjob._engine.queue"),
    reason="counts the calls of JobQueue.wake_one by patching it: a compiled queue ignores that",
)
async def test_workers_come_in_waves_few_for_short_jobs_soon_for_long_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Fifty long jobs performed at once all start within a few of the
    loop's turns, whether their workers are made or woken (one wave of 1,
    then 2, 4, ...: six turns); fifty short ones cost the workers waiting
    two or three wake-ups, not one each."""
    import asyncjob

    started, release = 0, asyncio.Event()

    async def long_job() -> None:
        nonlocal started
        started += 1
        await release.wait()

    async def short_job() -> None:
        pass

    async def turns_until_all_started(runner: asyncjob.Runner) -> int:
        nonlocal started
        started = 0
        release.clear()
        for _ in range(50):
            await runner.perform(long_job)
        for turn in range(1, 50):
            await asyncio.sleep(0)  # one turn of the loop, not a timed wait
            if started == 50:
                return turn
        return 50

    async with asyncjob.Runner(concurrency=50) as runner:
        queue = runner._engine._queue
        async with asyncio.timeout(TIMEOUT):
            assert await turns_until_all_started(runner) <= 8  # workers made
            release.set()
            await runner.join()
            assert queue.waiting == 50
            assert await turns_until_all_started(runner) <= 8  # workers woken
            release.set()
            await runner.join()

            wakes = 0
            wake_one = JobQueue.wake_one

            def counted(self: JobQueue) -> bool:
                nonlocal wakes
                wakes += 1
                return wake_one(self)

            monkeypatch.setattr(JobQueue, "wake_one", counted)
            ids = [await runner.perform(short_job) for _ in range(50)]
            await runner.join()
            states = {(await runner.status(job_id)).state for job_id in ids}
            assert states == {asyncjob.JobState.succeeded}
            assert 1 <= wakes <= 4


async def test_a_follower_of_changes_dropped_without_closing_is_forgotten() -> None:
    """Watchers keep no follower of changes() alive: one dropped without
    aclose() is taken out when it is collected, one closed at once; the
    others are still woken."""
    import gc

    from asyncjob.stores.kit import Watchers

    watchers: Watchers[None] = Watchers(1)
    kept, dropped, closed = watchers.changes(), watchers.changes(), watchers.changes()
    await closed.aclose()
    del dropped
    gc.collect()
    assert len(watchers._anyone) == 1
    watchers.announce()
    async with asyncio.timeout(TIMEOUT):
        await anext(kept)


def test_job_ids_are_uuids_of_version_7_in_the_order_they_were_made() -> None:
    """An id is a UUID of version 7 in 32 hexadecimal digits: the
    millisecond it was made first (so that a database's index of ids takes
    new jobs at its end, not all over it), then random bits that tell
    apart the ids of a millisecond."""
    first = time.time_ns() // 1_000_000
    ids = [new_job_id() for _ in range(2_000)]
    last = time.time_ns() // 1_000_000
    for job_id in ids:
        parsed = uuid.UUID(hex=job_id)
        assert (parsed.version, parsed.variant) == (7, uuid.RFC_4122)
        assert parsed.hex == job_id
        assert first <= int(job_id[:12], 16) <= last
    assert ids == sorted(ids)  # the time, then the count within the millisecond
    assert len(set(ids)) == len(ids)


def test_past_4096_ids_in_a_millisecond_the_ids_take_the_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The count of a millisecond's ids has 12 bits: the 4,097th id made in
    one takes the next millisecond, and the ids stay in order."""
    from asyncjob._core import models

    monkeypatch.setattr(time, "time_ns", lambda: 1_800_000_000_123_456_789)
    monkeypatch.setattr(models, "_stamp", (0, "", 0, 0))
    ids = [new_job_id() for _ in range(5_000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert {job_id[:12] for job_id in ids[:4096]} == {f"{1_800_000_000_123:012x}"}
    assert {job_id[:12] for job_id in ids[4096:]} == {f"{1_800_000_000_124:012x}"}
    assert [job_id[12:16] for job_id in ids[4094:4098]] == ["7ffe", "7fff", "7000", "7001"]


def test_job_ids_keep_their_order_when_the_clock_goes_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """If the clock steps back, the ids made meanwhile keep the millisecond
    of the last ones until the clock has passed it again: still in order,
    still apart."""
    from asyncjob._core import models

    now = [1_800_000_000_123_456_789]
    monkeypatch.setattr(time, "time_ns", lambda: now[0])
    monkeypatch.setattr(models, "_stamp", (0, "", 0, 0))
    first = new_job_id()
    now[0] -= 5_000_000_000  # five seconds back
    meanwhile = new_job_id()
    now[0] += 10_000_000_000  # five seconds past the first
    after = new_job_id()
    assert first[:12] == meanwhile[:12] == f"{1_800_000_000_123:012x}"
    assert first != meanwhile
    assert after[:12] == f"{1_800_000_005_123:012x}"


def test_job_ids_are_unique_across_threads_and_a_fork() -> None:
    """Ids cut from shared blocks of random bytes: threads drawing at once
    never get the same one, and a forked child draws its own block instead
    of cutting the parent's (which would repeat the parent's next ids)."""
    import itertools
    import os
    import threading

    from asyncjob._core import models

    drawn: list[list[str]] = [[] for _ in range(8)]

    def draw(into: list[str]) -> None:
        into.extend(new_job_id() for _ in range(5_000))

    threads = [threading.Thread(target=draw, args=(into,)) for into in drawn]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    every = [job_id for into in drawn for job_id in into]
    assert len(set(every)) == len(every) == 40_000

    # A block freshly drawn, with room for the ids both sides draw next.
    models._numbers = itertools.count()
    models._block = (-1, "")
    new_job_id()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        try:
            os.write(write, " ".join(new_job_id() for _ in range(10)).encode())
        finally:
            os._exit(0)
    os.close(write)
    parents = {new_job_id() for _ in range(10)}
    with os.fdopen(read) as pipe:
        childs = set(pipe.read().split())
    os.waitpid(pid, 0)
    assert len(childs) == 10
    assert not parents & childs
