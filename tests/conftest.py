"""Fixtures shared by the whole suite."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import asyncjob
from asyncjob.stores import MemoryStore, Store

#: Every wait in the tests is bounded by this many seconds, so that a bug
#: fails fast instead of hanging the run.
TIMEOUT = 10.0

RunnerFactory = Callable[..., Any]


@pytest.fixture
def clean_registry() -> Iterator[None]:
    """The test leaves the registry (jobs, limits, periodic jobs) as it
    found it: what it registers does not reach the tests after it."""
    from asyncjob._core import registry

    tables: list[dict[Any, Any]] = [
        registry._by_name,
        registry._by_function,
        registry._limits,
        registry._schedules,
    ]
    kept = [dict(table) for table in tables]
    yield
    for table, before in zip(tables, kept, strict=True):
        table.clear()
        table.update(before)


@pytest.fixture
async def make_runner() -> AsyncIterator[RunnerFactory]:
    """Start runners on demand, and stop every one of them after the test."""
    made: list[asyncjob.Runner] = []

    async def make(store: str | Store | None = None, **options: Any) -> asyncjob.Runner:
        runner = asyncjob.Runner(store if store is not None else MemoryStore(), **options)
        made.append(runner)
        await runner.start()
        return runner

    yield make
    for runner in reversed(made):
        await runner.stop()


@pytest.fixture
async def runner(make_runner: RunnerFactory) -> asyncjob.Runner:
    """A running runner on the memory store, with the default options."""
    made: asyncjob.Runner = await make_runner()
    return made


# -- databases ----------------------------------------------------------------

PG_HOST = os.environ.get("ASYNCJOB_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def _postgres_reachable() -> str | None:
    """None when PostgreSQL answers, else why not."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install -e '.[test]')"
    try:
        psycopg.connect(PG_HOST, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        return f"PostgreSQL at {PG_HOST} does not answer: {exc}".strip()
    return None


@dataclass(frozen=True)
class Database:
    """One test database, reachable with an async and a sync driver."""

    kind: str
    async_url: str
    sync_url: str


@pytest.fixture(scope="session")
def postgres() -> str:
    """The server's URL; the tests that need it skip on a laptop without
    one, and fail in CI (``CI`` set), where it must be running."""
    problem = _postgres_reachable()
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs PostgreSQL: {problem}")
        pytest.skip(problem)
    return PG_HOST


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Database:
    """A fresh SQLite file."""
    path = tmp_path / "app.db"
    return Database("sqlite", f"sqlite+aiosqlite:///{path}", f"sqlite:///{path}")


@pytest.fixture
def postgres_db(postgres: str) -> Iterator[Database]:
    """A database of its own on the PostgreSQL server, dropped afterwards."""
    import psycopg

    name = f"asyncjob_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = postgres.rsplit("/", 1)[0].split("://", 1)[1]
    yield Database(
        "postgresql",
        f"postgresql+asyncpg://{base}/{name}",
        f"postgresql+psycopg://{base}/{name}",
    )
    with psycopg.connect(postgres, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest) -> Database:
    """Each test database kind in turn."""
    db: Database = request.getfixturevalue(f"{request.param}_db")
    return db


def edit_by_hand(sync_url: str, *statements: str) -> None:
    """Run SQL as someone at a database prompt would: outside asyncjob."""
    from sqlalchemy import create_engine, text

    engine = create_engine(sync_url)
    try:
        with engine.begin() as conn:
            for statement in statements:
                conn.execute(text(statement))
    finally:
        engine.dispose()


#: Django 6 needs Python 3.12: its tests run in `nox -s django`.
collect_ignore = ["test_django.py"] if sys.version_info < (3, 12) else []
