"""The ``asyncjob`` command line, and the demo it runs."""

from __future__ import annotations

import io
import logging
import os
import re
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from asyncjob import _demo
from asyncjob._cli import main
from asyncjob._demo import jobs as _demo_jobs
from asyncjob._version import __version__

from .processes import ROOT

#: Every run of the command is bounded by this many seconds; the demo itself
#: takes about two.
COMMAND_TIMEOUT = 30.0

#: The labels of the demo's jobs, each shown in the output.
LABELS = ("download", "checksum", "thumbnail", "report", "import")

#: What the job meant to fail reports: the error's type and message.
FAILURE = "ValueError: line 38 is corrupt: quantity '#REF!'"


def run_command(*args: str) -> subprocess.CompletedProcess[str]:
    """Run a command to its end with a bounded time, its output captured as text.

    Not in asyncio's debug mode, even when the suite runs in it: the demo's
    CPU-bound sync jobs hold the GIL, so that debug mode would report slow
    steps of the loop on stderr, which these tests require to be empty.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONASYNCIODEBUG"}
    return subprocess.run(
        args, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False, env=env
    )


def console_script() -> str:
    """The path of the installed ``asyncjob`` console script."""
    beside_python = Path(sys.executable).with_name("asyncjob")
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("asyncjob")
    if found is None:
        pytest.fail("the asyncjob console script is not installed: pip install -e .")
    return found


def check_demo_output(out: str) -> None:
    """Assert that the demo's output names every job, shows its results and
    the planned failure's error, and that the report names its own job."""
    for label in LABELS:
        assert re.search(rf"^{label}\s+queued as job [0-9a-f]{{8}}$", out, re.MULTILINE), label
        assert re.search(rf"^{label} [0-9a-f]{{8}}\s+(succeeded|failed)\s", out, re.MULTILINE)
    assert "download   done: photos.zip, 3.0 MiB" in out
    assert re.search(r"^checksum\s+done: sha256:[0-9a-f]{64}$", out, re.MULTILINE)
    assert "thumbnail  done: 480x360 -> 120x90 px, mean level" in out
    assert f"import     failed: {FAILURE}" in out
    assert re.search(rf"^import [0-9a-f]{{8}}\s+failed\s+{re.escape(FAILURE)}", out, re.MULTILINE)
    assert "Traceback" not in out
    # The report job names its file after current_job_id().
    report_id = re.search(r"^report\s+queued as job ([0-9a-f]{8})$", out, re.MULTILINE)
    assert report_id is not None
    assert f"report     done: report-2025-{report_id[1]}.pdf, sales " in out


def test_module_runs_the_plain_demo() -> None:
    """``python -m asyncjob demo --plain`` runs every job and exits 0."""
    done = run_command(sys.executable, "-m", "asyncjob", "demo", "--plain")
    assert done.returncode == 0, done.stderr
    check_demo_output(done.stdout)
    assert done.stderr == ""


def test_console_script_runs_the_demo_in_plain_text_off_a_terminal() -> None:
    """``asyncjob demo`` writing to a pipe, not a terminal, prints plain lines."""
    done = run_command(console_script(), "demo")
    assert done.returncode == 0, done.stderr
    check_demo_output(done.stdout)
    assert "\x1b[" not in done.stdout
    assert done.stderr == ""


