"""Jobs registered by name: what a worker of a shared store may run.

A worker never imports or calls a function because a stored job names it:
it runs only what the application registered with :func:`job`.
"""

from __future__ import annotations

import inspect
import random
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeVar, overload

from .cron import Cron
from .models import MAX_NAME_LENGTH
from .spec import DEFAULT_QUEUE, MAX_DELAY, JobOptions, check_priority, check_queue

__all__ = (
    "JobDefinition",
    "Schedule",
    "definition_of",
    "job",
    "limits",
    "lookup",
    "periodic",
    "schedules",
)

F = TypeVar("F", bound=Callable[..., Any])

_lock = threading.Lock()
_by_name: dict[str, JobDefinition] = {}
_by_function: dict[Callable[..., Any], JobDefinition] = {}
_limits: dict[str, int] = {}
_schedules: dict[str, Schedule] = {}
_read_only_limits = MappingProxyType(_limits)


@dataclass(frozen=True, slots=True)
class JobDefinition:
    """A registered job: its name, the function it runs, and how to run it.

    Attributes:
        retries: how many times a failed job is tried again (0: never).
        backoff: seconds before the first retry; each next one waits twice
            as long, up to ``max_backoff``, and a random part of it (so that
            jobs failed together do not all come back at once).
        max_backoff: the longest wait between two attempts.
        timeout: seconds an attempt may run before it fails, or None.
        queue: the queue its jobs wait in, unless performed with another.
        priority: their priority, unless performed with another.
        concurrency: at most this many of its jobs run at once, across
            every worker of the store (``None``: no limit).
    """

    name: str
    func: Callable[..., Any]
    retries: int = 0
    backoff: float = 1.0
    max_backoff: float = 300.0
    timeout: float | None = None
    queue: str | None = None
    priority: int | None = None
    concurrency: int | None = None

    @property
    def queue_name(self) -> str:
        """The queue its jobs wait in, unless performed with another: its
        ``queue``, or the default queue."""
        return self.queue or DEFAULT_QUEUE

    def options(self) -> JobOptions | None:
        """The options its jobs are performed with by default (``None``: the
        defaults of every job)."""
        if self.queue is None and self.priority is None:
            return None
        return JobOptions(self.queue_name, self.priority or 0)

    def delay_before(self, attempt: int) -> float | None:
        """Seconds to wait before attempt number ``attempt + 1``, after
        attempt ``attempt`` failed; None when no attempt is left."""
        if attempt > self.retries:
            return None
        # The exponent bounded: 2.0 ** 1024 overflows, and the attempt that
        # raised it stayed running for good. Past 2 ** 62 s, max_backoff rules.
        ceiling = min(self.max_backoff, self.backoff * 2.0 ** min(attempt - 1, 62))
        return ceiling / 2 + random.uniform(0, ceiling / 2)


@overload
def job(func: F, /) -> F: ...


@overload
def job(
    *,
    name: str | None = None,
    retries: int = 0,
    backoff: float = 1.0,
    max_backoff: float = 300.0,
    timeout: float | None = None,
    queue: str | None = None,
    priority: int | None = None,
    concurrency: int | None = None,
) -> Callable[[F], F]: ...


def job(
    func: F | None = None,
    /,
    *,
    name: str | None = None,
    retries: int = 0,
    backoff: float = 1.0,
    max_backoff: float = 300.0,
    timeout: float | None = None,
    queue: str | None = None,
    priority: int | None = None,
    concurrency: int | None = None,
) -> F | Callable[[F], F]:
    """Register a module-level function as a job, by name.

    ::

        @asyncjob.job
        async def resize(path: str, width: int) -> str: ...

        @asyncjob.job(name="reports.monthly")
        def monthly_report(year: int, month: int) -> str: ...

    With an SQL store a registered job is durable: any worker of that store
    may run it, and runs it again if the worker that held it dies. The name
    defaults to ``module.qualname``; give one to keep it stable when the
    code moves. The function itself is returned unchanged.

    Args:
        name: the name stored with each job.
        retries: how many more attempts a failing job gets.
        backoff: seconds before the first retry, doubled for each next one
            (with jitter), up to ``max_backoff``.
        max_backoff: the longest wait between attempts.
        timeout: seconds an attempt may run; past it, the attempt fails
            (a coroutine is cancelled, a sync job gets ``TimeoutError``
            from its next ``set_progress``).
        queue: the queue its jobs wait in by default (see
            :func:`asyncjob.using`, which overrides it).
        priority: their priority by default, from -100 to 100.
        concurrency: at most this many of its jobs run at once, across every
            worker of the store (and in a runner of its own, on the memory
            store); the others wait in the queue, and jobs behind them are
            not held up.

    Raises:
        TypeError: the function is not a module-level function (a lambda,
            a closure, a method): a worker in another process could not
            find it.
        ValueError: another function is registered under that name, or
            an option is out of range.
    """
    _check_name(name)
    _check_policy(retries, backoff, max_backoff, timeout)
    if concurrency is not None and (type(concurrency) is not int or concurrency < 1):
        raise ValueError(f"concurrency must be an int >= 1, or None, not {concurrency!r}")
    policy = {
        "retries": retries,
        "backoff": backoff,
        "max_backoff": max_backoff,
        "queue": None if queue is None else check_queue(queue, "queue"),
        "priority": None if priority is None else check_priority(priority),
        "concurrency": concurrency,
    }

    def register(f: F) -> F:
        _register(f, name, timeout=timeout, **policy)
        return f

    if func is not None:
        return register(func)
    return register


@dataclass(frozen=True)
class Schedule:
    """A periodic job: its registration, and its cron schedule.

    Attributes:
        name: the registered job's name, which names the schedule too.
        cron: its schedule, in UTC.
    """

    name: str
    cron: Cron


