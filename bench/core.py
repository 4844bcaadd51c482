"""Core benchmarks: asyncjob against plain asyncio, aiojobs and a thread pool.

Usage::

    python bench/core.py [--quick] [--repeat N] [--json PATH]

Every measurement runs in a fresh event loop (``asyncio.run``) after a
``gc.collect()``; each figure is the median of the repetitions, and every
ratio compares it with a baseline measured in the same run, interleaved with
it, so that a noisy machine moves both alike.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import dataclasses
import gc
import hashlib
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import aiojobs
from floor import Floor, StoreFloor

import asyncjob
from asyncjob.stores import MemoryStore

T = TypeVar("T")

#: Jobs running at once, in asyncjob and in every baseline.
CONCURRENCY = 10
#: Latency samples taken first and thrown away (worker start-up, caches).
LATENCY_WARMUP = 50


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much work one repetition does."""

    coro_jobs: int
    sync_jobs: int
    latency_samples: int
    memory_jobs: int
    repeat: int


FULL = Sizes(
    coro_jobs=100_000, sync_jobs=20_000, latency_samples=2_000, memory_jobs=100_000, repeat=5
)
QUICK = Sizes(coro_jobs=10_000, sync_jobs=2_000, latency_samples=300, memory_jobs=10_000, repeat=3)


# -- the jobs ----------------------------------------------------------------


async def noop() -> None:
    """A coroutine job that does nothing."""


def noop_sync() -> None:
    """A sync job that does nothing."""


async def stamp(out: list[float]) -> None:
    """A coroutine job whose first line records when it started."""
    out.append(time.perf_counter())


async def block(started: asyncio.Event, release: asyncio.Event) -> None:
    """A coroutine job that holds its worker until ``release`` is set."""
    started.set()
    await release.wait()


# -- 1. coroutine jobs: end-to-end throughput ---------------------------------


async def asyncjob_coro_throughput(n: int) -> float:
    """asyncjob: seconds to perform ``n`` no-op coroutine jobs, then wait for
    each by id (``runner.wait``). The store keeps all ``n`` finished jobs."""
    store = MemoryStore(max_finished=n)
    async with asyncjob.Runner(store, concurrency=CONCURRENCY) as runner:
        start = time.perf_counter()
        ids = [await runner.perform(noop) for _ in range(n)]
        for job_id in ids:
            await runner.wait(job_id)
        return time.perf_counter() - start


async def aiojobs_coro_throughput(n: int) -> float:
    """aiojobs: seconds to spawn ``n`` no-op coroutines on a scheduler limited
    to CONCURRENCY active jobs, then wait for each job."""
    scheduler = aiojobs.Scheduler(limit=CONCURRENCY, pending_limit=n)
    start = time.perf_counter()
    jobs = [await scheduler.spawn(noop()) for _ in range(n)]
    for job in jobs:
        await job.wait()
    elapsed = time.perf_counter() - start
    await scheduler.close()
    return elapsed


async def floor_coro_throughput(n: int) -> float:
    """The floor (``floor.py``): the least runner that keeps asyncjob's
    in-process promises, performing and waiting as asyncjob's figure does."""
    return await performed_and_waited(Floor(CONCURRENCY, max_finished=n), n)


async def store_floor_coro_throughput(n: int) -> float:
    """The floor keeping its records in asyncjob's ``MemoryStore``
    (``floor.py``'s ``StoreFloor``): what the store alone costs."""
    runner = StoreFloor(CONCURRENCY, max_finished=n)
    await runner.open()
    return await performed_and_waited(runner, n)


async def performed_and_waited(runner: Floor | StoreFloor, n: int) -> float:
    """Seconds for ``runner`` to perform ``n`` no-op jobs, then wait for
    each by id; the runner is closed after."""
    start = time.perf_counter()
    ids = [await runner.perform(noop) for _ in range(n)]
    for job_id in ids:
        await runner.wait(job_id)
    elapsed = time.perf_counter() - start
    await runner.close()
    return elapsed


