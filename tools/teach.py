"""`spayolo teach` for checkouts and old scripts: python tools/teach.py ... is spayolo teach ..."""

import sys

from spayolo.cli import main

if __name__ == "__main__":
    sys.exit(main(["teach", *sys.argv[1:]]))
