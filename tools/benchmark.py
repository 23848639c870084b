"""Side-by-side benchmarks: classifiers, the end-to-end pipeline, stock vs fast training (``spayolo benchmark``)."""

import sys

from spayolo.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
