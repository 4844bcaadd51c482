"""What a callable is: a coroutine function or not, and what to call it."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from types import CodeType, FunctionType
from typing import Any

__all__ = ("callable_name", "describe", "is_async_callable")


_CO_COROUTINE = inspect.CO_COROUTINE


def describe(func: Callable[..., Any]) -> tuple[str, bool]:
    """``(callable_name(func), is_async_callable(func))``, fast for plain functions.

    Performing is on the hot path, and most jobs are plain functions, whose
    code flags answer at once.
    """
    if type(func) is FunctionType:
        code = func.__code__
        # Keyed by code, not function: the closures a request makes each
        # time share their code, so the cache stays as small as the program.
        name = _names.get(code)
        if name is None:
            name = _names[code] = f"{func.__module__}.{func.__qualname__}"
        return name, bool(code.co_flags & _CO_COROUTINE)
    return callable_name(func), is_async_callable(func)


_names: dict[CodeType, str] = {}


def _unwrap(obj: Any) -> Any:
    while isinstance(obj, functools.partial):
        obj = obj.func
    return obj


def is_async_callable(obj: Any) -> bool:
    """True when calling ``obj`` returns an awaitable coroutine.

    Sees through :func:`functools.partial` (nested too), bound methods and
    callable objects whose ``__call__`` is ``async def``, as Starlette does.
    Decided once, when the job is performed, never while it runs.
    """
    obj = _unwrap(obj)
    if inspect.iscoroutinefunction(obj):
        return True
    if inspect.isclass(obj):
        return False  # calling a class makes an instance, whatever its __call__
    call = getattr(obj, "__call__", None)  # noqa: B004 - we want the attribute itself
    return not inspect.isroutine(obj) and inspect.iscoroutinefunction(_unwrap(call))


def callable_name(obj: Callable[..., Any]) -> str:
    """A readable dotted name for logs and statuses, e.g. ``app.jobs.resize``."""
    target = _unwrap(obj)
    if not (inspect.isroutine(target) or inspect.isclass(target)):
        target = type(target)
    module = getattr(target, "__module__", None)
    qualname = getattr(target, "__qualname__", None) or repr(target)
    return f"{module}.{qualname}" if module else qualname
