"""``asyncjob demo``: a handful of realistic jobs, their progress shown live.

The jobs run on a runner with the default in-memory store. Coroutine jobs
and sync jobs (run in the runner's threads) report their progress the same
way, with :func:`asyncjob.set_progress`, and the display follows each job
with :meth:`Runner.watch`. With ``rich`` (the ``demo`` extra) and a
terminal, every job gets a progress bar; otherwise progress is printed as
plain lines. A summary table ends the demo.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import asyncjob

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

__all__ = (
    "DemoJob",
    "build_report",
    "demo_jobs",
    "download_file",
    "hash_data",
    "import_records",
    "resize_image",
    "run_demo",
)

#: A job's progress is printed at most this often (seconds) in plain output.
PLAIN_INTERVAL = 0.2

#: Results longer than this many characters are cut short on screen.
RESULT_WIDTH = 48

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class DemoJob:
    """One job of the demo: what to perform, and how to show it.

    ``total`` is the progress value the job reaches when it is done, so that
    its progress can be drawn as a fraction; ``fails`` marks the job that is
    meant to fail.
    """

    label: str
    func: Callable[..., Any]
    args: tuple[Any, ...]
    total: float
    fails: bool = False


# -- the jobs ----------------------------------------------------------------


async def download_file(url: str, size: int, chunk_size: int = 96 * 1024) -> str:
    """Pretend to download ``url``: ``size`` bytes arriving chunk by chunk.

    Reports the bytes received so far.
    """
    network = random.Random(url)
    received = 0
    while received < size:
        await asyncio.sleep(network.uniform(0.02, 0.07))
        received = min(size, received + chunk_size)
        asyncjob.set_progress(received, f"{received / MIB:.1f} of {size / MIB:.1f} MiB")
    return f"{url.rsplit('/', 1)[-1]}, {size / MIB:.1f} MiB"


def hash_data(chunks: int, chunk_size: int, seed: int = 1, pace: float = 0.025) -> str:
    """Hash generated data with SHA-256, one chunk at a time (a sync job).

    ``pace`` seconds per chunk stand for reading it from a slow disk.
    Reports the percentage done.
    """
    source = random.Random(seed)
    digest = hashlib.sha256()
    for done in range(1, chunks + 1):
        digest.update(source.randbytes(chunk_size))
        time.sleep(pace)
        asyncjob.set_progress(100 * done / chunks, f"chunk {done} of {chunks}")
    return f"sha256:{digest.hexdigest()}"


def make_image(width: int, height: int) -> list[list[int]]:
    """A grayscale test picture: ``height`` rows of ``width`` levels (0-255)."""
    cx, cy = width / 2, height / 2
    return [
        [int(127.5 + 127.5 * math.sin(math.hypot(x - cx, y - cy) / 9)) for x in range(width)]
        for y in range(height)
    ]


def resize_image(width: int, height: int, factor: int, pace: float = 0.015) -> str:
    """Make a thumbnail of a generated picture, averaging each square of
    ``factor`` x ``factor`` pixels into one (a sync job, in pure Python).

    Reports the thumbnail rows done.
    """
    image = make_image(width, height)
    rows, cols = height // factor, width // factor
    thumbnail: list[list[int]] = []
    for r in range(rows):
        block = image[r * factor : (r + 1) * factor]
        sums = [sum(line[c * factor : (c + 1) * factor]) for line in block for c in range(cols)]
        thumbnail.append([sum(sums[c::cols]) // factor**2 for c in range(cols)])
        time.sleep(pace)
        asyncjob.set_progress(r + 1, f"row {r + 1} of {rows}")
    mean = sum(map(sum, thumbnail)) // (rows * cols)
    return f"{width}x{height} -> {cols}x{rows} px, mean level {mean}"


REPORT_STEPS = (
    ("querying sales", 0.35),
    ("totalling by region", 0.3),
    ("drawing charts", 0.45),
    ("writing the PDF", 0.3),
)


async def build_report(year: int) -> str:
    """Build the sales report of ``year`` in a few steps (a coroutine job).

    Names the file after the job's own id, from :func:`asyncjob.current_job_id`.
    Reports the steps done, with the step's name as data.
    """
    job_id = asyncjob.current_job_id() or "local"
    sales = random.Random(year)
    total = 0
    for done, (step, seconds) in enumerate(REPORT_STEPS):
        asyncjob.set_progress(done, step)
        total += sum(sales.randrange(100, 5000) for _ in range(250))
        await asyncio.sleep(seconds)
    asyncjob.set_progress(len(REPORT_STEPS), "done")
    return f"report-{year}-{job_id[:8]}.pdf, sales {total:,}"


def sample_records(count: int, corrupt: int) -> list[str]:
    """``count`` lines of ``id;product;quantity``, line ``corrupt`` (1-based) broken."""
    products = ("bolt", "nut", "washer", "hinge", "bracket")
    lines = [f"{i};{products[i % len(products)]};{i * 7 % 40 + 1}" for i in range(1, count + 1)]
    lines[corrupt - 1] = f"{corrupt};{products[0]};#REF!"
    return lines


def import_records(lines: Sequence[str], pace: float = 0.02) -> str:
    """Import ``id;product;quantity`` records (a sync job).

    Raises ValueError at the first corrupt line. Reports the lines read.
    """
    quantities: dict[str, int] = {}
    for n, line in enumerate(lines, start=1):
        _, product, quantity = line.split(";")
        if not quantity.isdigit():
            raise ValueError(f"line {n} is corrupt: quantity {quantity!r}")
        quantities[product] = quantities.get(product, 0) + int(quantity)
        time.sleep(pace)
        asyncjob.set_progress(n, f"line {n} of {len(lines)}")
    return f"{len(lines)} records, {len(quantities)} products"


def demo_jobs() -> list[DemoJob]:
    """The jobs the demo performs, each finishing within about two seconds."""
    records = sample_records(60, corrupt=38)
    return [
        DemoJob("download", download_file, ("https://example.org/photos.zip", 3 * MIB), 3 * MIB),
        DemoJob("checksum", hash_data, (64, 256 * 1024), 100),
        DemoJob("thumbnail", resize_image, (480, 360, 4), 360 // 4),
        DemoJob("report", build_report, (2025,), len(REPORT_STEPS)),
        DemoJob("import", import_records, (records,), len(records), fails=True),
    ]


# -- running them --------------------------------------------------------------


def run_demo(*, plain: bool = False, console: Console | None = None) -> int:
    """Run the demo jobs, show their progress, then a summary; return the exit code.

    Progress bars are drawn on ``console`` if given, else on the terminal
    when ``rich`` is installed, stdout is a terminal and ``plain`` is false;
    otherwise progress is printed as plain lines. Returns 0 when every job
    ended as planned (the one meant to fail failed), 1 otherwise.
    """
    if console is None and not plain:
        console = _terminal_console()
    with _quiet_log():
        ok = asyncio.run(_run(demo_jobs(), console))
    return 0 if ok else 1


async def _run(jobs: Sequence[DemoJob], console: Console | None) -> bool:
    async with asyncjob.Runner(concurrency=len(jobs), grace_period=1.0) as runner:
        ids = [await runner.perform(job.func, *job.args) for job in jobs]
        if console is None:
            await _show_plain(runner, jobs, ids)
        else:
            await _show_rich(runner, jobs, ids, console)
        statuses = [await runner.status(job_id) for job_id in ids]
    _print_summary(jobs, statuses, console)
    return all(_as_planned(job, s) for job, s in zip(jobs, statuses, strict=True))


def _print_summary(
    jobs: Sequence[DemoJob], statuses: Sequence[asyncjob.JobStatus], console: Console | None
) -> None:
    pairs = list(zip(jobs, statuses, strict=True))
    rows = [_summary_row(job, status) for job, status in pairs]
    failed = [job.label for job, status in pairs if job.fails and _as_planned(job, status)]
    note = (
        f"\nThe {' and '.join(failed)} job failed on purpose: its error is kept with "
        "the job, and the other jobs carried on."
        if failed
        else ""
    )
    if console is None:
        _print_plain_table(rows)
        print(note, flush=True)
    else:
        _print_rich_table(rows, console)
        console.print(note, markup=False, highlight=False)


def _as_planned(job: DemoJob, status: asyncjob.JobStatus) -> bool:
    expected = asyncjob.JobState.failed if job.fails else asyncjob.JobState.succeeded
    return status.state is expected


@contextmanager
def _quiet_log() -> Iterator[None]:
    """Keep the ``asyncjob`` logger off the screen: the display shows failures
    itself, with their error text, where a logged traceback would garble it."""
    log = logging.getLogger("asyncjob")
    handler = logging.NullHandler()
    propagate = log.propagate
    log.addHandler(handler)
    log.propagate = False
    try:
        yield
    finally:
        log.propagate = propagate
        log.removeHandler(handler)


# -- what to show --------------------------------------------------------------


def _short(text: str, width: int = RESULT_WIDTH) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _outcome(status: asyncjob.JobStatus) -> str:
    if status.state is asyncjob.JobState.succeeded:
        return str(status.result)
    if status.state is asyncjob.JobState.failed:
        return status.error or "unknown error"
    return status.state.value


def _duration(status: asyncjob.JobStatus) -> str:
    if status.started_at is None or status.finished_at is None:
        return "-"
    return f"{(status.finished_at - status.started_at).total_seconds():.2f} s"


def _summary_row(job: DemoJob, status: asyncjob.JobStatus) -> tuple[str, str, str, str]:
    return (
        f"{job.label} {status.id[:8]}",
        status.state.value,
        _short(_outcome(status)),
        _duration(status),
    )


# -- plain lines ---------------------------------------------------------------


async def _show_plain(runner: asyncjob.Runner, jobs: Sequence[DemoJob], ids: Sequence[str]) -> None:
    width = max(len(job.label) for job in jobs)
    for job, job_id in zip(jobs, ids, strict=True):
        print(f"{job.label:<{width}}  queued as job {job_id[:8]}", flush=True)
    async with asyncio.TaskGroup() as group:
        for job, job_id in zip(jobs, ids, strict=True):
            group.create_task(_follow_plain(runner, job, job_id, width))


async def _follow_plain(runner: asyncjob.Runner, job: DemoJob, job_id: str, width: int) -> None:
    """Print the job's progress at most every PLAIN_INTERVAL seconds, then its end."""
    label = f"{job.label:<{width}}"
    shown = -math.inf
    async for status in runner.watch(job_id):
        if status.is_final:
            mark = "done" if status.state is asyncjob.JobState.succeeded else status.state.value
            print(f"{label}  {mark}: {_outcome(status)}", flush=True)
        elif status.progress is not None and time.monotonic() - shown >= PLAIN_INTERVAL:
            shown = time.monotonic()
            percent = 100 * status.progress / job.total
            print(f"{label}  {percent:5.1f}%  {status.data or ''}".rstrip(), flush=True)


