"""`spayolo evaluate` for checkouts and old scripts: python tools/evaluate.py ... is spayolo evaluate ..."""

import sys

from spayolo.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
