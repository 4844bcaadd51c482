"""The app an idle ``procrastinate worker`` runs (``--app
procrastinate_jobs.app``); its database from ``BENCH_DSN``."""

import os

import procrastinate

app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=os.environ["BENCH_DSN"]))


@app.task(name="noop")
async def noop() -> None:
    """Does nothing: the worker only waits for it."""
