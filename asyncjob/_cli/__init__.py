"""The ``asyncjob`` command line.

Each subcommand is added to the parser by an ``_add_<name>`` function, which
sets the function that runs it as the ``handler`` default. Handlers take the
parsed arguments and return the exit code; their modules are imported only
when the subcommand runs, so that ``asyncjob --version`` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from asyncjob._core import defaults
from asyncjob._version import __version__

__all__ = ("build_parser", "main")

Handler = Callable[[argparse.Namespace], int]

#: The exit code of a command interrupted with Ctrl-C, as shells report it.
EXIT_INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``asyncjob`` command with ``argv`` (default: ``sys.argv[1:]``).

    Returns the exit code. As with any :mod:`argparse` program, ``--help``,
    ``--version`` and bad usage end in :class:`SystemExit` (code 0 for the
    first two, 2 with a usage message for the last).
    """
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def build_parser() -> argparse.ArgumentParser:
    """The parser of the ``asyncjob`` command, with all its subcommands."""
    parser = argparse.ArgumentParser(
        prog="asyncjob",
        description="Background jobs for asyncio applications, with progress you can show.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(
        title="commands", dest="command", metavar="COMMAND", required=True
    )
    _add_demo(commands)
    _add_worker(commands)
    _add_dashboard(commands)
    _add_operator_commands(commands)
    return parser


# -- asyncjob demo -----------------------------------------------------------


def _add_demo(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = commands.add_parser(
        "demo",
        help="run a few example jobs and show their progress live",
        description=(
            "Run a handful of example jobs on the in-memory store and show their "
            "progress live: progress bars with the 'demo' extra (rich) on a "
            "terminal, plain lines otherwise."
        ),
    )
    demo.add_argument(
        "--plain",
        action="store_true",
        help="print plain lines instead of progress bars",
    )
    demo.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from asyncjob._demo import run_demo

    return run_demo(plain=args.plain)


# -- asyncjob worker -----------------------------------------------------------


def _add_worker(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    worker = commands.add_parser(
        "worker",
        help="run the registered jobs of a shared store until stopped",
        description=(
            "Run the jobs registered (with @asyncjob.job) in the given modules, as "
            "they are performed into the store, until SIGINT or SIGTERM; then stop "
            "gracefully: running jobs get the grace period to finish, and jobs "
            "still held are handed back to the store for another worker."
        ),
    )
    _add_store(worker)
    worker.add_argument(
        "--import",
        dest="modules",
        action="append",
        required=True,
        metavar="MODULE",
        help="a module that registers jobs (repeat for more)",
    )
    worker.add_argument(
        "--queue",
        dest="queues",
        action="append",
        metavar="NAME",
        help="take the jobs of this queue (repeat for more; default: every queue)",
    )
    worker.add_argument(
        "--concurrency",
        type=_positive_int,
        default=defaults.CONCURRENCY,
        help=f"jobs run at once (default {defaults.CONCURRENCY})",
    )
    worker.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        help=f"threads for sync jobs (default min(concurrency, {defaults.MAX_THREADS}))",
    )
    worker.add_argument(
        "--keep-finished",
        type=float,
        default=defaults.KEEP_FINISHED,
        help="seconds finished jobs stay readable before they are deleted (default a week)",
    )
    worker.add_argument(
        "--lease",
        type=float,
        default=defaults.LEASE,
        help="seconds a job stays held without renewal: a dead worker's jobs run "
        f"again elsewhere after it (default {defaults.LEASE:g})",
    )
    worker.add_argument(
        "--poll-interval",
        type=float,
        help="seconds between looks for jobs nobody announced (default "
        f"{defaults.POLL_INTERVAL_LISTENING:g} where the store hears of other processes' "
        f"jobs, PostgreSQL and SQLite on Linux; else {defaults.POLL_INTERVAL:g})",
    )
    worker.add_argument(
        "--grace-period",
        type=float,
        default=defaults.GRACE_PERIOD,
        help="seconds running jobs get to finish when stopping "
        f"(default {defaults.GRACE_PERIOD:g})",
    )
    worker.add_argument(
        "--metrics-port",
        type=_port,
        metavar="PORT",
        help="serve this worker's job counters and durations for Prometheus on "
        "http://HOST:PORT/metrics (needs the metrics extra)",
    )
    worker.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        metavar="HOST",
        help="the address --metrics-port listens on (default 127.0.0.1; 0.0.0.0 for "
        "every interface)",
    )
    worker.set_defaults(handler=_run_worker)


