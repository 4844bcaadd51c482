"""Registered jobs for the isolation tests, imported by their worker processes."""

from __future__ import annotations

import os
import time

import asyncjob


@asyncjob.job(name="tests.isolation.noted")
async def noted(n: int, block: float, path: str) -> int:
    """Note each start and end of job ``n`` in ``path``, and block the
    worker's event loop for ``block`` seconds in between, as CPU work done
    on the loop by mistake would."""
    with open(path, "a") as log:  # noqa: ASYNC230 - blocking on purpose, as below
        log.write(f"start {n} {os.getpid()}\n")
    time.sleep(block)  # noqa: ASYNC251 - the blocked loop is the point
    with open(path, "a") as log:  # noqa: ASYNC230 - blocking on purpose, as below
        log.write(f"end {n} {os.getpid()}\n")
    return n
