# TurboGears2 has no type hints: mypy takes TGController and expose() as they are.
# mypy: disallow-subclassing-any=False, disallow-untyped-decorators=False
"""A TurboGears2 application that starts asyncjob with plugme, jobs after commit.

``asyncjob.tg.plugme(base_config, options)`` in ``config/app_cfg.py``, as
tgext.asyncjob 0.3.1 did it, starts the worker when the application is
built. With ``after_commit=True``, a job performed inside a request is
handed to the worker only once the request's transaction commits, and is
dropped if it aborts: the job always finds what the request wrote.

``main()`` drives the application in-process with WebTest, against an
SQLite file in a temporary directory. Run it with
``python turbogears_plugme.py``.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
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
from tg import FullStackApplicationConfigurator, TGController, expose
from zope.sqlalchemy import register

import asyncjob
import asyncjob.tg
from asyncjob.tg import asyncjob_perform, stop_async_worker

DBSession: scoped_session[Session] = scoped_session(sessionmaker(autoflush=True))
register(DBSession)


class Base(DeclarativeBase):
    pass


class Document(Base):
    __tablename__ = "documents"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(100))
    pages: Mapped[int | None]
    indexed: Mapped[bool] = mapped_column(default=False)


def init_model(engine: Engine) -> None:
    DBSession.configure(bind=engine)
    Base.metadata.create_all(engine)


# --8<-- [start:job]
def index_document(document_id: int) -> str:
    # Handed over after the request committed: the row is there at once.
    document = DBSession.get_one(Document, document_id)
    document.indexed = True
    return document.title


class RootController(TGController):
    @expose()
    def upload(self, title: str, pages: str) -> str:
        document = Document(title=title)
        DBSession.add(document)
        DBSession.flush()
        taskid = asyncjob_perform(index_document, document.id)  # after the commit
        document.pages = int(pages)  # "many" fails the request: the job is dropped
        return taskid

    # --8<-- [end:job]

    @expose()
    def documents(self) -> str:
        documents = DBSession.scalars(select(Document).order_by(Document.id))
        return ", ".join(f"{d.title} ({d.pages} pages, indexed: {d.indexed})" for d in documents)


class Globals:
    """lib/app_globals.py: nothing to start here, plugme does it."""


# --8<-- [start:config]
def make_app(database_url: str) -> webtest.TestApp:
    # config/app_cfg.py
    base_config = FullStackApplicationConfigurator()
    base_config.update_blueprint(
        {
            "root_controller": RootController(),
            "app_globals": Globals,
            "use_sqlalchemy": True,
            "sqlalchemy.url": database_url,
            "model": sys.modules[__name__],  # this module stands for the model package
            "tm.enabled": True,
            "errorpage.enabled": False,  # let main() see the failing request's error
        }
    )
    asyncjob.tg.plugme(base_config, {"after_commit": True})

    # config/middleware.py: the worker starts as the application is made.
    return webtest.TestApp(base_config.make_wsgi_app({}, {}))


# --8<-- [end:config]


def wait_for(uid: str) -> Any:
    """Wait for a job from sync code (a test, a script): its result."""
    return asyncio.run(asyncjob.wait(uid, timeout=10))


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        app = make_app(f"sqlite:///{Path(tmp) / 'app.db'}")

        uid = app.get("/upload", {"title": "Report", "pages": "12"}).text
        print("indexed:", wait_for(uid))
        try:
            app.get("/upload", {"title": "Draft", "pages": "many"})
        except ValueError as exc:
            print("upload failed:", exc)
        print("documents:", app.get("/documents").text)

        stop_async_worker()  # at exit it stops by itself; here, before the files go
        DBSession.remove()
        engine = DBSession.get_bind()
        assert isinstance(engine, Engine)  # init_model's
        engine.dispose()  # the app's database connections, closed


if __name__ == "__main__":
    main()
