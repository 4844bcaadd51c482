"""``tg_app``'s TurboGears2 application, served over HTTP by a process of its own.

``test_tg_processes.py`` starts two of these on one SQL store: the seed's
"Progress Tracking with Multiple Processes", with the store in place of
the Redis tracker. Each process builds the application with
``start_async_worker(store=URL)`` (and ``producer_only=True`` when told),
serves it with wsgiref on a free port of 127.0.0.1, one thread per request,
and writes that port on the file descriptor ``--ready-fd`` once it listens.
SIGTERM lets every held job go and stops the server and the worker.

Run it as::

    python -c "import sys; from tests.tg_process_app import main; sys.exit(main())" \\
        --store URL --db SYNC_URL --ready-fd FD [--producer-only]

(imported by name, not run with ``-m``, so that the jobs registered here
have the same names in every process).

Besides ``tg_app``'s controllers, the application has:

- ``/reached?step=i`` and ``/release?step=i``: wait until the progress job
  running in this process is at step ``i``; let it go on from there;
- ``/blocking`` and ``/unblock``: wait until the blocking job runs here;
  let it end;
- ``/controller_method_registered`` and ``/block_registered``: the same
  jobs as ``/controller_method`` and ``/block``, registered with
  ``@asyncjob.job``: any worker of the store may run them;
- ``/result?uid=...``: the job's result as JSON, once it has ended;
- ``/pid``: this process's id.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import threading
import warnings
from socketserver import ThreadingMixIn
from types import FrameType
from typing import Any
from wsgiref.simple_server import WSGIServer, make_server

import asyncjob
from asyncjob.tg import asyncjob_perform, asyncjob_set_progress, stop_async_worker

from . import tg_app
from .conftest import TIMEOUT
from .tg_app import expose

with warnings.catch_warnings():
    # WebOb 1.8 imports the cgi module, deprecated since Python 3.11 (see tg_app).
    warnings.filterwarnings("ignore", "'cgi' is deprecated", DeprecationWarning)
    import tg
    from tg import redirect, url

# -- registered jobs: any worker of the store may run them ----------------------


@asyncjob.job
def registered_progress_job() -> int:
    """The seed's progress job, registered; answers with the id of the
    process that ran it."""
    for i in range(5):
        asyncjob_set_progress(i)
        tg_app.probe.steps.step(i)  # was: time.sleep(1)
    return os.getpid()


@asyncjob.job
def registered_blocking_job() -> None:
    """Holds the worker that runs it until the test lets it go."""
    tg_app.blocking_job()


# -- the controllers ---------------------------------------------------------------


def _wait(event: threading.Event, what: str) -> str:
    if not event.wait(TIMEOUT):
        raise TimeoutError(f"{what} did not happen in {TIMEOUT} s")
    return "OK"


class ProcessRootController(tg_app.RootController):
    """``tg_app``'s controllers, and the ones the tests of several processes need."""

    @expose()
    def pid(self) -> str:
        """This process's id."""
        return str(os.getpid())

    @expose()
    def reached(self, step: str) -> str:
        """Wait until the progress job running here is at step ``step``."""
        if not tg_app.probe.steps.wait_reached(int(step)):
            raise TimeoutError(f"step {step} was not reached in {TIMEOUT} s")
        return "OK"

    @expose()
    def release(self, step: str) -> str:
        """Let the progress job running here go on from step ``step``."""
        tg_app.probe.steps.release(int(step))
        return "OK"

    @expose()
    def blocking(self) -> str:
        """Wait until the blocking job runs here."""
        return _wait(tg_app.probe.blocking, "the blocking job's start")

    @expose()
    def unblock(self) -> str:
        """Let the blocking job running here end."""
        tg_app.probe.unblock.set()
        return "OK"

    @expose()
    def block_registered(self) -> str:
        """Perform the registered blocking job; answers with its id."""
        return asyncjob_perform(registered_blocking_job)

    @expose()
    def controller_method_registered(self) -> Any:
        """The seed's progress example, with the registered job."""
        taskid = asyncjob_perform(registered_progress_job)
        return redirect(url("/state", params=dict(uid=taskid)))  # noqa: C408 - as the seed

    @expose()
    def result(self, uid: str) -> str:
        """The job's result, as JSON, once it has ended here or elsewhere."""
        queue = tg.app_globals.asyncjob_queue
        return json.dumps(queue.wait(uid, TIMEOUT))


# -- serving ---------------------------------------------------------------------------


class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    """wsgiref's server, one thread per request."""

    daemon_threads = True


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True, help="the SQL store's async URL")
    parser.add_argument("--db", required=True, help="the application's database, sync URL")
    parser.add_argument("--ready-fd", type=int, required=True, help="where to write the port")
    parser.add_argument("--producer-only", action="store_true", help="leave registered jobs")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Build the application, serve it until SIGTERM, then stop the worker."""
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format=f"[{os.getpid()}] %(levelname)s %(name)s: %(message)s"
    )
    options: dict[str, Any] = {"store": args.store}
    if args.producer_only:
        options["producer_only"] = True
    base_config = tg_app.make_configurator(
        args.db, app_globals=tg_app.globals_starting_with(**options)
    )
    base_config.update_blueprint({"root_controller": ProcessRootController()})
    app = tg_app.build_app(base_config)
    server = make_server("127.0.0.1", 0, app.testapp.app, server_class=ThreadingWSGIServer)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        tg_app.probe.release_all()
        # shutdown() waits for serve_forever(), which this very thread runs.
        threading.Thread(target=server.shutdown, name="shutdown").start()

    signal.signal(signal.SIGTERM, on_sigterm)
    with os.fdopen(args.ready_fd, "w") as ready:
        ready.write(f"{server.server_port}\n")
    logging.info("serving on 127.0.0.1:%d, %r", server.server_port, options)
    try:
        server.serve_forever(poll_interval=0.05)
    finally:
        server.server_close()
        stop_async_worker(TIMEOUT)
        app.close()
    logging.info("stopped")
    return 0
