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
import logging
import math
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import asyncjob

from .jobs import DemoJob, demo_jobs

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

__all__ = ("run_demo",)

#: A job's progress is printed at most this often (seconds) in plain output.
PLAIN_INTERVAL = 0.2

#: Results longer than this many characters are cut short on screen.
RESULT_WIDTH = 48


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
        print("(pip install asyncjob-runner[demo] to see progress bars)", file=sys.stderr)
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
