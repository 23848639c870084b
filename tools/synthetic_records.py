"""Synthetic live records for timing spayolo analyze (spayolo.analysis.synthetic):
python tools/synthetic_records.py --frames 10000 --out live.jsonl"""

import sys

from spayolo.analysis.synthetic import main

if __name__ == "__main__":
    sys.exit(main())
