"""`spayolo live` for checkouts and old scripts: python tools/live.py ... is spayolo live ..."""

import sys

from spayolo.cli import main

if __name__ == "__main__":
    sys.exit(main(["live", *sys.argv[1:]]))
