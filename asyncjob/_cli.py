"""The ``asyncjob`` command line.

Each subcommand is added to the parser by an ``_add_<name>`` function, which
sets the function that runs it as the ``handler`` default. Handlers take the
parsed arguments and return the exit code; their modules are imported only
when the subcommand runs, so that ``asyncjob --version`` stays fast.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from ._version import __version__

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
    from ._demo import run_demo

    return run_demo(plain=args.plain)
