"""Identity switches of the pipeline's tracker on a scene of crossing, hidden and returning faces with hand-placed boxes
(spayolo.analysis.identity): python tools/track_benchmark.py [--seed 0] [--detect-every 5] [--save scene.mp4]"""

import sys

from spayolo.analysis.identity import main

if __name__ == "__main__":
    sys.exit(main())
