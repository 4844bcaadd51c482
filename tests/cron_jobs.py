"""A periodic job for the worker processes of tests/test_cron.py: imported
by those workers alone (``--import tests.cron_jobs``), never by the test
process, whose other runners must not keep its schedule."""

from __future__ import annotations

import os
import socket

import asyncjob

#: The loopback port of the test's listener, which hears of every run.
PORT_VARIABLE = "ASYNCJOB_TEST_CRON_PORT"  # the same in tests/test_cron.py


@asyncjob.periodic("* * * * * *")  # every second
def every_second() -> None:
    """Tell the test this run happened: its job id, and this process."""
    with socket.create_connection(("127.0.0.1", int(os.environ[PORT_VARIABLE])), 10) as peer:
        peer.sendall(f"{asyncjob.current_job_id()} {os.getpid()}\n".encode())
