"""What the modules that mypyc may compile ask of it, at no cost without it.

A wheel built with the mypyc hook (pyproject.toml) compiles some modules to
C extensions; everywhere else they run as the Python they are. Their
instructions to the compiler come from ``mypy_extensions``, which mypy
brings for the build but which is no dependency at run time: here, for the
type checker and the compiler, they are the real ones, and at run time
decorators that change nothing (a compiled module never calls them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ("mypyc_attr",)

if TYPE_CHECKING:
    from mypy_extensions import mypyc_attr as mypyc_attr
else:

    def mypyc_attr(*_: str, **__: object) -> Any:
        return lambda cls: cls
