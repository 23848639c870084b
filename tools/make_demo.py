"""Write the built-in demo video: python tools/make_demo.py [--out ~/.cache/spayolo/demo.mp4] [--seconds 3.6]."""

import sys

from spayolo.apps.demo import DEMO, demo_photos, main, make_demo  # noqa: F401  tools/benchmark.py imports demo_photos

if __name__ == "__main__":
    sys.exit(main())