def test_version_is_printed() -> None:
    """``asyncjob --version`` prints the package's version and exits 0."""
    done = run_command(sys.executable, "-m", "asyncjob", "--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"asyncjob {__version__}"


def test_version_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    """``main(["--version"])`` ends like every argparse program, with SystemExit(0)."""
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"asyncjob {__version__}"


def test_main_module_runs_the_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``asyncjob/__main__.py`` hands its arguments to main() and exits with its code."""
    monkeypatch.setattr(sys, "argv", ["asyncjob", "--version"])
    with pytest.raises(SystemExit) as exited:
        runpy.run_module("asyncjob", run_name="__main__")
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"asyncjob {__version__}"


def test_unknown_command_is_refused_with_usage() -> None:
    """An unknown subcommand exits 2 with a usage message on stderr."""
    done = run_command(sys.executable, "-m", "asyncjob", "launch-rockets")
    assert done.returncode == 2
    assert done.stderr.startswith("usage: asyncjob")
    assert "invalid choice: 'launch-rockets'" in done.stderr
    assert done.stdout == ""


def test_missing_command_is_refused_with_usage(capsys: pytest.CaptureFixture[str]) -> None:
    """``asyncjob`` with no subcommand exits 2 and says a command is needed."""
    with pytest.raises(SystemExit) as exited:
        main([])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: asyncjob")
    assert "COMMAND" in err


def test_demo_in_process(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """``main(["demo", "--plain"])`` returns 0 and prints the demo; the planned
    failure is not logged, and the asyncjob logger is left as it was found."""
    logger = logging.getLogger("asyncjob")
    handlers, propagate = list(logger.handlers), logger.propagate
    assert main(["demo", "--plain"]) == 0
    captured = capsys.readouterr()
    check_demo_output(captured.out)
    assert captured.err == ""
    assert [r for r in caplog.records if r.name.startswith("asyncjob")] == []
    assert logger.handlers == handlers
    assert logger.propagate is propagate


def test_demo_without_plain_off_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    """Without ``--plain`` the demo still prints plain lines when stdout is no terminal."""
    assert main(["demo"]) == 0
    check_demo_output(capsys.readouterr().out)


def test_demo_draws_progress_bars_on_a_rich_console() -> None:
    """Given a rich console, the demo draws a bar per job and a summary table."""
    console_module = pytest.importorskip("rich.console")
    screen = io.StringIO()
    console = console_module.Console(file=screen, width=120, force_terminal=True, no_color=True)
    assert _demo.run_demo(console=console) == 0
    out = screen.getvalue()
    for label in LABELS:
        assert re.search(rf"│ {label} [0-9a-f]{{8}}\s+│ (succeeded|failed)\s+│", out), label
    assert f"✗ {FAILURE}" in out
    assert "✓ photos.zip, 3.0 MiB" in out
    assert "━" in out  # the bars
    assert "Traceback" not in out


class FakeTerminal(io.StringIO):
    """A stdout that says it is a terminal."""

    def isatty(self) -> bool:
        """Yes, a terminal."""
        return True


def test_terminal_console_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a terminal, with rich installed, the demo draws on a rich console."""
    pytest.importorskip("rich.console")
    monkeypatch.setattr(sys, "stdout", FakeTerminal())
    assert _demo._terminal_console() is not None


def test_terminal_console_without_rich(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a terminal without rich, the demo prints plain lines and tells how to
    get progress bars."""
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stdout", FakeTerminal())
    monkeypatch.setattr(sys, "stderr", stderr)
    monkeypatch.setitem(sys.modules, "rich.console", None)
    assert _demo._terminal_console() is None
    assert "pip install asyncjob-runner[demo]" in stderr.getvalue()


def test_demo_fails_when_a_job_does_not_end_as_planned(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The demo exits 1 if a job meant to fail succeeds (or the other way round)."""
    clean = _demo_jobs.sample_records(2, corrupt=2)[:1]
    job = _demo_jobs.DemoJob("import", _demo_jobs.import_records, (clean,), len(clean), fails=True)
    monkeypatch.setattr(_demo, "demo_jobs", lambda: [job])
    assert main(["demo", "--plain"]) == 1
    out = capsys.readouterr().out
    assert re.search(r"^import [0-9a-f]{8}\s+succeeded\s+1 records, 1 products", out, re.M)


def test_interrupted_command_exits_130(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C during a command ends it with exit code 130, without a traceback."""

    def interrupted(*, plain: bool = False) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(_demo, "run_demo", interrupted)
    assert main(["demo"]) == 130


#: Options the deployment guide gives to other commands (systemctl, docker,
#: gunicorn), not to asyncjob worker.
OTHER_COMMANDS_OPTIONS = {"--now", "--preload", "--time", "--worker-class", "--workers"}


def test_the_deployment_guide_names_the_worker_options_there_are(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each option the deployment guide gives the worker exists, and each
    option the worker has is in the guide (the guide said once that there
    was no --threads: there is)."""
    with pytest.raises(SystemExit):
        main(["worker", "--help"])
    offered = set(re.findall(r"--[a-z][a-z-]+", capsys.readouterr().out)) - {"--help"}
    guide = (ROOT / "docs" / "deployment.md").read_text()
    named = set(re.findall(r"--[a-z][a-z-]+", guide)) - OTHER_COMMANDS_OPTIONS
    assert named <= offered
    assert offered - named <= {"--keep-finished", "--table-prefix"}, offered - named
