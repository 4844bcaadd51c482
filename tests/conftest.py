"""Fixtures shared by the whole suite."""

from __future__ import annotations

import importlib
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


def compiled(module: str) -> bool:
    """Whether the package's ``module`` was compiled by mypyc, as in a wheel
    built with the mypyc hook (pyproject.toml; ``nox -s compiled`` runs the
    suite against one). A compiled class keeps no docstrings and ignores an
    attribute patched on it; the few tests that look at either say so."""
    file = getattr(importlib.import_module(module), "__file__", None)  # builtins has none
    return file is not None and not file.endswith(".py")


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


class _Databases:
    """The test databases on the server, made once and used again: making
    one copies ``template1`` through the server's log (0.3 s of its time,
    some 200 tests a run, twice in CI), emptying one takes milliseconds.

    A database is emptied when a test takes it, not when one gives it back:
    by then every fixture of the test before has stopped its runners and
    processes. Its connections are closed first (waiting for each to end),
    so that nothing of that test can write into the next one's tables."""

    def __init__(self, server: str) -> None:
        self.server = server
        self.free: list[str] = []
        self.made: list[str] = []

    def take(self) -> str:
        import psycopg

        if not self.free:
            name = f"asyncjob_test_{uuid.uuid4().hex[:12]}"
            with psycopg.connect(self.server, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            self.made.append(name)
            return name
        name = self.free.pop()
        with psycopg.connect(self.url(name), autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            conn.execute("DROP SCHEMA public CASCADE")
            conn.execute("CREATE SCHEMA public")
        return name

    def url(self, name: str) -> str:
        return f"{self.server.rsplit('/', 1)[0]}/{name}"

    def drop_all(self) -> None:
        import psycopg

        with psycopg.connect(self.server, autocommit=True) as conn:
            for name in self.made:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def _databases(postgres: str) -> Iterator[_Databases]:
    databases = _Databases(postgres)
    yield databases
    databases.drop_all()


@pytest.fixture
def postgres_db(_databases: _Databases) -> Iterator[Database]:
    """A database of the test's own on the PostgreSQL server, empty."""
    name = _databases.take()
    base = _databases.url(name).split("://", 1)[1]
    yield Database("postgresql", f"postgresql+asyncpg://{base}", f"postgresql+psycopg://{base}")
    _databases.free.append(name)


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
