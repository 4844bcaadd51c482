"""Cron schedules: when the ticks of an expression fall, in UTC.

Parsing and the calendar are cronsim's, a small library that follows
Debian's cron (the ``asyncjob-runner[cron]`` extra), imported only by an
application that has periodic jobs.
"""

from __future__ import annotations

import datetime
from typing import Any

__all__ = ("FIELDS", "Cron")

#: A schedule's fields, in order; a sixth one, first, may give seconds.
FIELDS = "minute hour day-of-month month day-of-week"


class Cron:
    """A five-field cron expression (``"*/5 * * * *"``), or a six-field
    one whose first field is the second (``"*/10 * * * * *"``), in UTC.

    Raises:
        TypeError: ``expression`` is not a string.
        ValueError: it is not a cron expression; the message quotes it and
            names the field at fault.
        ImportError: cronsim is not installed.
    """

    def __init__(self, expression: str) -> None:
        if not isinstance(expression, str):
            raise TypeError(
                f"a cron schedule is a string such as '*/5 * * * *', "
                f"not {type(expression).__name__} ({expression!r:.60})"
            )
        try:
            import cronsim
        except ImportError:
            raise ImportError(
                "periodic jobs parse their schedules with cronsim: "
                "pip install 'asyncjob-runner[cron]'"
            ) from None
        self._cronsim: Any = cronsim
        self.expression = " ".join(expression.split())
        fields = len(self.expression.split())
        if fields not in (5, 6):
            raise ValueError(
                f"{expression!r} is not a cron schedule: it has {fields} fields, "
                f"and a schedule has five ({FIELDS}), or six with the seconds first"
            )
        try:
            self._after(_EPOCH)
        except cronsim.CronSimError as exc:
            # cronsim says which field: "Bad minute", "Bad day-of-week".
            field = str(exc).removeprefix("Bad ")
            why = f"its {field} field is wrong" if field != str(exc) else str(exc)
            raise ValueError(
                f"{expression!r} is not a cron schedule: {why} "
                f"(its fields: {'second ' if fields == 6 else ''}{FIELDS})"
            ) from None

    def __repr__(self) -> str:
        return f"Cron({self.expression!r})"

    def next_after(self, moment: float) -> float:
        """The first tick after ``moment`` (seconds since the epoch)."""
        return self._after(datetime.datetime.fromtimestamp(moment, datetime.UTC)).timestamp()

    def last_at_or_before(self, moment: float) -> float:
        """The last tick at ``moment`` or before it."""
        # cronsim steps back from the whole second after, exclusive of it.
        after = datetime.datetime.fromtimestamp(int(moment) + 1, datetime.UTC)
        tick: datetime.datetime = next(self._cronsim.CronSim(self.expression, after, reverse=True))
        return tick.timestamp()

    def _after(self, moment: datetime.datetime) -> datetime.datetime:
        tick: datetime.datetime = next(self._cronsim.CronSim(self.expression, moment))
        return tick


_EPOCH = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
