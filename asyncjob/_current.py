"""The runner that module-level calls such as :func:`asyncjob.perform` use.

Runners register themselves when they start and leave when they stop; the
most recently started one that is still running answers.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from ._errors import RunnerNotRunning

if TYPE_CHECKING:
    from ._runner import Runner

__all__ = ("get", "push", "remove")

_lock = threading.Lock()  # runners start and stop on any thread's loop
_running: list[Runner] = []


def push(runner: Runner) -> None:
    with _lock:
        _running.append(runner)


def remove(runner: Runner) -> None:
    with _lock:
        if runner in _running:
            _running.remove(runner)


def get() -> Runner:
    """The runner to use, or :class:`RunnerNotRunning` saying how to start one."""
    with _lock:
        if _running:
            return _running[-1]
    raise RunnerNotRunning(
        "no asyncjob runner is running in this process: start one first, e.g. "
        "'async with asyncjob.Runner():' in your application's lifespan"
    )
