"""`spayolo kfold` for checkouts and old scripts: python tools/kfold.py ... is spayolo kfold ..."""

import sys

from spayolo.cli import main

if __name__ == "__main__":
    sys.exit(main(["kfold", *sys.argv[1:]]))
