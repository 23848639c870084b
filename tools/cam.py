"""`spayolo cam` for checkouts and old scripts: python tools/cam.py ... is spayolo cam ..."""

import sys

from spayolo.cli import main

if __name__ == "__main__":
    sys.exit(main(["cam", *sys.argv[1:]]))
