"""A real TurboGears2 2.5 application using ``asyncjob.tg``, for ``test_tg.py``.

Built the way a quickstarted project is: ``FullStackApplicationConfigurator``,
SQLAlchemy with a ``DBSession`` registered with zope.sqlalchemy, the
transaction manager on, a ``Group`` model, and app globals that start the
worker. The controllers are the examples of the ``tgext.asyncjob`` README,
changed only where the text says so: the import line, ``print`` (Python 2),
``time.sleep(1)`` (replaced by a step the test controls), the small
``retries``/``interval`` of ``asyncjob_timed_query``, and
``url('/state', uid=taskid)``, which TurboGears 2.5 spells
``url('/state', params=dict(uid=taskid))``.

What the jobs do is recorded on :data:`probe`, made anew with each
application, so that the tests can see it and hold jobs where they like.

A Flask application (:func:`make_flask_app`) uses the same layer with a
plain SQLAlchemy scoped session and no transaction manager.
"""

from __future__ import annotations

import sys
import threading
import types
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import flask
from sqlalchemy import Engine, String, create_engine, event
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, scoped_session
from sqlalchemy.orm import sessionmaker as make_sessionmaker
from zope.sqlalchemy import register

import asyncjob
from asyncjob.tg import (
    AsyncJobQueue,
    asyncjob_get_progress,
    asyncjob_perform,
    asyncjob_running_uid,
    asyncjob_set_progress,
    asyncjob_timed_query,
    start_async_worker,
)

from .conftest import TIMEOUT

with warnings.catch_warnings():
    # WebOb 1.8, which TurboGears2 2.5 runs on, imports the cgi module,
    # deprecated since Python 3.11.
    warnings.filterwarnings("ignore", "'cgi' is deprecated", DeprecationWarning)
    import tg
    import webtest
    from tg import FullStackApplicationConfigurator, redirect, url
    from tg.configuration import milestones
    from tg.request_local import config as tg_process_config

F = TypeVar("F", bound=Callable[..., Any])


def expose() -> Callable[[F], F]:
    """``tg.expose()``, typed for the type checker."""
    decorator: Callable[[F], F] = tg.expose()
    return decorator


# -- the model (model/__init__.py and model/auth.py of a quickstart) ----------


class DeclarativeModel(DeclarativeBase):
    """The application's declarative base."""


DBSession: scoped_session[Session] = scoped_session(make_sessionmaker(autoflush=True))
register(DBSession)


class Group(DeclarativeModel):
    """The quickstart's ``tg_group`` table, the one the README's example uses."""

    __tablename__ = "tg_group"

    group_id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    group_name: Mapped[str] = mapped_column(String(16), unique=True)
    display_name: Mapped[str | None] = mapped_column(String(255))


def init_model(engine: Engine) -> None:
    """Bind ``DBSession`` to the application's engine, and make the tables
    (``gearbox setup-app``'s work, done here to keep the tests short)."""
    DBSession.remove()
    DBSession.configure(bind=engine)
    DeclarativeModel.metadata.create_all(engine)
    event.listen(engine, "after_cursor_execute", _count_job_queries)