def _print_plain_table(rows: Sequence[tuple[str, ...]]) -> None:
    table = [("job", "state", "result", "time"), *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    print()
    for row in table:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=False)]
        cells.append(row[-1].rjust(widths[-1]))
        print("  ".join(cells).rstrip())


# -- rich progress bars --------------------------------------------------------


def _terminal_console() -> Console | None:
    """A rich console on stdout if rich is installed and stdout is a terminal."""
    if not sys.stdout.isatty():
        return None
    try:
        from rich.console import Console
    except ImportError:
        print("(install asyncjob[demo] to see progress bars)", file=sys.stderr)
        return None
    return Console()


def _bar_and_detail_widths(console_width: int, label_width: int) -> tuple[int, int]:
    """How wide to draw the bars, and how much of each job's detail text fits
    after them on one line, on a console this wide."""
    room = console_width - label_width - len(" 100% 0:00:00 ")
    bar = max(8, min(28, room - 32))
    return bar, max(8, room - bar - 1)


async def _show_rich(
    runner: asyncjob.Runner, jobs: Sequence[DemoJob], ids: Sequence[str], console: Console
) -> None:
    from rich.markup import escape
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    labels = [f"{job.label} {job_id[:8]}" for job, job_id in zip(jobs, ids, strict=True)]
    bar, detail = _bar_and_detail_widths(console.width, max(map(len, labels)))
    columns = (
        TextColumn("{task.description}"),
        BarColumn(bar_width=bar),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[detail]}"),
    )
    with Progress(*columns, console=console) as progress:
        async with asyncio.TaskGroup() as group:
            for job, job_id, label in zip(jobs, ids, labels, strict=True):
                name, _, short_id = escape(label).rpartition(" ")
                description = f"{name} [dim]{short_id}[/]"
                task = progress.add_task(description, total=job.total, start=False, detail="")
                bar_of_job = _JobBar(progress, task, job.total, detail)
                group.create_task(bar_of_job.follow(runner, job_id))


