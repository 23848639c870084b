"""`spayolo prepare` for checkouts and old scripts: python tools/prepare_data.py ... is spayolo prepare ..."""

import sys

from spayolo.cli import main

if __name__ == "__main__":
    sys.exit(main(["prepare", *sys.argv[1:]]))
