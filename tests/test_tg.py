"""``asyncjob.tg`` in a real TurboGears2 2.5 application, driven with WebTest.

The application is in ``tg_app.py``: the ``tgext.asyncjob`` README's
controllers, with zope transactions and a ``DBSession``. Jobs are waited
for through the runner (``join``, ``wait``) and held with events, never
with sleeps. Each test stops the worker, which lives once per process, and
puts TurboGears' process-wide state back, so that the next test builds its
application afresh.
"""

from __future__ import annotations

import sys
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import create_engine, text

import asyncjob
from asyncjob.tg import (
    AsyncJobQueue,
    asyncjob_get_progress,
    asyncjob_perform,
    asyncjob_running_uid,
    plugme,
    start_async_worker,
    stop_async_worker,
)

from . import tg_app
from .conftest import TIMEOUT, Database
from .tg_app import FlaskApplication, TGApplication


class Apps:
    """Builds the applications of one test; :meth:`close` stops the worker
    and releases what they hold."""

    def __init__(self) -> None:
        self.made: list[TGApplication | FlaskApplication] = []

    def configurator(self, db: Database, app_globals: type = tg_app.Globals) -> Any:
        """The application's ``base_config``, not built yet."""
        return tg_app.make_configurator(db.sync_url, app_globals=app_globals)

    def build(self, base_config: Any) -> TGApplication:
        """Build the application from its ``base_config``."""
        app = tg_app.build_app(base_config)
        self.made.append(app)
        return app

    def tg(self, db: Database, app_globals: type = tg_app.Globals) -> TGApplication:
        """Configure and build the TurboGears2 application."""
        return self.build(self.configurator(db, app_globals))

    def flask(self, db: Database) -> FlaskApplication:
        """Build the Flask application."""
        app = tg_app.make_flask_app(db.sync_url)
        self.made.append(app)
        return app

    def close(self) -> None:
        """Let held jobs go, stop the worker, and close the databases."""
        queues: list[AsyncJobQueue] = []
        for app in self.made:
            app.probe.release_all()
            if isinstance(app, FlaskApplication) or hasattr(app.app_globals, "asyncjob_queue"):
                queues.append(app.queue)
        stop_async_worker(TIMEOUT)
        for app in self.made:
            app.close()
        assert not [queue for queue in queues if queue._thread.alive], "the worker did not stop"


@pytest.fixture
def apps() -> Iterator[Apps]:
    """Build applications; afterwards, stop the worker and reset TurboGears."""
    with pytest.raises(RuntimeError, match="not started"):
        asyncjob_get_progress("none")  # no worker left running by an earlier test
    with tg_app.tg_process_state():
        made = Apps()
        try:
            yield made
        finally:
            made.close()


