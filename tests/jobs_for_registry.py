"""Module-level functions for the registry tests to register."""

from __future__ import annotations


async def resize(path: str, width: int) -> str:
    """A coroutine job."""
    return f"{path}@{width}"


def report(year: int) -> str:
    """A sync job."""
    return f"report {year}"


def other_report(year: int) -> str:
    """Another sync job, for name clashes."""
    return f"other {year}"
