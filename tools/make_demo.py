"""Write the built-in demo video: python tools/make_demo.py [--out ~/.cache/spayolo/demo.mp4] [--seconds 3.6]."""

import sys

from spayolo.apps.demo import main

if __name__ == "__main__":
    sys.exit(main())
