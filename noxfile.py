"""Developer tasks: ``nox -s tests compiled django lint typecheck docs bench_smoke`` is CI.

Sessions run on the interpreter that runs nox (no version matrix here:
CI picks the interpreter), except ``django``, on Python 3.12 (Django 6's
floor): a missing interpreter is an error, not a skip, so that its tests
never pass by not running.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess

import nox

nox.options.sessions = ["tests", "compiled", "django", "lint", "typecheck", "docs", "bench_smoke"]
nox.options.reuse_venv = "yes"
nox.options.error_on_missing_interpreters = True
# uv makes the sessions' environments in seconds where pip takes half a
# minute each (six of them in CI); virtualenv and pip where uv is missing.
nox.options.default_venv_backend = "uv|virtualenv"


def _install(session: nox.Session, extras: str) -> None:
    if session.venv_backend != "uv":
        # Old pips resolve extras of an editable install poorly: upgrade first.
        session.install("--upgrade", "pip")
    session.install("-e", f".[{extras}]")


#: Run without asyncio's debug mode: they check the docs, the command
#: line's arguments and output, the pages in a browser, JSON and the
#: registry, whose loop code the other modules run in debug mode already.
NOT_IN_DEBUG_RUN = (
    "tests/test_docs.py", "tests/test_examples.py", "tests/test_browser.py",
    "tests/test_cli.py", "tests/test_cli_operate.py", "tests/test_metrics.py",
    "tests/test_json.py", "tests/test_registry.py",
)  # fmt: skip


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite with branch coverage, in two parts: the modules about
    the loop's work in asyncio debug mode, then the rest (NOT_IN_DEBUG_RUN)
    as they are, their coverage added to the first's and checked once.

    One pass, not the whole suite and then its loop modules again in debug
    mode: that took 11 of CI's 15 minutes on a slow day. With arguments,
    pytest runs once, with them, with coverage and not in debug mode."""
    _install(session, "test,demo,docs")
    report = "--cov-report=term-missing:skip-covered"
    if session.posargs:
        session.run("pytest", "--cov=asyncjob", report, *session.posargs)
        return
    ignored = [f"--ignore={path}" for path in NOT_IN_DEBUG_RUN]
    session.run(
        # Not checked against fail_under here: part of the suite.
        "pytest", "--cov=asyncjob", "--cov-report=", "--cov-fail-under=0", *ignored,
        env={"PYTHONASYNCIODEBUG": "1"},
    )  # fmt: skip
    session.run("pytest", "--cov=asyncjob", "--cov-append", report, *NOT_IN_DEBUG_RUN)


#: Not run against the compiled wheel: what runs in other processes (which
#: import the checkout), in a browser or behind a web server, reads the
#: sources themselves, or tests the SQL stores against a database that
#: misbehaves (restarted, killed connections, poisoned rows, leases run
#: out: a minute and a half of CI's fifteen, for the SQL store's, the
#: producer's and the leases' code, which stays interpreted).
NOT_IN_COMPILED_RUN = (
    "tests/test_browser.py", "tests/test_docs.py", "tests/test_examples.py",
    "tests/test_cli.py", "tests/test_cli_operate.py", "tests/test_workers.py",
    "tests/test_tg_processes.py", "tests/test_flow_processes.py", "tests/test_django.py",
    "tests/test_web.py", "tests/test_metrics.py", "tests/test_resilience.py",
    "tests/test_isolation.py",
)  # fmt: skip


