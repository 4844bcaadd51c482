"""The runner's options, checked once, where they are given."""

from __future__ import annotations

from dataclasses import dataclass

from asyncjob._core import defaults

__all__ = ("RunnerOptions",)


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__} ({value!r})")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, not {value}")
    return value


def _seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if not 0 <= value < float("inf"):  # also refuses NaN
        raise ValueError(f"{name} must be a finite number of seconds >= 0, not {value}")
    return float(value)


@dataclass(frozen=True, slots=True)
class RunnerOptions:
    """How a runner runs its jobs; see :class:`asyncjob.Runner`."""

    concurrency: int
    threads: int
    grace_period: float

    @classmethod
    def validate(
        cls, *, concurrency: object, threads: object, grace_period: object
    ) -> RunnerOptions:
        """Check each option and fill in defaults.

        Raises:
            TypeError: an option has the wrong type.
            ValueError: an option is out of range.
        """
        concurrency = _positive_int("concurrency", concurrency)
        return cls(
            concurrency=concurrency,
            threads=(
                min(concurrency, defaults.MAX_THREADS)
                if threads is None
                else _positive_int("threads", threads)
            ),
            grace_period=_seconds("grace_period", grace_period),
        )
