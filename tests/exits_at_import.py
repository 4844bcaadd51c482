"""A module a worker is given that exits as it is imported (a script's
``sys.exit()`` left at its end, say)."""

import sys

sys.exit(0)