def periodic(cron: str, *, name: str | None = None, **options: Any) -> Callable[[F], F]:
    """Register a module-level function that needs no arguments as a job
    performed on a cron schedule, in UTC::

        @asyncjob.periodic("*/5 * * * *")
        async def refresh_feeds() -> None: ...

        @asyncjob.periodic("0 3 * * *", name="reports.nightly", retries=2)
        def nightly_report() -> None: ...

    The runners that run jobs (workers, not producers only) perform each
    tick once, however many share the store: on an SQL store the database
    decides which one, tick by tick. A tick missed while no runner ran gives
    one late run when one starts, not one run per tick missed. A new
    schedule's first run is its first tick after a runner starts with it.
    A run that outlasts its period overlaps the next: give
    ``concurrency=1`` to keep them one at a time. Above
    ``@asyncjob.job(...)``, it takes that registration as it is.

    Args:
        cron: five fields (minute, hour, day of month, month, day of week),
            as crontab has them; a sixth, first, gives seconds
            (``"*/10 * * * * *"``: every ten seconds).
        name: the job's name (default ``module.qualname``), which names the
            schedule too.
        options: as :func:`asyncjob.job` takes them (``retries``,
            ``timeout``, ``queue``, ``priority``, ``concurrency``...).

    Raises:
        ValueError: ``cron`` is not a cron schedule (the message quotes it
            and says which field is wrong), or an option is out of range.
        TypeError: the function needs arguments, or is not a module-level
            function.
        ImportError: cronsim, which parses schedules, is not installed
            (``pip install 'asyncjob-runner[cron]'``).
    """
    schedule = Cron(cron)
    register = job(name=name, **options)

    def make_periodic(f: F) -> F:
        _check_needs_nothing(f)
        definition = definition_of(f)
        if definition is None:  # else registered below this decorator, by @asyncjob.job
            register(f)
            definition = _by_function[f]
        elif name is not None or options:
            raise ValueError(
                f"{definition.name} is registered with @asyncjob.job already: give its "
                "options there, or to @asyncjob.periodic alone"
            )
        with _lock:
            _schedules[definition.name] = Schedule(definition.name, schedule)
        return f

    return make_periodic


def _check_needs_nothing(func: Callable[..., Any]) -> None:
    try:
        parameters = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return  # a builtin without a signature: found out when it runs
    needed = [
        p.name
        for p in parameters
        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    if needed:
        raise TypeError(
            f"@asyncjob.periodic performs {getattr(func, '__qualname__', func)} with no "
            f"arguments, and it needs {', '.join(needed)}: give them defaults, or perform "
            "it from a periodic job of its own"
        )


def schedules() -> list[Schedule]:
    """The periodic jobs registered in this process, by name."""
    return sorted(_schedules.values(), key=lambda schedule: schedule.name)


def _check_name(name: object) -> None:
    if name is None:
        return
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"a job's name must be a non-empty string, not {name!r}")
    if len(name) > MAX_NAME_LENGTH or "\x00" in name:
        raise ValueError(
            f"a job's name has at most {MAX_NAME_LENGTH} characters and no NUL, "
            f"so that every store can keep it, not {name!r:.80}"
        )


def _check_policy(retries: object, backoff: object, max_backoff: object, timeout: object) -> None:
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be an int >= 0, not {retries!r}")
    for option, value in (("backoff", backoff), ("max_backoff", max_backoff)):
        if not isinstance(value, int | float) or not 0 <= value <= MAX_DELAY:
            raise ValueError(
                f"{option} must be a number of seconds from 0 to {MAX_DELAY} (a century), "
                f"not {value!r}"
            )
    if timeout is not None and (not isinstance(timeout, int | float) or not timeout > 0):
        raise ValueError(f"timeout must be a number of seconds > 0, or None, not {timeout!r}")


def _register(func: object, name: str | None, **options: Any) -> None:
    qualname = getattr(func, "__qualname__", None)
    module = getattr(func, "__module__", None)
    if not callable(func) or not isinstance(qualname, str) or not isinstance(module, str):
        raise TypeError(f"@asyncjob.job registers functions, not {type(func).__name__}")
    if "<" in qualname or "." in qualname:
        raise TypeError(
            f"@asyncjob.job registers module-level functions, and {qualname} is not "
            "one (a lambda, a nested function or a method): a worker in another "
            "process could not find it. Move it to the top of a module."
        )
    definition = JobDefinition(name or f"{module}.{qualname}", func, **options)
    with _lock:
        other = _by_name.get(definition.name)
        if other is not None and other.func is not func:
            if _same_source(other.func, func):
                # The same module imported again (a reload): the newer wins.
                _by_function.pop(other.func, None)
            else:
                raise ValueError(
                    f"the job name {definition.name!r} is taken by "
                    f"{other.func.__module__}.{other.func.__qualname__}: "
                    "give one of them another name with @asyncjob.job(name=...)"
                )
        _by_name[definition.name] = definition
        _by_function[func] = definition
        if definition.concurrency is not None:
            _limits[definition.name] = definition.concurrency
        else:
            _limits.pop(definition.name, None)


def _same_source(a: Callable[..., Any], b: Callable[..., Any]) -> bool:
    return (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)


def limits() -> Mapping[str, int]:
    """The concurrency limits of the registered jobs that have one, by name
    (read-only: a claim passes it to the store as it is)."""
    return _read_only_limits


def lookup(name: str) -> JobDefinition | None:
    """The job registered under ``name``, or ``None``."""
    return _by_name.get(name)


def definition_of(func: Callable[..., Any]) -> JobDefinition | None:
    """How ``func`` is registered, or ``None`` if it is not."""
    try:
        return _by_function.get(func)
    except TypeError:  # unhashable callable object: not registered
        return None
