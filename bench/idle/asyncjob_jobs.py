"""The job an idle ``asyncjob worker`` has registered (``--import``)."""

import asyncjob


@asyncjob.job
async def noop() -> None:
    """Does nothing: the worker only waits for it."""
