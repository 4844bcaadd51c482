# TurboGears2 has no type hints: mypy takes TGController and expose() as they are.
# mypy: disallow-subclassing-any=False, disallow-untyped-decorators=False
"""A TurboGears2 application with background jobs, the tgext.asyncjob way.

The worker is started in the app globals, as tgext.asyncjob 0.2 did it; the
controllers follow the examples of its README, with the new import line.
Each sync job runs in a transaction of its own and writes through
``DBSession``.

``main()`` drives the application in-process with WebTest, against an
SQLite file in a temporary directory. Run it with
``python turbogears_app.py``.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import webtest
from sqlalchemy import String, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    scoped_session,
    sessionmaker,
)
from tg import FullStackApplicationConfigurator, TGController, expose, redirect, url
from zope.sqlalchemy import register

import asyncjob
from asyncjob.tg import (
    asyncjob_get_progress,
    asyncjob_perform,
    asyncjob_set_progress,
    asyncjob_timed_query,
    start_async_worker,
    stop_async_worker,
)

# --8<-- [start:model]
# model/__init__.py: the session that requests and jobs use, joined to the
# zope transaction of each.
DBSession: scoped_session[Session] = scoped_session(sessionmaker(autoflush=True))
register(DBSession)


class Base(DeclarativeBase):
    pass


class Group(Base):
    __tablename__ = "tg_group"

    group_id: Mapped[int] = mapped_column(primary_key=True)
    group_name: Mapped[str] = mapped_column(String(16), unique=True)
    display_name: Mapped[str | None] = mapped_column(String(255))


def init_model(engine: Engine) -> None:
    DBSession.configure(bind=engine)
    Base.metadata.create_all(engine)  # gearbox setup-app's work, done here


# --8<-- [end:model]

# The example holds its first job half way, so that main() can show the
# state page then; a real job would just carry on.
halfway, go_on = threading.Event(), threading.Event()


# --8<-- [start:jobs]
def create_groups(names: list[str]) -> None:
    """A job that reports its progress; its transaction commits when it returns."""
    for done, name in enumerate(names, start=1):
        DBSession.add(Group(group_name=name))
        asyncjob_set_progress(100 * done // len(names), name)
        if done == len(names) // 2:  # the example holds the job here
            halfway.set()
            go_on.wait(10)


def name_group(group_id: int) -> None:
    """A job that waits for the group the request is creating to be committed."""
    query = DBSession.query(Group).filter_by(group_id=group_id)
    group = asyncjob_timed_query(query, retries=10, interval=0.5).first()
    group.display_name = group.group_name.title()


# --8<-- [end:jobs]


# --8<-- [start:controllers]
class RootController(TGController):
    @expose()
    def create_groups(self, names: str) -> Any:
        taskid = asyncjob_perform(create_groups, names.split(","))
        return redirect(url("/state", params={"uid": taskid}))

    @expose()
    def new_group(self, name: str) -> Any:
        group = Group(group_name=name)
        DBSession.add(group)
        DBSession.flush()  # the group has its id; the request commits it later
        taskid = asyncjob_perform(name_group, group.group_id)
        return redirect(url("/state", params={"uid": taskid}))

    @expose()
    def state(self, uid: str) -> str:
        state = asyncjob_get_progress(uid)
        if not state:
            return "Job Completed"
        elif state[0] < 0:
            return "Not yet started"
        else:
            return str(state[0])

    @expose()
    def groups(self) -> str:
        groups = DBSession.scalars(select(Group).order_by(Group.group_name))
        return ", ".join(f"{g.group_name} ({g.display_name})" for g in groups)


# --8<-- [end:controllers]


# --8<-- [start:globals]
# lib/app_globals.py
class Globals:
    def __init__(self) -> None:
        start_async_worker()  # stores the worker's handle on self.asyncjob_queue


# --8<-- [end:globals]


def make_app(database_url: str) -> webtest.TestApp:
    """config/app_cfg.py and config/middleware.py, in short."""
    base_config = FullStackApplicationConfigurator()
    base_config.update_blueprint(
        {
            "root_controller": RootController(),
            "app_globals": Globals,
            "use_sqlalchemy": True,
            "sqlalchemy.url": database_url,
            "model": sys.modules[__name__],  # this module stands for the model package
            "tm.enabled": True,  # a zope transaction per request
        }
    )
    return webtest.TestApp(base_config.make_wsgi_app({}, {}))


# --8<-- [start:main]
def wait_for(uid: str) -> Any:
    """Wait for a job from sync code (a test, a script): its result."""
    return asyncio.run(asyncjob.wait(uid, timeout=10))


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        app = make_app(f"sqlite:///{Path(tmp) / 'app.db'}")

        state_page = app.get("/create_groups", {"names": "ada,grace,linus,alan"}).location
        halfway.wait(10)
        print("create_groups:", app.get(state_page).text)

        # One job at a time, as in tgext.asyncjob: this one waits its turn.
        named = app.get("/new_group", {"name": "editors"})
        print("new_group:", named.follow().text)

        go_on.set()
        for page in (state_page, named.location):
            wait_for(page.partition("uid=")[2])
            print("then:", app.get(page).text)
        print("groups:", app.get("/groups").text)

        stop_async_worker()  # at exit it stops by itself; here, before the files go
        DBSession.remove()
        engine = DBSession.get_bind()
        assert isinstance(engine, Engine)  # init_model's
        engine.dispose()  # the app's database connections, closed


# --8<-- [end:main]

if __name__ == "__main__":
    main()
