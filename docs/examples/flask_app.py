"""Background jobs in a Flask application, with ``asyncjob.tg``.

``asyncjob.tg`` is the API of ``tgext.asyncjob``, and it works in any WSGI
application: plain functions, callable from any request thread. Sync jobs
write through the application's scoped session, which is committed when the
job returns, rolled back when it raises, and removed after each job.

``main()`` drives the application in-process with Flask's test client,
against an SQLite file in a temporary directory. Run it with
``python flask_app.py``.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

from flask import Flask, request
from flask.testing import FlaskClient
from sqlalchemy import String, create_engine, select
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    scoped_session,
    sessionmaker,
)

import asyncjob
from asyncjob.tg import (
    asyncjob_get_progress,
    asyncjob_perform,
    asyncjob_set_progress,
    start_async_worker,
    stop_async_worker,
)

# --8<-- [start:model]
DBSession: scoped_session[Session] = scoped_session(sessionmaker())


class Base(DeclarativeBase):
    pass


class Contact(Base):
    __tablename__ = "contacts"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))


# --8<-- [end:model]


# --8<-- [start:job]
def import_contacts(names: list[str]) -> int:
    """The job, in a worker thread: a row per name, progress after each."""
    for done, name in enumerate(names, start=1):
        if not name:
            raise ValueError(f"contact {done} has no name")
        DBSession.add(Contact(name=name))  # committed when the job returns
        asyncjob_set_progress(100 * done // len(names), f"{done} of {len(names)}")
    return len(names)


# --8<-- [end:job]


# --8<-- [start:app]
def create_app(database_url: str) -> Flask:
    engine = create_engine(database_url)
    Base.metadata.create_all(engine)  # or your migrations
    DBSession.configure(bind=engine)

    app = Flask(__name__)
    # One worker per process, on a thread of its own; sync jobs use DBSession.
    start_async_worker(dbsession=DBSession)

    @app.teardown_appcontext
    def remove_session(exc: BaseException | None) -> None:
        DBSession.remove()

    @app.post("/imports")
    def start_import() -> tuple[dict[str, Any], int]:
        job_id = asyncjob_perform(import_contacts, request.json["names"])
        return {"job": job_id}, 202

    @app.get("/imports/<job_id>")
    def import_progress(job_id: str) -> dict[str, Any]:
        progress = asyncjob_get_progress(job_id)
        if progress is None:
            return {"done": True}  # ended, or never known here
        value, message = progress  # (-1, None) until the job reports
        return {"done": False, "percent": value, "message": message}

    @app.get("/contacts")
    def list_contacts() -> list[str]:
        return list(DBSession.scalars(select(Contact.name).order_by(Contact.id)))

    return app


# --8<-- [end:app]


# --8<-- [start:main]
def wait_for(job_id: str) -> Any:
    """Wait for a job from sync code (a test, a script): the result, or JobFailed."""
    return asyncio.run(asyncjob.wait(job_id, timeout=10))


def start_import(client: FlaskClient, names: list[str]) -> str:
    answer = client.post("/imports", json={"names": names})
    print("POST /imports:", answer.status_code)
    job_id: str = answer.json["job"]  # type: ignore[index]  # (.json may be None)
    return job_id


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(f"sqlite:///{Path(tmp) / 'app.db'}")
        client = app.test_client()

        job_id = start_import(client, ["Ada", "Grace", "Linus"])
        print("result:", wait_for(job_id))
        print("GET /imports/{job}:", client.get(f"/imports/{job_id}").json)

        # A failing job is rolled back, and logged on the "asyncjob" logger.
        job_id = start_import(client, ["Alan", ""])
        try:
            wait_for(job_id)
        except asyncjob.JobFailed as exc:
            print("failed:", exc.error)
        print("GET /imports/{job}:", client.get(f"/imports/{job_id}").json)
        print("GET /contacts:", client.get("/contacts").json)

        stop_async_worker()  # at exit it stops by itself; here, before the files go


# --8<-- [end:main]

if __name__ == "__main__":
    main()