def groups(db: Database) -> dict[str, str | None]:
    """``group_name: display_name`` of every group, read on a connection of
    its own, so only what was committed."""
    engine = create_engine(db.sync_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT group_name, display_name FROM tg_group")).all()
    finally:
        engine.dispose()
    return {row.group_name: row.display_name for row in rows}


def uid_of(location: str) -> str:
    """The ``uid`` parameter of the state page's address."""
    return parse_qs(urlsplit(location).query)["uid"][0]


# -- 1. starting the worker ------------------------------------------------------


def test_start_in_globals_init_puts_the_handle_on_app_globals(
    apps: Apps, sqlite_db: Database
) -> None:
    """Called in ``Globals.__init__`` with no argument (as in the 0.2 README),
    the worker's handle lands on that object; a second call anywhere returns
    the same handle, and stores it where it is told to."""
    app = apps.tg(sqlite_db)
    queue = app.app_globals.asyncjob_queue
    assert isinstance(queue, AsyncJobQueue)
    assert queue._thread.alive
    assert start_async_worker() is queue
    other = tg_app.PlainGlobals()
    assert start_async_worker(other) is queue
    assert other.asyncjob_queue is queue  # type: ignore[attr-defined]
    assert app.testapp.get("/background").text == "OK"
    app.join()
    assert app.probe.results == [10]


def test_start_elsewhere_finds_app_globals_in_tg_config(apps: Apps, sqlite_db: Database) -> None:
    """Called outside any ``Globals.__init__`` (here, a plain function), the
    handle goes on ``tg.config['tg.app_globals']``."""
    app = apps.tg(sqlite_db, app_globals=tg_app.PlainGlobals)
    assert not hasattr(app.app_globals, "asyncjob_queue")
    queue = start_async_worker()
    assert app.app_globals.asyncjob_queue is queue
    assert app.testapp.get("/background").text == "OK"
    app.join()
    assert app.probe.results == [10]


def test_plugme_starts_the_worker_when_the_environment_is_loaded(
    apps: Apps, sqlite_db: Database
) -> None:
    """``plugme(base_config, options)`` (the 0.3.1 README) starts nothing by
    itself; building the application starts the worker with those options
    and puts its handle on the app globals."""
    base_config = apps.configurator(sqlite_db, app_globals=tg_app.PlainGlobals)
    assert plugme(base_config, {"concurrency": 2}) == {"appid": "asyncjob"}
    with pytest.raises(RuntimeError, match="not started"):
        asyncjob_perform(tg_app.background_task, 1)
    app = apps.build(base_config)
    queue = app.app_globals.asyncjob_queue
    assert isinstance(queue, AsyncJobQueue)
    assert queue.runner.options.concurrency == 2
    assert start_async_worker() is queue
    assert app.testapp.get("/background").text == "OK"
    app.join()
    assert app.probe.results == [10]


# -- 2. a background task ---------------------------------------------------------


def test_background_task_runs(apps: Apps, sqlite_db: Database) -> None:
    """The README's first example: the request answers at once, the task
    runs afterwards."""
    app = apps.tg(sqlite_db)
    assert app.testapp.get("/background").text == "OK"
    app.join()
    assert app.probe.results == [10]


# -- 3. progress -------------------------------------------------------------------


def test_progress_controller_and_state_page(apps: Apps, sqlite_db: Database) -> None:
    """The README's progress example: redirected to the state page, which
    reads 'Not yet started' while the single worker is busy with another
    job, then each step's number, then 'Job Completed'."""
    app = apps.tg(sqlite_db)
    probe = app.probe
    app.testapp.get("/block")
    assert probe.blocking.wait(TIMEOUT)

    response = app.testapp.get("/controller_method", status=302)
    state_page = response.location
    assert urlsplit(state_page).path == "/state"
    uid = uid_of(state_page)
    assert response.follow().text == "Not yet started"

    probe.unblock.set()
    for i in range(5):
        assert probe.steps.wait_reached(i)
        assert app.testapp.get(state_page).text == str(i)
        probe.steps.release(i)
    assert app.wait(uid) is None
    assert app.testapp.get(state_page).text == "Job Completed"


# -- 4. asyncjob_timed_query ---------------------------------------------------------


def test_timed_query_finds_the_group_the_request_commits(apps: Apps, database: Database) -> None:
    """The README's database example: the job waits for the group that the
    request flushed, and commits after performing; then renames it."""
    app = apps.tg(database)
    assert app.testapp.get("/timed_query").text == "OK"
    app.join()
    assert groups(database) == {"test_group": "Prova"}


def test_timed_query_retries_until_the_request_commits(apps: Apps, database: Database) -> None:
    """When the job looks before the request commits, it misses the group,
    tries again, and finds it once committed."""
    app = apps.tg(database)
    assert app.testapp.get("/timed_query_after_a_miss").text == "OK"
    app.join()
    assert groups(database) == {"test_group": "Prova"}
    # A miss, a find, and the example's own .first().
    assert app.probe.job_queries >= 3


def test_timed_query_with_after_commit(apps: Apps, database: Database) -> None:
    """With ``after_commit=True`` the job is handed over when the request
    commits, and finds the group at its first try."""
    app = apps.tg(database, app_globals=tg_app.globals_starting_with(after_commit=True))
    assert app.testapp.get("/timed_query").text == "OK"
    app.join()
    assert groups(database) == {"test_group": "Prova"}
    # asyncjob_timed_query's one try, and the example's own .first().
    assert app.probe.job_queries == 2


def test_after_commit_job_is_unknown_until_the_request_commits(
    apps: Apps, sqlite_db: Database
) -> None:
    """With ``after_commit=True`` the id is returned at once but reads as
    unknown (``None``) inside the request; once it commits, the job runs."""
    app = apps.tg(sqlite_db, app_globals=tg_app.globals_starting_with(after_commit=True))
    uid, progress = app.testapp.get("/perform_and_peek", {"name": "peeked"}).text.split(" ", 1)
    assert progress == "None"
    assert app.wait(uid) is None
    assert app.probe.ran == ["peeked"]


def test_after_commit_drops_the_job_of_an_aborted_request(apps: Apps, database: Database) -> None:
    """With ``after_commit=True`` a request that fails after performing
    drops the job: its id reads as ``None`` and the job never runs; what the
    request wrote is rolled back; the next request's job runs."""
    app = apps.tg(database, app_globals=tg_app.globals_starting_with(after_commit=True))
    with pytest.raises(RuntimeError, match="the request fails after performing"):
        app.testapp.get("/perform_then_fail", {"name": "doomed"})
    [uid] = app.probe.ids
    assert asyncjob_get_progress(uid) is None
    app.join()
    with pytest.raises(asyncjob.JobNotFound):
        app.status(uid)
    assert app.probe.ran == []

    kept = app.testapp.get("/perform_and_peek", {"name": "kept"}).text.split(" ")[0]
    assert app.wait(kept) is None
    assert app.probe.ran == ["kept"]
    assert "doomed" not in groups(database)


# -- 5. failures and the running id ------------------------------------------------


def test_failing_job_is_rolled_back_and_the_worker_goes_on(apps: Apps, database: Database) -> None:
    """A job that writes a group and raises: the write is rolled back, the
    failure is recorded, and the next job runs and commits."""
    app = apps.tg(database)
    failed = app.testapp.get("/fail", {"name": "broken"}).text
    with pytest.raises(asyncjob.JobFailed, match="failing on purpose after writing broken"):
        app.wait(failed)
    assert asyncjob_get_progress(failed) is None

    written = app.testapp.get("/write", {"name": "after"}).text
    assert app.wait(written) is None
    assert groups(database) == {"after": None}


def test_running_uid_inside_and_outside_a_job(apps: Apps, sqlite_db: Database) -> None:
    """``asyncjob_running_uid()`` is the id ``asyncjob_perform`` returned
    inside the job, and ``None`` in the request and in the test."""
    app = apps.tg(sqlite_db)
    taskid, in_request = app.testapp.get("/uid").text.split(" ")
    assert in_request == "None"
    app.join()
    assert app.probe.uids == [taskid]
    assert asyncjob_running_uid() is None


# -- 6. a progress tracker of the seed's kind ---------------------------------------


class DictTracker:
    """The seed's custom tracker interface, kept in a dict, with every call
    recorded."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._progress: dict[str, tuple[Any, Any]] = {}
        self.calls: list[tuple[Any, ...]] = []

    def track(self, entryid: str) -> None:
        with self._lock:
            self._progress[entryid] = (-1, None)
            self.calls.append(("track", entryid))

    def remove(self, entryid: str) -> None:
        with self._lock:
            self._progress.pop(entryid, None)
            self.calls.append(("remove", entryid))

    def set_progress(self, entryid: str, value: Any, message: Any) -> None:
        with self._lock:
            self._progress[entryid] = (value, message)
            self.calls.append(("set_progress", entryid, value, message))

    def get_progress(self, entryid: str) -> tuple[Any, Any] | None:
        with self._lock:
            return self._progress.get(entryid)

    def calls_for(self, entryid: str) -> list[tuple[Any, ...]]:
        with self._lock:
            return [call for call in self.calls if call[1] == entryid]


def test_custom_progress_tracker(apps: Apps, sqlite_db: Database) -> None:
    """A tracker given to ``start_async_worker`` is told of the job when it
    is performed, of each progress report, and of its end; the state page
    reads from it."""
    tracker = DictTracker()
    app = apps.tg(sqlite_db, app_globals=tg_app.globals_starting_with(progress_tracker=tracker))
    probe = app.probe
    app.testapp.get("/block")
    assert probe.blocking.wait(TIMEOUT)

    response = app.testapp.get("/controller_method", status=302)
    uid = uid_of(response.location)
    assert tracker.calls_for(uid) == [("track", uid)]
    assert response.follow().text == "Not yet started"

    probe.unblock.set()
    for i in range(5):
        assert probe.steps.wait_reached(i)
        assert tracker.calls_for(uid)[-1] == ("set_progress", uid, i, None)
        assert app.testapp.get(response.location).text == str(i)
        probe.steps.release(i)
    app.join()
    assert tracker.calls_for(uid) == [
        ("track", uid),
        *[("set_progress", uid, i, None) for i in range(5)],
        ("remove", uid),
    ]
    assert app.testapp.get(response.location).text == "Job Completed"

    tracker.set_progress("kept elsewhere", 7, "seven")
    assert asyncjob_get_progress("kept elsewhere") == (7, "seven")


# -- 7. many request threads ---------------------------------------------------------


def test_many_request_threads_perform_at_once(apps: Apps, sqlite_db: Database) -> None:
    """16 request threads, started together, perform 25 jobs each: 400
    distinct ids, and every job runs exactly once."""
    app = apps.tg(sqlite_db)
    threads_count, per_thread = 16, 25
    start = threading.Barrier(threads_count, timeout=TIMEOUT)
    ids: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def requests() -> None:
        client = app.new_client()
        try:
            start.wait()
            mine = [client.get("/count").text for _ in range(per_thread)]
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            with lock:
                errors.append(exc)
            return
        with lock:
            ids.extend(mine)

    threads = [threading.Thread(target=requests) for _ in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert not [thread for thread in threads if thread.is_alive()]
    assert errors == []
    assert len(ids) == threads_count * per_thread
    assert len(set(ids)) == len(ids)
    app.join()
    assert app.probe.counts == Counter(ids)
    assert set(app.probe.counts.values()) == {1}


# -- 8. order and concurrency --------------------------------------------------------


def test_jobs_run_one_at_a_time_in_order_by_default(apps: Apps, sqlite_db: Database) -> None:
    """Concurrency 1, as in ``tgext.asyncjob``: while one job runs, the
    others wait queued; they run in the order performed, each ending before
    the next starts."""
    app = apps.tg(sqlite_db)
    assert app.queue.runner.options.concurrency == 1
    app.testapp.get("/block")
    assert app.probe.blocking.wait(TIMEOUT)
    ids = [app.testapp.get("/ordered", {"n": str(n)}).text for n in range(8)]
    assert {app.status(job_id).state for job_id in ids} == {asyncjob.JobState.queued}

    app.probe.unblock.set()
    app.join()
    assert app.probe.log == [(event, n) for n in range(8) for event in ("start", "end")]


def test_concurrency_option_lets_jobs_overlap(apps: Apps, sqlite_db: Database) -> None:
    """With ``start_async_worker(concurrency=4)`` four jobs run at once:
    each waits at a barrier that only four running together can pass."""
    app = apps.tg(sqlite_db, app_globals=tg_app.globals_starting_with(concurrency=4))
    ids = [app.testapp.get("/meet").text for _ in range(4)]
    for job_id in ids:
        assert app.wait(job_id) is None


# -- 9. the same layer in a Flask application --------------------------------------


def test_flask_job_commits_through_the_given_session(apps: Apps, database: Database) -> None:
    """In a Flask application with a plain scoped session (not joined to
    zope transactions) given as ``dbsession=``, a job's writes are
    committed, though the ``transaction`` package is installed."""
    app = apps.flask(database)
    job_id = app.testapp.get("/write/flask_row").text
    assert app.wait(job_id) == "flask_row"
    assert groups(database) == {"flask_row": None}
    assert app.probe.flask_session_events == ["commit"]


def test_flask_failing_job_is_rolled_back(apps: Apps, database: Database) -> None:
    """In the Flask application a failing job's writes are not kept."""
    app = apps.flask(database)
    job_id = app.testapp.get("/fail/flask_broken").text
    with pytest.raises(asyncjob.JobFailed, match="failing on purpose"):
        app.wait(job_id)
    assert groups(database) == {}


def test_flask_without_the_transaction_package(
    apps: Apps, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``transaction`` not importable (as when it is not installed),
    ``dbsession`` is committed after a job that returns and rolled back
    after one that raises."""
    monkeypatch.setitem(sys.modules, "transaction", None)
    app = apps.flask(database)
    written = app.testapp.get("/write/kept_row").text
    assert app.wait(written) == "kept_row"
    assert app.probe.flask_session_events == ["commit"]

    failed = app.testapp.get("/fail/lost_row").text
    with pytest.raises(asyncjob.JobFailed, match="failing on purpose"):
        app.wait(failed)
    assert app.probe.flask_session_events == ["commit", "rollback"]
    assert groups(database) == {"kept_row": None}