@nox.session
def compiled(session: nox.Session) -> None:
    """The test suite against a wheel whose in-process path mypyc compiled
    (the wheel's mypyc hook in pyproject.toml), installed as users install
    it. The wheel is built from the sdist, so that the checkout is left
    without compiled modules; pytest appends the checkout to ``sys.path``
    instead of putting it first, so that the tests import the wheel."""
    dist = os.path.abspath(os.path.join(session.create_tmp(), "dist"))
    shutil.rmtree(dist, ignore_errors=True)
    session.install("build[uv]")
    session.run(
        "python", "-m", "build", "--installer=uv", "--outdir", dist,
        env={"HATCH_BUILD_HOOK_ENABLE_MYPYC": "1"},
    )  # fmt: skip
    (wheel,) = glob.glob(os.path.join(dist, "*.whl"))
    session.install(f"asyncjob-runner[test,demo] @ file://{wheel}")
    # A reused environment may hold a wheel of the same version: replace it.
    session.install("--force-reinstall", "--no-deps", wheel)
    check = "import asyncjob._engine.engine as m; assert not m.__file__.endswith('.py'), m.__file__"
    session.run("python", "-P", "-c", check)  # -P: not the checkout
    options = [f"--ignore={path}" for path in NOT_IN_COMPILED_RUN]
    # From Python 3.12, a compiled coroutine cancelled while it awaits warns
    # (mypyc's issue 1214, docs/deployment.md): known, and left out so that
    # the rest is checked. Before 3.12 the warning does not exist.
    options.append("-Wignore:the (type, exc, tb) signature of throw():DeprecationWarning")
    session.run(
        "pytest", "-p", "no:cacheprovider", "--import-mode=append", *options, *session.posargs
    )


def _python_for_django() -> str:
    """A Python 3.12 or newer that runs: on PATH, or installed by pyenv but
    not selected (its shim then fails); "3.12" for nox to report missing."""
    for name in ("python3.12", "python3.13"):
        found = shutil.which(name)
        if found and subprocess.run([found, "-V"], capture_output=True).returncode == 0:
            return found
    installed = glob.glob(os.path.expanduser("~/.pyenv/versions/3.1[2-9]*/bin/python3"))
    return sorted(installed)[0] if installed else "3.12"


@nox.session(python=_python_for_django())
def django(session: nox.Session) -> None:
    """The Django backend with a real Django 6 project and worker processes."""
    _install(session, "test,django")
    session.run("pytest", "-q", "-p", "no:cacheprovider", "tests/test_django.py", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff (lint rules and formatting), and the import layers that keep the
    architecture (the contracts in pyproject.toml, docs/architecture.md)."""
    session.install("ruff>=0.6", "import-linter>=2.1")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    # The package is read from the checkout, not installed.
    session.run("lint-imports", env={"PYTHONPATH": "."})


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package, the tests and the benchmarks."""
    _install(session, "test,demo,bench,lint")
    session.install("nox")
    session.run("mypy")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site, failing on any warning."""
    _install(session, "docs")
    session.run("mkdocs", "build", "--strict", "--site-dir", "site")


@nox.session
def screenshots(session: nox.Session) -> None:
    """Take the guides' screenshots again (docs/images), as the browser
    tests see the pages."""
    _install(session, "test")
    session.run(
        "pytest", "-q", "-p", "no:cacheprovider", "tests/test_browser.py",
        env={"ASYNCJOB_SCREENSHOTS": "docs/images"},
    )  # fmt: skip


@nox.session
def bench(session: nox.Session) -> None:
    """The core benchmarks, timed (never in CI: see bench_smoke); the others
    are run by hand (bench/README.md)."""
    _install(session, "bench")
    session.run("python", "bench/core.py", *session.posargs)


@nox.session
def bench_smoke(session: nox.Session) -> None:
    """CI's smoke run of the benchmarks of the in-process path and of the
    SQL stores against their peers and baselines: once each with few jobs,
    so that they keep running; what they print is nobody's assertion."""
    _install(session, "bench")
    session.run("python", "bench/core.py", "--quick", "--repeat", "1")
    session.run("python", "bench/sql.py", "--quick", "--repeat", "1", "--jobs", "500")
    session.run("python", "bench/sqlite_worker.py", "--repeat", "1", "--jobs", "500")
    session.run("python", "bench/ids.py", "--batches", "4")