async def queue_coro_throughput(n: int) -> float:
    """Raw asyncio: seconds to put ``n`` no-op coroutine functions on an
    ``asyncio.Queue`` served by CONCURRENCY consumer tasks, then ``join()``."""
    queue: asyncio.Queue[Callable[[], Awaitable[None]]] = asyncio.Queue()

    async def consume() -> None:
        while True:
            func = await queue.get()
            await func()
            queue.task_done()

    async with consumers(consume):
        start = time.perf_counter()
        for _ in range(n):
            await queue.put(noop)
        await queue.join()
        return time.perf_counter() - start


@contextlib.asynccontextmanager
async def consumers(func: Callable[[], Coroutine[Any, Any, None]]) -> AsyncIterator[None]:
    """Run CONCURRENCY tasks of ``func`` for the block's duration, then cancel them."""
    tasks = [asyncio.create_task(func()) for _ in range(CONCURRENCY)]
    await asyncio.sleep(0)  # let them reach their first await: idle
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# -- 2. sync jobs: end-to-end throughput --------------------------------------


async def asyncjob_sync_throughput(n: int) -> float:
    """asyncjob: seconds to perform ``n`` no-op sync jobs (run in its thread
    pool of CONCURRENCY threads), then wait for each by id."""
    store = MemoryStore(max_finished=n)
    async with asyncjob.Runner(store, concurrency=CONCURRENCY) as runner:
        start = time.perf_counter()
        ids = [await runner.perform(noop_sync) for _ in range(n)]
        for job_id in ids:
            await runner.wait(job_id)
        return time.perf_counter() - start


