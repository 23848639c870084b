"""Which members pay: every ensemble of the given classifiers, scored as `spayolo evaluate` scores it, on one folder.

    python benchmarks/members.py ~/.cache/spayolo/datasets/fer2013/val --model weights/*-int8.onnx new-int8.onnx
    python benchmarks/members.py ~/.cache/spayolo/datasets/fer2013/val --model a.onnx b.pt c.onnx --cache ~/runs/members

Each classifier's probabilities are computed once, with the test-time views of ``--tta`` (default ``flip+zoom``, the
pipeline's), by the code `spayolo evaluate --model` runs (spayolo.engine.scoring); an ensemble's are their mean, as
spayolo.classifier's Ensemble averages them, so every row is what `spayolo evaluate --model <its members>` prints,
without another forward pass. ``--cache DIR`` keeps each classifier's probabilities between runs, keyed by its file,
size, modification time, the folder and the views. Prints each classifier alone, the best ensemble of each size and
the ``--top`` best overall, by top-1 then mean per-class accuracy. The best rows are picked on the folder they score:
a selection, to be confirmed elsewhere, not a measurement.
"""

from __future__ import annotations

import argparse
import hashlib
from itertools import combinations
from pathlib import Path

import numpy as np

from spayolo.classifier import DEFAULT_MODELS
from spayolo.tta import TTA_MODES


def member_probabilities(model: str, folder: str, tta: str, cache: Path | None = None) -> np.ndarray:
    """(N, classes) probabilities of one classifier on ``folder``, read from ``cache`` when it holds them."""
    from spayolo.classifier import load_classifier
    from spayolo.engine.scoring import folder_probabilities

    path = Path(model)
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{Path(folder).resolve()}|{tta}"
    file = cache / f"{path.stem}-{hashlib.sha1(key.encode()).hexdigest()[:12]}.npy" if cache else None
    if file and file.is_file():
        return np.load(file)
    probs = folder_probabilities(load_classifier(model, "torch"), folder, tta)["probs"]
    if file:
        cache.mkdir(parents=True, exist_ok=True)
        partial = file.with_suffix(".partial")
        with open(partial, "wb") as f:
            np.save(f, probs)
        partial.replace(file)  # a run stopped mid-write leaves no cache file that loads as whole
    return probs


def ranked(probs: dict[str, np.ndarray], labels: np.ndarray, names: list[str], sizes) -> list[tuple]:
    """(top-1, mean per-class accuracy, members) of every ensemble of ``sizes`` members, best first."""
    from spayolo.engine.scoring import accuracies

    rows = []
    for k in sizes:
        for members in combinations(probs, k):
            found = accuracies(np.mean([probs[m] for m in members], 0), labels, names)
            rows.append((found["top1"], found["mean_class_accuracy"], members))
    return sorted(rows, key=lambda row: row[:2], reverse=True)


def main() -> None:
    from spayolo.engine.scoring import folder_samples

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", help="prepared split: one sub-folder of images per class")
    parser.add_argument("--model", nargs="+", default=[str(m) for m in DEFAULT_MODELS["onnx"]],
                        help="classifiers, .onnx or .pt (default: the pipeline's)")
    parser.add_argument("--tta", default="flip+zoom", choices=TTA_MODES, help="each classifier's test-time views")
    parser.add_argument("--max-members", type=int, default=None, help="largest ensemble scored (default: all)")
    parser.add_argument("--top", type=int, default=10, help="best ensembles listed overall")
    parser.add_argument("--cache", type=Path, default=None, help="folder keeping each classifier's probabilities")
    args = parser.parse_args()
    samples, names = folder_samples(args.folder)
    labels = np.array([c for _, c in samples])
    probs = {m: member_probabilities(m, args.folder, args.tta, args.cache) for m in dict.fromkeys(args.model)}
    largest = min(args.max_members or len(probs), len(probs))
    rows = ranked(probs, labels, names, range(1, largest + 1))

    def table(title: str, chosen: list[tuple]) -> None:
        print(f"\n{title}\n\n| members | ensemble | top-1 | mean per class |\n| ---: | --- | ---: | ---: |")
        for top1, per_class, members in chosen:
            print(f"| {len(members)} | {' + '.join(Path(m).stem for m in members)} | {100 * top1:.2f} % | "
                  f"{100 * per_class:.2f} % |")

    print(f"{len(samples)} images in {args.folder}, views: {args.tta}")
    table("Each classifier alone", [row for row in rows if len(row[2]) == 1])
    table("The best ensemble of each size", [next(r for r in rows if len(r[2]) == k) for k in range(2, largest + 1)])
    table(f"The {min(args.top, len(rows))} best ensembles (picked on this folder)", rows[:args.top])


if __name__ == "__main__":
    main()
