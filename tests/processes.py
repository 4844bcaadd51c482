"""``asyncjob worker`` processes for the tests, started and always stopped."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from .conftest import TIMEOUT

ROOT = Path(__file__).resolve().parent.parent


class Workers:
    """Worker processes started by a test, all stopped after it; what they
    print goes to files in ``logs``, shown when the test ends."""

    def __init__(self, logs: Path, *, url: str | None = None, module: str = "tests.worker_jobs"):
        self.logs = logs
        self.url = url
        self.module = module
        self.processes: list[subprocess.Popen[str]] = []

    def start(
        self,
        url: str | None = None,
        *,
        lease: float = 30.0,
        concurrency: int = 10,
        grace_period: float = 5.0,
        queues: Sequence[str] = (),
        extra: Sequence[str] = (),
    ) -> subprocess.Popen[str]:
        """Start one more worker on ``url`` (default: the one given at first),
        taking the ``queues`` given (none: every queue), with ``extra``
        options."""
        store = url or self.url
        assert store is not None, "which store?"
        command = [sys.executable, "-m", "asyncjob", "worker", "--store", store]
        command += ["--import", self.module, "--concurrency", str(concurrency)]
        command += ["--lease", str(lease), "--poll-interval", "0.05"]
        command += ["--grace-period", str(grace_period)]
        for queue in queues:
            command += ["--queue", queue]
        return self.spawn([*command, *extra])

    def spawn(self, command: Sequence[str], *, cwd: Path = ROOT) -> subprocess.Popen[str]:
        """Start ``command`` (a worker of another kind: Django's), its
        output logged and the process stopped as the others are."""
        log = (self.logs / f"worker-{len(self.processes)}.log").open("w")
        process = subprocess.Popen(
            command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, text=True
        )
        log.close()  # the child has its own copy
        self.processes.append(process)
        return process

    def output(self) -> str:
        """What the workers printed, for a failing test's report."""
        return "\n".join(path.read_text() for path in sorted(self.logs.glob("worker-*.log")))

    def stop_all(self) -> None:
        """SIGTERM to each, then SIGKILL to any still running after TIMEOUT."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(TIMEOUT)