async def pool_sync_throughput(n: int) -> float:
    """Raw ``ThreadPoolExecutor(max_workers=CONCURRENCY)``: seconds to submit
    ``n`` no-op functions, then wait for all of them."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=CONCURRENCY) as pool:
        start = time.perf_counter()
        futures = [pool.submit(noop_sync) for _ in range(n)]
        concurrent.futures.wait(futures)
        return time.perf_counter() - start


# -- 3. idle perform -> start latency -----------------------------------------


async def asyncjob_latency(samples: int) -> list[float]:
    """asyncjob: seconds from just before ``await runner.perform(job)`` on an
    idle runner to the first line of the job, one job at a time."""
    stamps: list[float] = []
    delays: list[float] = []
    async with asyncjob.Runner(concurrency=CONCURRENCY) as runner:
        for _ in range(LATENCY_WARMUP + samples):
            start = time.perf_counter()
            await runner.perform(stamp, stamps)
            await runner.join()
            delays.append(stamps[-1] - start)
    return delays[LATENCY_WARMUP:]


async def queue_latency(samples: int) -> list[float]:
    """Raw asyncio: seconds from just before ``await queue.put(item)`` to the
    first line of the job a consumer task gets from it, one job at a time."""
    queue: asyncio.Queue[tuple[Callable[[list[float]], Awaitable[None]], list[float]]]
    queue = asyncio.Queue()
    stamps: list[float] = []
    delays: list[float] = []

    async def consume() -> None:
        while True:
            func, arg = await queue.get()
            await func(arg)
            queue.task_done()

    async with consumers(consume):
        for _ in range(LATENCY_WARMUP + samples):
            start = time.perf_counter()
            await queue.put((stamp, stamps))
            await queue.join()
            delays.append(stamps[-1] - start)
    return delays[LATENCY_WARMUP:]


# -- 4. memory per queued job -------------------------------------------------


async def asyncjob_memory(n: int) -> float:
    """asyncjob: bytes traced (tracemalloc) per job for ``n`` no-op coroutine
    jobs performed while the runner's single worker is held by a first job,
    so that they all stay queued."""
    started, release = asyncio.Event(), asyncio.Event()
    async with asyncjob.Runner(concurrency=1) as runner:
        await runner.perform(block, started, release)
        await started.wait()
        with Traced() as traced:
            for _ in range(n):
                await runner.perform(noop)
        release.set()
    return traced.bytes / n


async def aiojobs_memory(n: int) -> float:
    """aiojobs: bytes traced per job for ``n`` no-op coroutines spawned on a
    scheduler with ``limit=1`` held by a first job, so that they all stay
    pending. The coroutine object each spawn needs is counted."""
    started, release = asyncio.Event(), asyncio.Event()
    scheduler = aiojobs.Scheduler(limit=1, pending_limit=n)
    await scheduler.spawn(block(started, release))
    await started.wait()
    with Traced() as traced:
        for _ in range(n):
            await scheduler.spawn(noop())
    release.set()
    await scheduler.wait_and_close()
    return traced.bytes / n


class Traced:
    """Trace allocations in the block; ``bytes`` is what is still held at its end."""

    bytes = 0

    def __enter__(self) -> Traced:
        gc.collect()
        tracemalloc.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        gc.collect()
        self.bytes = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()


# -- running and reporting ----------------------------------------------------


def measure(bench: Callable[[int], Coroutine[Any, Any, T]], n: int) -> T:
    """Run one benchmark in a fresh event loop, after a full collection."""
    gc.collect()
    return asyncio.run(bench(n))


def percentile(values: list[float], fraction: float) -> float:
    """The value below which ``fraction`` of ``values`` lie (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def one_repetition(sizes: Sizes) -> dict[str, float]:
    """Every measurement once, each subject next to its baselines."""
    r: dict[str, float] = {}
    n = sizes.coro_jobs
    r["coro.asyncjob"] = n / measure(asyncjob_coro_throughput, n)
    r["coro.aiojobs"] = n / measure(aiojobs_coro_throughput, n)
    r["coro.floor"] = n / measure(floor_coro_throughput, n)
    r["coro.store_floor"] = n / measure(store_floor_coro_throughput, n)
    r["coro.queue"] = n / measure(queue_coro_throughput, n)
    n = sizes.sync_jobs
    r["sync.asyncjob"] = n / measure(asyncjob_sync_throughput, n)
    r["sync.pool"] = n / measure(pool_sync_throughput, n)
    for name, bench in (("asyncjob", asyncjob_latency), ("queue", queue_latency)):
        delays = measure(bench, sizes.latency_samples)
        r[f"p50.{name}"] = percentile(delays, 0.50) * 1000
        r[f"p99.{name}"] = percentile(delays, 0.99) * 1000
    r["mem.asyncjob"] = measure(asyncjob_memory, sizes.memory_jobs)
    r["mem.aiojobs"] = measure(aiojobs_memory, sizes.memory_jobs)
    return r


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of the table: asyncjob's figure against a baseline's."""

    label: str
    subject: str
    baseline: str
    baseline_name: str
    unit: str
    target: str = ""
    passes: Callable[[float, float], bool] | None = None  # (value, ratio) -> ok


def at_least(bound: float) -> Callable[[float, float], bool]:
    """A target met when asyncjob / baseline is at least ``bound``."""
    return lambda value, ratio: ratio >= bound


def at_most_ms(bound: float) -> Callable[[float, float], bool]:
    """A target met when asyncjob's own figure is at most ``bound`` ms."""
    return lambda value, ratio: value <= bound


def no_more_than_baseline(value: float, ratio: float) -> bool:
    """A target met when asyncjob needs no more than the baseline."""
    return ratio <= 1.0


ROWS = (
    Row("coroutine throughput", "coro.asyncjob", "coro.aiojobs", "aiojobs", "jobs/s",
        ">= 2x aiojobs", at_least(2.0)),
    Row("coroutine throughput", "coro.asyncjob", "coro.floor", "the floor", "jobs/s"),
    Row("coroutine throughput", "coro.asyncjob", "coro.store_floor", "floor+store", "jobs/s"),
    Row("coroutine throughput", "coro.asyncjob", "coro.queue", "raw Queue", "jobs/s"),
    Row("sync throughput", "sync.asyncjob", "sync.pool", "raw pool", "jobs/s",
        ">= 0.8x raw pool", at_least(0.8)),
    Row("perform->start p50", "p50.asyncjob", "p50.queue", "raw Queue", "ms",
        "<= 0.1 ms", at_most_ms(0.1)),
    Row("perform->start p99", "p99.asyncjob", "p99.queue", "raw Queue", "ms"),
    Row("memory per queued job", "mem.asyncjob", "mem.aiojobs", "aiojobs", "B",
        "<= aiojobs", no_more_than_baseline),
)  # fmt: skip


def fmt(value: float, unit: str) -> str:
    """A figure with its unit, rounded for reading."""
    if unit == "ms":
        return f"{value:.3f} ms"
    return f"{value:,.0f} {unit}"


def verdict(row: Row, medians: dict[str, float]) -> tuple[float, str]:
    """The row's ratio (asyncjob / baseline) and PASS, MISS or '' (no target)."""
    value, ratio = medians[row.subject], medians[row.subject] / medians[row.baseline]
    if row.passes is None:
        return ratio, ""
    return ratio, "PASS" if row.passes(value, ratio) else "MISS"


def table(medians: dict[str, float]) -> str:
    """The results as a plain-text table."""
    head = ("measure", "asyncjob", "baseline", "", "ratio", "target", "")
    lines = [head]
    for row in ROWS:
        ratio, result = verdict(row, medians)
        lines.append(
            (
                row.label,
                fmt(medians[row.subject], row.unit),
                fmt(medians[row.baseline], row.unit),
                row.baseline_name,
                f"{ratio:.2f}x",
                row.target,
                result,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    aligns = "<>><><<"
    out = [
        "  ".join(f"{c:{a}{w}}" for c, a, w in zip(line, aligns, widths, strict=True)).rstrip()
        for line in lines
    ]
    rule = "-" * max(len(line) for line in out)
    return "\n".join([out[0], rule, *out[1:]])


def spread(samples: dict[str, list[float]]) -> str:
    """Each raw figure's median and range over the repetitions."""
    lines = []
    for key, values in samples.items():
        unit = {"coro": "jobs/s", "sync": "jobs/s", "mem": "B"}.get(key.split(".")[0], "ms")
        lo, mid, hi = min(values), statistics.median(values), max(values)
        lines.append(f"  {key:<16} {fmt(mid, unit):>16}   range {fmt(lo, unit)} .. {fmt(hi, unit)}")
    return "\n".join(lines)


def source_digest() -> str:
    """A short hash of the asyncjob sources measured, to tell runs of
    different code apart (the version alone does not change between commits)."""
    digest = hashlib.sha256()
    package = Path(asyncjob.__file__).parent
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def header(sizes: Sizes, digest: str) -> str:
    """What was run, and where."""
    return (
        f"asyncjob {importlib.metadata.version('asyncjob-runner')} (sources {digest}) "
        "core benchmarks: "
        f"Python {platform.python_version()}, {os.cpu_count()} CPU(s), "
        f"medians of {sizes.repeat} repetition(s)\n"
        f"{sizes.coro_jobs:,} coroutine jobs, {sizes.sync_jobs:,} sync jobs, "
        f"{sizes.latency_samples:,} latency samples, {sizes.memory_jobs:,} queued jobs "
        f"(memory); concurrency {CONCURRENCY}; ratio = asyncjob / baseline"
    )


def write_json(path: Path, sizes: Sizes, digest: str, samples: dict[str, list[float]]) -> None:
    """Save sizes, every sample, medians and verdicts for later comparison."""
    medians = {k: statistics.median(v) for k, v in samples.items()}
    rows = []
    for row in ROWS:
        ratio, result = verdict(row, medians)
        rows.append(
            {
                "label": row.label,
                "baseline": row.baseline_name,
                "ratio": ratio,
                "target": row.target,
                "result": result,
            }
        )
    doc = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "asyncjob": importlib.metadata.version("asyncjob-runner"),
        "sources": digest,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "sizes": dataclasses.asdict(sizes),
        "samples": samples,
        "medians": medians,
        "rows": rows,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer jobs, 3 repetitions")
    parser.add_argument("--repeat", type=int, help="repetitions (default 5, or 3 with --quick)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run every benchmark ``repeat`` times and print the medians."""
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.repeat is not None:
        if args.repeat < 1:
            sys.exit("--repeat must be at least 1")
        sizes = dataclasses.replace(sizes, repeat=args.repeat)
    digest = source_digest()  # of the code just imported, before any of it runs
    samples: dict[str, list[float]] = {}
    for i in range(sizes.repeat):
        print(f"repetition {i + 1}/{sizes.repeat} ...", file=sys.stderr, flush=True)
        for key, value in one_repetition(sizes).items():
            samples.setdefault(key, []).append(value)
    medians = {k: statistics.median(v) for k, v in samples.items()}
    print(header(sizes, digest), table(medians), "medians and ranges:", spread(samples), sep="\n\n")
    if args.json is not None:
        write_json(args.json, sizes, digest, samples)
    return 0


if __name__ == "__main__":
    sys.exit(main())
