"""CI: two `spayolo live --json` files hold the same records: boxes within 0.5 px, probabilities within 1e-4."""

import json
import sys


def main(first: str, second: str) -> int:
    a, b = ([json.loads(line) for line in open(path)] for path in (first, second))
    assert len(a) == len(b) > 0, f"{len(a)} against {len(b)} records"
    faces = 0
    for x, y in zip(a, b):
        same = x["frame"] == y["frame"] and x.get("file") == y.get("file") and len(x["faces"]) == len(y["faces"])
        assert same, (x, y)
        for f, g in zip(x["faces"], y["faces"]):
            assert f["label"] == g["label"] and f["track_id"] == g["track_id"], (f, g)
            assert max(abs(p - q) for p, q in zip(f["box"], g["box"])) <= 0.5, (f["box"], g["box"])
            assert max(abs(f["probs"][k] - g["probs"][k]) for k in f["probs"]) <= 1e-4, (f["probs"], g["probs"])
            faces += 1
    print(f"same records: {len(a)} frames, {faces} faces ({first} = {second})")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