# -- asyncjob dashboard ------------------------------------------------------------


def _add_dashboard(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    board = commands.add_parser(
        "dashboard",
        help="serve the dashboard of a shared store: jobs, live progress, schedules",
        description=(
            "Serve the dashboard of a shared store over HTTP until SIGINT or SIGTERM: "
            "the jobs, filtered and paged, each with its live progress, arguments, "
            "result or error; the periodic jobs. Read-only unless --allow-actions. "
            "Needs the web extra (pip install 'asyncjob-runner[web]')."
        ),
        epilog=(
            "examples:\n"
            "  asyncjob dashboard --store sqlite+aiosqlite:///jobs.db\n"
            "  ASYNCJOB_STORE=postgresql+asyncpg://app@db/app asyncjob dashboard --port 9000\n"
            "then open http://127.0.0.1:8700/ (or the port given)"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_store(board)
    board.add_argument(
        "--host",
        default="127.0.0.1",
        help="the address to listen on (default 127.0.0.1: this machine only)",
    )
    board.add_argument("--port", type=_port, default=8700, help="the port (default 8700)")
    board.add_argument(
        "--allow-actions",
        action="store_true",
        help="serve actions (cancel) to whoever reaches the dashboard: only behind "
        "your own authentication",
    )
    board.set_defaults(handler=_run_dashboard)


def _run_dashboard(args: argparse.Namespace) -> int:
    try:
        from .dashboard import run_dashboard
    except ImportError as exc:
        print(
            f"asyncjob dashboard: needs the web extra ({exc.name} is missing): "
            "pip install 'asyncjob-runner[web]'",
            file=sys.stderr,
        )
        return 2

    return run_dashboard(
        args.store,
        host=args.host,
        port=args.port,
        allow_actions=args.allow_actions,
        table_prefix=args.table_prefix,
    )


# -- the operator's commands ------------------------------------------------------------

_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
_EXIT = (
    "exit status: 0 done; 1 a job did not succeed, or was not acted on; "
    "2 the command failed (unknown id, store unreachable or no such file, damaged row)"
)


def _add_operator_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    def command(name: str, help: str, examples: str, handler: Handler) -> argparse.ArgumentParser:
        parser = commands.add_parser(
            name,
            help=help,
            description=f"{help[0].upper()}{help[1:]}.",
            epilog=f"examples:\n{examples}\n\n{_EXIT}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _add_store(parser)
        parser.set_defaults(handler=handler)
        return parser

    jobs = command(
        "jobs",
        "list a shared store's jobs, newest first",
        "  asyncjob jobs --state failed --limit 20\n"
        "  asyncjob jobs --name app.jobs.resize --queue video --json\n"
        "  asyncjob jobs --state failed --since 2h\n"
        "  asyncjob jobs --before LAST_ID_OF_THE_PREVIOUS_PAGE",
        _run_jobs,
    )
    jobs.add_argument(
        "--state",
        dest="states",
        action="append",
        choices=_STATES,
        help="only jobs in this state (repeat for more)",
    )
    jobs.add_argument("--name", help="only jobs of this name (app.jobs.resize)")
    jobs.add_argument("--queue", help="only jobs of this queue")
    jobs.add_argument(
        "--since",
        type=_parsed_by("parse_moment"),
        help="only jobs performed since then: 2026-12-05T10:00 (local time, or with "
        "its zone), or how long ago, as 2h",
    )
    jobs.add_argument(
        "--until", type=_parsed_by("parse_moment"), help="only jobs performed before then"
    )
    jobs.add_argument("--limit", type=_positive_int, default=50, help="at most this many (50)")
    jobs.add_argument("--before", metavar="ID", help="the page after this job")
    jobs.add_argument("--json", action="store_true", help="print JSON, not a table")

    status = command(
        "status",
        "show a job's status; with --follow, its live progress until it ends",
        "  asyncjob status 5f0c...\n  asyncjob status 5f0c... --follow && echo done",
        _run_status,
    )
    status.add_argument("job_id", metavar="ID")
    status.add_argument("--follow", action="store_true", help="wait for the end, showing progress")

    cancel = command(
        "cancel",
        "cancel jobs: queued ones never start, running ones are stopped",
        "  asyncjob cancel 5f0c... 77a1...",
        _run_cancel,
    )
    cancel.add_argument("job_ids", metavar="ID", nargs="+")

    retry = command(
        "retry",
        "run again registered jobs that failed or were cancelled",
        "  asyncjob retry 5f0c...\n"
        "  asyncjob jobs --state failed --json | jq -r '.[].id' | xargs asyncjob retry",
        _run_retry,
    )
    retry.add_argument("job_ids", metavar="ID", nargs="+")

    purge = command(
        "purge",
        "delete jobs that ended long enough ago",
        "  asyncjob purge --older-than 7d\n"
        "  asyncjob purge --state failed --state cancelled --older-than 30d",
        _run_purge,
    )
    purge.add_argument(
        "--state",
        dest="states",
        action="append",
        choices=("succeeded", "failed", "cancelled"),
        help="the states to delete (repeat; default succeeded and cancelled)",
    )
    purge.add_argument(
        "--older-than",
        required=True,
        type=_parsed_by("parse_duration"),
        help="ended at least this long ago: seconds, or 15m, 12h, 7d, 2w",
    )

    workers = command(
        "workers",
        "list the workers of a shared store, as their heartbeats tell",
        "  asyncjob workers\n  asyncjob workers --json",
        _run_workers,
    )
    workers.add_argument("--json", action="store_true", help="print JSON, not a table")


def _parsed_by(name: str) -> Callable[[str], Any]:
    """An argument's type: the parser ``name`` of ``operate`` (imported only
    when the command runs), whose ValueError is the usage error said."""

    def parse(text: str) -> Any:
        from . import operate

        try:
            return getattr(operate, name)(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = name.removeprefix("parse_")  # as argparse names the value
    return parse


def _run_jobs(args: argparse.Namespace) -> int:
    from .operate import list_jobs

    return list_jobs(
        args.store,
        states=args.states,
        name=args.name,
        queue=args.queue,
        limit=args.limit,
        before=args.before,
        since=args.since,
        until=args.until,
        as_json=args.json,
        table_prefix=args.table_prefix,
    )


def _run_status(args: argparse.Namespace) -> int:
    from .operate import show_status

    return show_status(args.store, args.job_id, follow=args.follow, table_prefix=args.table_prefix)


def _run_cancel(args: argparse.Namespace) -> int:
    from .operate import cancel_jobs

    return cancel_jobs(args.store, args.job_ids, table_prefix=args.table_prefix)


def _run_retry(args: argparse.Namespace) -> int:
    from .operate import retry_jobs

    return retry_jobs(args.store, args.job_ids, table_prefix=args.table_prefix)


def _run_purge(args: argparse.Namespace) -> int:
    from .operate import purge_jobs

    return purge_jobs(
        args.store,
        states=args.states or ["succeeded", "cancelled"],
        older_than=args.older_than,
        table_prefix=args.table_prefix,
    )


def _run_workers(args: argparse.Namespace) -> int:
    from .operate import list_workers

    return list_workers(args.store, as_json=args.json, table_prefix=args.table_prefix)


def _add_store(parser: argparse.ArgumentParser) -> None:
    """``--store`` and ``--table-prefix``, which every command on a store takes."""
    parser.add_argument(
        "--store",
        default=os.environ.get("ASYNCJOB_STORE"),
        required="ASYNCJOB_STORE" not in os.environ,
        help="the store's URL (default: $ASYNCJOB_STORE, which keeps a password out of ps)",
    )
    parser.add_argument(
        "--table-prefix",
        default=defaults.TABLE_PREFIX,
        help=f"the store's table prefix (default {defaults.TABLE_PREFIX})",
    )


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is from 0 to 65535, not {value}")
    return value


def _run_worker(args: argparse.Namespace) -> int:
    from .worker import run_worker

    return run_worker(
        args.store,
        args.modules,
        queues=args.queues,
        concurrency=args.concurrency,
        grace_period=args.grace_period,
        lease=args.lease,
        poll_interval=args.poll_interval,
        threads=args.threads,
        keep_finished=args.keep_finished,
        table_prefix=args.table_prefix,
        metrics=None if args.metrics_port is None else (args.metrics_host, args.metrics_port),
    )