@dataclass(slots=True)
class _JobBar:
    """One job's line on the rich display: its bar and its detail text."""

    progress: Progress
    task: TaskID
    total: float
    width: int  # of the detail text

    async def follow(self, runner: asyncjob.Runner, job_id: str) -> None:
        """Move the bar on each change; at the end, show the result or error."""
        async for status in runner.watch(job_id):
            if status.state is asyncjob.JobState.running:
                self.progress.start_task(self.task)
            if status.progress is not None:
                self._show(str(status.data or ""), completed=status.progress)
            if status.state is asyncjob.JobState.succeeded:
                self._show(f"✓ {_outcome(status)}", "green", completed=self.total)
            elif status.is_final:
                self._show(f"✗ {_outcome(status)}", "red")
        self.progress.stop_task(self.task)

    def _show(self, text: str, style: str = "", **fields: Any) -> None:
        from rich.text import Text

        detail = Text(_short(text, self.width), style=style)
        self.progress.update(self.task, detail=detail, **fields)


def _print_rich_table(rows: Sequence[tuple[str, str, str, str]], console: Console) -> None:
    from rich.table import Table
    from rich.text import Text

    styles = {"succeeded": "green", "failed": "red", "cancelled": "yellow"}
    table = Table(title="Summary", title_justify="left")
    for name in ("job", "state", "result"):
        table.add_column(name)
    table.add_column("time", justify="right")
    for job, state, result, seconds in rows:
        table.add_row(Text(job), Text(state, style=styles.get(state, "")), Text(result), seconds)
    console.print()
    console.print(table)
