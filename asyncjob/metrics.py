"""Prometheus metrics: what each process ran, and what the store holds.

Two sources, as Prometheus likes them:

* :class:`JobMetrics`, a :class:`~asyncjob.JobHooks` given to a runner,
  counts what *this process* performs and runs: jobs enqueued, started,
  retried and finished (by state), and how long they ran. Counters that
  only grow, so that ``rate()`` works across restarts; scrape each worker
  (``asyncjob worker --metrics-port 9100``).
* :func:`store_metrics` reads the *store* at scrape time: jobs waiting,
  scheduled and running by queue, since when each queue's oldest due job
  waits, what ended over the last hour, and the live workers. Every
  process sees the same figures; scrape one (the dashboard's ``/metrics``).

Needs ``prometheus-client`` (``pip install 'asyncjob-runner[metrics]'``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from asyncjob._engine.hooks import JobHooks, JobInfo

if TYPE_CHECKING:
    from asyncjob._core.models import JobState, Overview, WorkerStatus
    from asyncjob._runner.runner import Runner

__all__ = ("CONTENT_TYPE", "JobMetrics", "exposition", "store_metrics")

#: The Content-Type of the text format :func:`exposition` writes.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Job durations' histogram buckets, in seconds: from a no-op job to an
#: hour-long transcode.
DURATION_BUCKETS = (0.005, 0.025, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, float("inf"))


class JobMetrics(JobHooks):
    """Counters and a histogram of the jobs this process performs and runs,
    labelled by job name and queue (and, once ended, state)::

        metrics = JobMetrics()
        runner = asyncjob.Runner(store, hooks=[metrics])

    Its metrics live in their own :class:`~prometheus_client.CollectorRegistry`
    (``metrics.registry``) unless given one, so that two runners in one
    process (tests, say) never clash over a metric's name; pass
    ``prometheus_client.REGISTRY`` to serve them with the rest of the
    application's.

    Metrics (``namespace`` ``asyncjob`` by default):
    ``asyncjob_jobs_enqueued_total``, ``asyncjob_jobs_started_total``,
    ``asyncjob_jobs_retried_total``, ``asyncjob_jobs_finished_total``
    (with ``state``: succeeded, failed, cancelled) and
    ``asyncjob_job_duration_seconds`` (a histogram of attempts that ended
    here, with ``state``).
    """

    def __init__(
        self, registry: CollectorRegistry | None = None, *, namespace: str = "asyncjob"
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True) if registry is None else registry
        labels = ("name", "queue")
        self._enqueued = Counter(
            "jobs_enqueued", "Jobs performed by this process (counted as they are written).",
            labels, namespace=namespace, registry=self.registry,
        )  # fmt: skip
        self._started = Counter(
            "jobs_started", "Job attempts started in this process.",
            labels, namespace=namespace, registry=self.registry,
        )  # fmt: skip
        self._retried = Counter(
            "jobs_retried", "Job attempts that failed here and will run again.",
            labels, namespace=namespace, registry=self.registry,
        )  # fmt: skip
        self._finished = Counter(
            "jobs_finished", "Jobs that ended here, by final state.",
            (*labels, "state"), namespace=namespace, registry=self.registry,
        )  # fmt: skip
        self._duration = Histogram(
            "job_duration_seconds", "How long the last attempt of jobs that ended here ran.",
            (*labels, "state"), namespace=namespace, registry=self.registry,
            buckets=DURATION_BUCKETS,
        )  # fmt: skip

    async def enqueued(self, jobs: Sequence[JobInfo]) -> None:
        for job in jobs:
            self._enqueued.labels(job.name, job.queue).inc()

    def started(self, job: JobInfo) -> None:
        self._started.labels(job.name, job.queue).inc()

    def retrying(self, job: JobInfo, error: str, delay: float) -> None:
        self._retried.labels(job.name, job.queue).inc()

    def finished(
        self, job: JobInfo, state: JobState, duration: float | None, error: str | None
    ) -> None:
        self._finished.labels(job.name, job.queue, state.value).inc()
        if duration is not None:
            self._duration.labels(job.name, job.queue, state.value).observe(duration)


def store_metrics(
    overview: Overview,
    workers: Iterable[WorkerStatus] = (),
    *,
    namespace: str = "asyncjob",
    now: float | None = None,
) -> list[Metric]:
    """The store's figures as Prometheus gauges, from a
    :meth:`Runner.overview` (and :meth:`Runner.workers`) read just before:

    * ``asyncjob_queue_jobs{queue, state}``: jobs ``waiting`` (due, no
      worker has them yet), ``scheduled`` (delayed, or a retry's backoff)
      and ``running``; counts stop at 10,000 (``asyncjob_queue_jobs_capped``
      is then 1);
    * ``asyncjob_queue_oldest_due_age_seconds{queue}``: how long the job
      that has waited longest for a worker has been due: the first figure
      to alert on (workers too few, or stuck);
    * ``asyncjob_jobs_ended_last_hour{state}``: jobs that ended in the last
      hour, by state, wherever they ran;
    * ``asyncjob_workers_alive``: workers whose heartbeat is recent.
    """
    now = time.time() if now is None else now
    jobs = GaugeMetricFamily(
        f"{namespace}_queue_jobs", "Jobs in the store by queue and state.",
        labels=("queue", "state"),
    )  # fmt: skip
    for state, counts in (
        ("waiting", overview.waiting),
        ("scheduled", overview.scheduled),
        ("running", overview.running),
    ):
        for queue, count in sorted(counts.items()):
            jobs.add_metric((queue, state), count)
    capped = GaugeMetricFamily(
        f"{namespace}_queue_jobs_capped",
        "1 when a count of queue_jobs stopped at its cap (there are at least that many).",
        value=int(overview.capped),
    )
    age = GaugeMetricFamily(
        f"{namespace}_queue_oldest_due_age_seconds",
        "Seconds since the longest-waiting due job of the queue came due.",
        labels=("queue",),
    )
    for queue, since in sorted(overview.due_since.items()):
        age.add_metric((queue,), max(0.0, now - since.timestamp()))
    ended = GaugeMetricFamily(
        f"{namespace}_jobs_ended_last_hour",
        "Jobs that ended over the last hour, by state, in any process.",
        labels=("state",),
    )
    ended.add_metric(("succeeded",), sum(ok for _, ok, _, _ in overview.ended))
    ended.add_metric(("failed",), sum(failed for _, _, failed, _ in overview.ended))
    ended.add_metric(("cancelled",), sum(gone for _, _, _, gone in overview.ended))
    alive = GaugeMetricFamily(
        f"{namespace}_workers_alive",
        "Workers of the store whose heartbeat is recent.",
        value=sum(1 for worker in workers if worker.alive),
    )
    return [jobs, capped, age, ended, alive]


async def exposition(runner: Runner, *, namespace: str = "asyncjob") -> bytes:
    """The text a ``/metrics`` endpoint answers with: :func:`store_metrics`
    read now through ``runner``, then the counters of each
    :class:`JobMetrics` among its hooks."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(store_metrics(await runner.overview(), await runner.workers())))
    text = generate_latest(registry)
    for hook in runner.hooks:
        if isinstance(hook, JobMetrics):
            text += generate_latest(hook.registry)
    return text


class _Fixed(Collector):
    """A collector of metrics read beforehand (the store's reads are async;
    a collector's are not)."""

    def __init__(self, metrics: list[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self._metrics

    def describe(self) -> Iterable[Any]:
        return ()
