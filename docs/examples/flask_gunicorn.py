"""A Flask application under gunicorn, several worker processes, with
``asyncjob.sync`` and jobs run by ``asyncjob worker``.

The web processes only perform (``producer_only=True``): the store, an
SQLite file here (PostgreSQL for a fleet), holds the jobs, and an
``asyncjob worker`` process runs them and records their progress, which
any web process reads back.

``main()`` runs it all for real: gunicorn with two worker processes on a
free port, one ``asyncjob worker``, and requests over HTTP. Run it with
``python flask_gunicorn.py`` (it needs gunicorn: ``pip install gunicorn``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

from flask import Flask

import asyncjob
import asyncjob.sync


# --8<-- [start:app]
@asyncjob.job(retries=2)
def make_report(year: int) -> dict[str, int]:
    """Registered: ``asyncjob worker --import flask_gunicorn`` runs it."""
    for month in range(1, 13):
        asyncjob.set_progress(100 * month / 12, f"month {month} of 12")
    return {"year": year, "pages": 12, "worker": os.getpid()}


def create_app() -> Flask:
    """gunicorn 'flask_gunicorn:create_app()': called in each worker process,
    after the fork (see the recipe for --preload)."""
    app = Flask(__name__)
    # A producer: it records jobs, and leaves running them to asyncjob worker.
    asyncjob.sync.start(os.environ["ASYNCJOB_STORE"], producer_only=True)

    @app.post("/reports/<int:year>")
    def start_report(year: int) -> tuple[dict[str, Any], int]:
        return {"job": asyncjob.sync.perform(make_report, year)}, 202

    @app.get("/reports/<job_id>")
    def report(job_id: str) -> dict[str, Any]:
        try:
            status = asyncjob.sync.status(job_id)
        except asyncjob.JobNotFound:
            return {"state": "unknown"}
        return {"state": status.state, "progress": status.progress, "result": status.result}

    return app


# --8<-- [end:app]


# --8<-- [start:main]
def call(method: str, url: str) -> dict[str, Any]:
    with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=10) as got:
        answer: dict[str, Any] = json.load(got)
        return answer


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def main() -> None:
    here = Path(__file__).resolve().parent
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "ASYNCJOB_STORE": f"sqlite+aiosqlite:///{tmp}/jobs.db"}
        port = free_port()
        web = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--workers", "2", "--bind",
             f"127.0.0.1:{port}", "--chdir", str(here), "flask_gunicorn:create_app()"],
            env=env, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        worker = subprocess.Popen(
            [sys.executable, "-m", "asyncjob", "worker", "--store", env["ASYNCJOB_STORE"],
             "--import", "flask_gunicorn"],
            env=env, cwd=here, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            for line in web.stderr or ():  # gunicorn says when it listens
                if "Booting worker" in line:
                    break
            asyncjob.sync.start(env["ASYNCJOB_STORE"], producer_only=True)  # to wait here
            started = [call("POST", f"http://127.0.0.1:{port}/reports/{year}")
                       for year in (2025, 2026)]  # fmt: skip
            for answer in started:
                result = asyncjob.sync.wait(answer["job"], timeout=10)
                shown = call("GET", f"http://127.0.0.1:{port}/reports/{answer['job']}")
                print(shown["state"], shown["progress"], result["year"], result["pages"],
                      "run by the worker:", result["worker"] == worker.pid)  # fmt: skip
        finally:
            asyncjob.sync.stop(10)
            for process in (web, worker):
                process.send_signal(signal.SIGTERM)
            print("stopped:", [process.wait(10) for process in (web, worker)])
            if web.stderr is not None:
                web.stderr.close()


# --8<-- [end:main]

if __name__ == "__main__":
    main()
