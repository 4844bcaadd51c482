"""The package's one logger, ``asyncjob``.

Every part of the package logs through it, so that an application
configures (or silences) asyncjob in one place.
"""

from __future__ import annotations

import logging

__all__ = ("logger",)

logger = logging.getLogger("asyncjob")