def _count_job_queries(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
    # After the query ran: what it could see is settled.
    if statement.lstrip().upper().startswith("SELECT") and asyncjob_running_uid() is not None:
        with probe.lock:
            probe.job_queries += 1
        probe.job_queried.set()


# -- what the jobs let the tests see -----------------------------------------


class Steps:
    """A job's steps, each held until the test lets it go.

    The job calls :meth:`step` where the README's job slept; the test waits
    with :meth:`wait_reached` until the job is there, looks, then lets it go
    on with :meth:`release`.
    """

    def __init__(self, count: int) -> None:
        self._reached = [threading.Event() for _ in range(count)]
        self._released = [threading.Event() for _ in range(count)]

    def step(self, i: int) -> None:
        """In the job: say step ``i`` is reached, and wait to be released."""
        self._reached[i].set()
        if not self._released[i].wait(TIMEOUT):
            raise TimeoutError(f"step {i} was never released")

    def wait_reached(self, i: int) -> bool:
        """In the test: wait until the job is at step ``i``."""
        return self._reached[i].wait(TIMEOUT)

    def release(self, i: int) -> None:
        """In the test: let the job go on from step ``i``."""
        self._released[i].set()

    def release_all(self) -> None:
        """Let every step go (after a failed test, so that nothing hangs)."""
        for released in self._released:
            released.set()


@dataclass
class Probe:
    """What the jobs of one application did, and the gates that hold them."""

    #: ``background_task``'s results.
    results: list[int] = field(default_factory=list)
    #: The steps of the README's progress job.
    steps: Steps = field(default_factory=lambda: Steps(5))
    #: Set by the blocking job once it runs; it then waits for ``unblock``.
    blocking: threading.Event = field(default_factory=threading.Event)
    unblock: threading.Event = field(default_factory=threading.Event)
    #: ``asyncjob_running_uid()`` as each job that records it saw it.
    uids: list[str | None] = field(default_factory=list)
    #: How many times each counting job ran, by its id.
    counts: Counter[str | None] = field(default_factory=Counter)
    #: ``("start", n)`` and ``("end", n)`` of the ordered jobs.
    log: list[tuple[str, int]] = field(default_factory=list)
    #: Jobs that must all run at once to get past it.
    meeting: threading.Barrier = field(
        default_factory=lambda: threading.Barrier(4, timeout=TIMEOUT)
    )
    #: Set once a job has run a query on the application's database.
    job_queried: threading.Event = field(default_factory=threading.Event)
    #: How many queries jobs ran on it.
    job_queries: int = 0
    #: Ids that a request performed before it failed.
    ids: list[str] = field(default_factory=list)
    #: The jobs that ran, by name.
    ran: list[str] = field(default_factory=list)
    #: ``"commit"`` and ``"rollback"`` of the Flask application's sessions.
    flask_session_events: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def release_all(self) -> None:
        """Let every held job go."""
        self.steps.release_all()
        self.unblock.set()
        self.meeting.abort()


#: The current application's probe; :func:`build_app` and :func:`make_flask_app` make a new one.
probe = Probe()


# -- jobs ----------------------------------------------------------------------


def background_task(number: int) -> None:
    """The README's first job (it printed ``number*2``)."""
    probe.results.append(number * 2)


def blocking_job() -> None:
    """Holds the worker until the test lets it go."""
    probe.blocking.set()
    if not probe.unblock.wait(TIMEOUT):
        raise TimeoutError("the blocking job was never released")


def write_group(name: str) -> None:
    """Writes a group in the job's transaction."""
    DBSession.add(Group(group_name=name))


def failing_job(name: str) -> None:
    """Writes a group, then fails: the group must not be kept."""
    DBSession.add(Group(group_name=name))
    DBSession.flush()
    raise RuntimeError(f"failing on purpose after writing {name}")


def record_uid() -> None:
    """Records the id the job sees for itself."""
    probe.uids.append(asyncjob_running_uid())


def count_job() -> None:
    """Counts its own runs, by id."""
    uid = asyncjob_running_uid()
    with probe.lock:
        probe.counts[uid] += 1


def ordered_job(n: int) -> None:
    """Logs its start and its end."""
    with probe.lock:
        probe.log.append(("start", n))
    with probe.lock:
        probe.log.append(("end", n))


def meeting_job() -> None:
    """Gets past only when three other meeting jobs run at the same time."""
    probe.meeting.wait()


def marker_job(name: str) -> None:
    """Records that it ran."""
    with probe.lock:
        probe.ran.append(name)


# -- controllers -------------------------------------------------------------


class RootController(tg.TGController):  # type: ignore[misc]  # tg has no type information
    """The README's controllers, then the ones the tests add."""

    @expose()
    def background(self) -> str:
        """Performing background tasks."""
        asyncjob_perform(background_task, 5)
        return "OK"

    @expose()
    def controller_method(self) -> Any:
        """Progress tracking example."""

        def async_action() -> None:
            for i in range(5):
                asyncjob_set_progress(i)
                probe.steps.step(i)  # was: time.sleep(1)

        taskid = asyncjob_perform(async_action)
        return redirect(url("/state", params=dict(uid=taskid)))  # noqa: C408 - as the README

    @expose()
    def state(self, uid: str) -> str:
        """Progress tracking example, the state page."""
        state = asyncjob_get_progress(uid)
        if not state:
            return "Job Completed"
        elif state[0] < 0:
            return "Not yet started"
        else:
            return str(state[0])

    @expose()
    def timed_query(self) -> str:
        """Accessing the database (the README's ``controller_method``)."""

        def async_query_action(group_id: int) -> None:
            group = asyncjob_timed_query(
                DBSession.query(Group).filter_by(group_id=group_id), retries=50, interval=0.05
            ).first()
            group.display_name = "Prova"

        g = Group(group_name="test_group")
        DBSession.add(g)
        DBSession.flush()
        asyncjob_perform(async_query_action, g.group_id)
        return "OK"

    # -- added for the tests --

    @expose()
    def timed_query_after_a_miss(self) -> str:
        """The same, but the request commits only once the job has looked
        for the group (and missed it, as it is not committed yet)."""

        def async_query_action(group_id: int) -> None:
            group = asyncjob_timed_query(
                DBSession.query(Group).filter_by(group_id=group_id), retries=50, interval=0.05
            ).first()
            group.display_name = "Prova"

        g = Group(group_name="test_group")
        DBSession.add(g)
        DBSession.flush()
        asyncjob_perform(async_query_action, g.group_id)
        if not probe.job_queried.wait(TIMEOUT):
            raise TimeoutError("the job did not query")
        return "OK"

    @expose()
    def block(self) -> str:
        """Holds the worker with a job that waits for the test."""
        return asyncjob_perform(blocking_job)

    @expose()
    def write(self, name: str) -> str:
        """A job that writes a group."""
        return asyncjob_perform(write_group, name)

    @expose()
    def fail(self, name: str) -> str:
        """A job that writes a group and fails."""
        return asyncjob_perform(failing_job, name)

    @expose()
    def uid(self) -> str:
        """A job that records its id; answers with that id and the request's own."""
        taskid = asyncjob_perform(record_uid)
        return f"{taskid} {asyncjob_running_uid()}"

    @expose()
    def count(self) -> str:
        """A job that counts its runs."""
        return asyncjob_perform(count_job)

    @expose()
    def ordered(self, n: str) -> str:
        """The ``n``-th of a series of jobs that log their order."""
        return asyncjob_perform(ordered_job, int(n))

    @expose()
    def meet(self) -> str:
        """A job that needs three others running beside it."""
        return asyncjob_perform(meeting_job)

    @expose()
    def perform_then_fail(self, name: str) -> str:
        """Performs a job, writes a group, then fails: the request's
        transaction is aborted."""
        probe.ids.append(asyncjob_perform(marker_job, name))
        DBSession.add(Group(group_name=name))
        DBSession.flush()
        raise RuntimeError("the request fails after performing")

    @expose()
    def perform_and_peek(self, name: str) -> str:
        """Performs a job and answers with its progress as seen before the
        request's transaction commits."""
        taskid = asyncjob_perform(marker_job, name)
        return f"{taskid} {asyncjob_get_progress(taskid)!r}"


# -- app globals (lib/app_globals.py) ------------------------------------------


class Globals:
    """``tgext.asyncjob`` 0.2's way: start the worker in ``__init__``."""

    def __init__(self) -> None:
        start_async_worker()


class PlainGlobals:
    """App globals that start nothing (``plugme`` does it, or the test)."""


def globals_starting_with(**options: Any) -> type:
    """App globals whose ``__init__`` calls ``start_async_worker(**options)``."""

    class OptionGlobals:
        """App globals that start the worker with options."""

        def __init__(self) -> None:
            start_async_worker(**options)

    return OptionGlobals


# -- the application -----------------------------------------------------------


@dataclass
class TGApplication:
    """A built application, with what the tests need to look at it."""

    testapp: webtest.TestApp
    app_globals: Any
    probe: Probe

    @property
    def queue(self) -> AsyncJobQueue:
        """The worker's handle, as the application has it."""
        queue: AsyncJobQueue = self.app_globals.asyncjob_queue
        return queue

    def new_client(self) -> webtest.TestApp:
        """Another WebTest client of the same application (one per thread)."""
        return webtest.TestApp(self.testapp.app)

    def join(self) -> None:
        """Wait until no job is queued or running."""
        join_worker(self.queue)

    def status(self, job_id: str) -> asyncjob.JobStatus:
        """The job's status, from the runner."""
        return self.queue._thread.call(self.queue.runner.status, job_id)

    def wait(self, job_id: str) -> Any:
        """Wait for the job to end; its result."""
        return self.queue._thread.call(self.queue.runner.wait, job_id, TIMEOUT)

    def close(self) -> None:
        """Release the database connections (the worker is stopped apart)."""
        self.probe.release_all()
        DBSession.remove()
        self.app_globals.sa_engine.dispose()


def join_worker(queue: AsyncJobQueue) -> None:
    """Wait, from sync code, until the worker has no job queued or running."""
    queue._thread.call(queue.runner.join, TIMEOUT)


def make_configurator(db_url: str, *, app_globals: type = Globals) -> Any:
    """``config/app_cfg.py``: the application's configurator, on the
    database at ``db_url``, its app globals made from ``app_globals``."""
    base_config = FullStackApplicationConfigurator()
    base_config.update_blueprint(
        {
            "root_controller": RootController(),
            "app_globals": app_globals,
            "use_sqlalchemy": True,
            "sqlalchemy.url": db_url,
            "model": sys.modules[__name__],
            "tm.enabled": True,
            "errorpage.enabled": False,
        }
    )
    return base_config


def build_app(base_config: Any) -> TGApplication:
    """Make the WSGI application (with a new :data:`probe`) and wrap it for
    WebTest. Build it inside :func:`tg_process_state`, so that the next
    application starts afresh."""
    global probe
    probe = Probe()
    wsgi_app = base_config.make_wsgi_app({}, {})
    return TGApplication(webtest.TestApp(wsgi_app), tg.config["tg.app_globals"], probe)


@contextmanager
def tg_process_state() -> Iterator[None]:
    """Put TurboGears' process-wide state back as it was afterwards, as
    TurboGears' own tests do, so that applications can be built again:
    its configuration and its milestones."""
    configs = list(tg_process_config._process_configs)
    try:
        yield
    finally:
        tg_process_config._process_configs[:] = configs
        milestones._reset_all()


# -- the same layer in a Flask application ---------------------------------------


FlaskSession: scoped_session[Session] = scoped_session(make_sessionmaker())


@event.listens_for(FlaskSession, "after_commit")
def _flask_session_committed(session: Session) -> None:
    probe.flask_session_events.append("commit")


@event.listens_for(FlaskSession, "after_rollback")
def _flask_session_rolled_back(session: Session) -> None:
    probe.flask_session_events.append("rollback")


def flask_write_group(name: str) -> str:
    """A job of the Flask application: writes through ``FlaskSession``."""
    FlaskSession.add(Group(group_name=name))
    return name


def flask_failing_job(name: str) -> None:
    """A job of the Flask application that writes and fails."""
    FlaskSession.add(Group(group_name=name))
    FlaskSession.flush()
    raise RuntimeError(f"failing on purpose after writing {name}")


@dataclass
class FlaskApplication:
    """A built Flask application, with what the tests need to look at it."""

    testapp: webtest.TestApp
    queue: AsyncJobQueue
    engine: Engine
    probe: Probe

    def join(self) -> None:
        """Wait until no job is queued or running."""
        join_worker(self.queue)

    def wait(self, job_id: str) -> Any:
        """Wait for the job to end; its result."""
        return self.queue._thread.call(self.queue.runner.wait, job_id, TIMEOUT)

    def close(self) -> None:
        """Release the database connections (the worker is stopped apart)."""
        FlaskSession.remove()
        self.engine.dispose()


def make_flask_app(db_url: str) -> FlaskApplication:
    """A Flask application whose jobs write through a plain scoped session
    (not registered with zope.sqlalchemy), given as ``dbsession=``."""
    global probe
    probe = Probe()
    engine = create_engine(db_url)
    DeclarativeModel.metadata.create_all(engine)
    FlaskSession.remove()
    FlaskSession.configure(bind=engine)

    app = flask.Flask(__name__)
    app.extensions["asyncjob"] = holder = types.SimpleNamespace()
    start_async_worker(holder, dbsession=FlaskSession)

    @app.teardown_appcontext
    def remove_session(exc: BaseException | None) -> None:
        FlaskSession.remove()

    @app.route("/write/<name>")
    def write(name: str) -> str:
        return asyncjob_perform(flask_write_group, name)

    @app.route("/fail/<name>")
    def fail(name: str) -> str:
        return asyncjob_perform(flask_failing_job, name)

    return FlaskApplication(webtest.TestApp(app), holder.asyncjob_queue, engine, probe)
