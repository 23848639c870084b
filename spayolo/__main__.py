"""``python -m spayolo <command> ...``: the spayolo command."""

from __future__ import annotations

import sys

from spayolo.cli import main

__all__ = ()

if __name__ == "__main__":
    sys.exit(main())
