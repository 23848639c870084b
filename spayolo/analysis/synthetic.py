"""Synthetic live records for timing the analysis: people whose expression probabilities drift at random, one JSON
line per frame as ``spayolo live --json`` writes them (python tools/synthetic_records.py)."""

from __future__ import annotations

import argparse
import json

import numpy as np

__all__ = ("NAMES", "main", "synthetic_records")

NAMES = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")


def synthetic_records(frames: int = 10_000, fps: float = 30.0, seed: int = 0) -> list[dict]:
    """Records of three people: two seen throughout, the third in the middle 40 % of the frames."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(3, len(NAMES)))
    records = []
    for i in range(frames):
        faces = []
        for k in range(3 if 0.3 * frames <= i < 0.7 * frames else 2):
            logits[k] += rng.normal(scale=0.15, size=len(NAMES))
            p = np.exp(logits[k]) / np.exp(logits[k]).sum()
            x = 50 + 200 * k + 10 * np.sin(i / 50)
            faces.append({"box": [round(x, 1), 100.0, round(x + 120, 1), 250.0], "score": 0.99,
                          "landmarks": [[x + 30, 150], [x + 90, 150], [x + 60, 180], [x + 40, 210], [x + 80, 210]],
                          "track_id": k + 1, "label": NAMES[int(p.argmax())],
                          "probs": {n: round(float(q), 4) for n, q in zip(NAMES, p)}})
        records.append({"frame": i, "time": round(i / fps * 1.5, 3), "t": round(i / fps, 4), "faces": faces})
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/synthetic_records.py", description=__doc__)
    parser.add_argument("--frames", type=int, default=10_000, help="frames (default: %(default)s)")
    parser.add_argument("--out", default="live.jsonl", help="JSON lines file (default: %(default)s)")
    args = parser.parse_args(argv)
    with open(args.out, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in synthetic_records(args.frames))
    print(f"wrote {args.out}")
    return 0
