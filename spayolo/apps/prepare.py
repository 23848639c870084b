"""Turn a raw facial-expression release into the <split>/<class>/ image folders Ultralytics trains on.

Sources (the dataset YAMLs in cfg/datasets/ hold class names, label codes and split protocols):
    spayolo prepare fer2013 --csv fer2013.csv                        # Kaggle emotion,pixels,Usage
    spayolo prepare ferplus --csv fer2013.csv --labels fer2013new.csv  # FERPlus majority vote
    spayolo prepare fer2013 --images fer2013-trainval.tar.gz         # <split>/<class>/ folder release
    spayolo prepare ckplus --images ckplus48.tar.gz                  # subject-independent k folds

Output goes to --out (default: the YAML's path under $SPAYOLO_DATASETS or ~/.cache/spayolo/datasets). An existing
output is never replaced without --force. Work happens in <out>.partial, renamed to <out> once complete, and every
file is written under a temporary name first, so an interrupted run resumes where it stopped when started again.
Bad CSV rows and unreadable images are skipped and listed by line or name; counts land in <out>/manifest.json.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import re
import shutil
import tarfile
import zipfile
import zlib
from collections import Counter, defaultdict
from pathlib import Path

import cv2
import numpy as np

from spayolo.data import DATASETS_CFG_DIR, dataset_cfg
from spayolo.errors import MissingFileError, OutputExistsError, UsageError
from spayolo.sources import IMAGE_SUFFIXES

__all__ = ("Report", "ferplus_label", "main", "prepare")

SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                 "test": "test"}
FER_SIZE = 48  # FER2013 pixels are 48x48
TMP = ".tmp-"  # prefix of files still being written; removed when a run resumes
# how a damaged or unsupported archive fails to open or extract (a truncated .gz ends early, or fails its checksum)
_ARCHIVE_ERRORS = (tarfile.TarError, zipfile.BadZipFile, gzip.BadGzipFile, zlib.error, EOFError)
csv.field_size_limit(1 << 24)


class Report:
    """What a run wrote and what it skipped, by split and class, for the summary and manifest.json."""

    def __init__(self):
        self.problems: list[str] = []
        self.skipped: Counter = Counter()
        self.counts: dict[str, Counter] = defaultdict(Counter)
        self.folds: dict[str, list[str]] = {}

    def problem(self, message: str):
        self.problems.append(message)

    def summary(self) -> str:
        lines = [f"{split}: {sum(c.values())} images " + ", ".join(f"{k} {v}" for k, v in sorted(c.items()))
                 for split, c in sorted(self.counts.items())]
        lines += [f"skipped {n}: {why}" for why, n in sorted(self.skipped.items())]
        lines += [f"problem: {p}" for p in self.problems]
        return "\n".join(lines)


def write_atomic(target: Path, write) -> None:
    """Write via a temporary name in the same folder so a killed run never leaves a half-written file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(TMP + target.name)
    write(tmp)
    os.replace(tmp, target)


def save_gray(target: Path, img: np.ndarray) -> None:
    def write(tmp: Path):
        if not cv2.imwrite(str(tmp), img):
            raise OSError(f"cannot write {tmp}")

    if not target.exists():
        write_atomic(target, write)


def copy_file(source: Path, target: Path) -> None:
    if not target.exists():
        write_atomic(target, lambda tmp: shutil.copyfile(source, tmp))


def link_or_copy(source: Path, target: Path) -> None:
    """Hard-link fold copies to the single stored image (saves k copies); copy where links are not supported."""
    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        copy_file(source, target)


def read_csv(file: Path, required: tuple[str, ...]):
    """Yield (line number, row dict) for a CSV whose header holds ``required`` columns."""
    with open(file, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise UsageError(f"{file}: missing column(s) {missing}; header is {reader.fieldnames}")
        yield from enumerate(reader, start=2)


def parse_pixels(text: str) -> np.ndarray:
    """FER2013 'pixels' field -> 48x48 uint8 image; ValueError names what is wrong."""
    values = np.array(text.split(), dtype=np.int64)  # ValueError on non-numbers
    if values.size != FER_SIZE * FER_SIZE:
        raise ValueError(f"{values.size} pixels, expected {FER_SIZE * FER_SIZE}")
    if values.min() < 0 or values.max() > 255:
        raise ValueError("pixel values outside 0-255")
    return values.astype(np.uint8).reshape(FER_SIZE, FER_SIZE)


def prepare_fer_csv(cfg: dict, csv_file: Path, out: Path, report: Report) -> None:
    """Kaggle fer2013.csv (emotion,pixels,Usage) -> <split>/<class>/fer<row>.png, row = 0-based data row."""
    labels, usage = {int(k): v for k, v in cfg["labels"].items()}, cfg["usage"]
    for line, row in read_csv(csv_file, ("emotion", "pixels", "Usage")):
        try:
            split = usage[(row["Usage"] or "").strip()]
            name = labels[int(row["emotion"])]
            img = parse_pixels(row["pixels"] or "")
        except (KeyError, ValueError, TypeError) as error:
            report.problem(f"{csv_file.name} line {line}: {type(error).__name__} {error}")
            report.skipped["bad CSV row"] += 1
            continue
        save_gray(out / split / name / f"fer{line - 2:07d}.png", img)


def ferplus_label(votes: list[float], names: list[str]) -> str | None:
    """FERPlus 'majority' label: drop single votes, the winner needs > half of the rest; None when no class wins."""
    votes = [v if v > 1 else 0.0 for v in votes]  # a single tagger's vote is an outlier (FERPlus reference code)
    top = int(np.argmax(votes))
    if votes[top] == 0 or votes[top] <= 0.5 * sum(votes):
        return None
    return names[top]


def prepare_ferplus(cfg: dict, csv_file: Path, labels_file: Path, out: Path, report: Report) -> None:
    """fer2013.csv pixels + fer2013new.csv votes (same row order) -> <split>/<class>/<Image name>."""
    columns, usage, classes = cfg["votes"], cfg["usage"], set(cfg["names"].values())
    votes, images = read_csv(labels_file, ("Usage", "Image name", *columns)), read_csv(csv_file, ("pixels",))
    for (line, row), (_, pixels_row) in zip(votes, images):
        image_name = (row["Image name"] or "").strip()
        if not image_name:
            report.skipped["no image name (removed by FERPlus)"] += 1
            continue
        try:
            split = usage[(row["Usage"] or "").strip()]
            label = ferplus_label([float(row[c]) for c in columns], columns)
            img = parse_pixels(pixels_row["pixels"] or "")
        except (KeyError, ValueError, TypeError) as error:
            report.problem(f"{labels_file.name}/{csv_file.name} line {line}: {type(error).__name__} {error}")
            report.skipped["bad CSV row"] += 1
            continue
        if label not in classes:  # unknown, NF (not a face) or no majority
            report.skipped[f"FERPlus label {label or 'without majority'}"] += 1
            continue
        save_gray(out / split / label / image_name, img)
    if next(images, None) is not None or next(votes, None) is not None:
        report.problem(f"{csv_file.name} and {labels_file.name} differ in length; rows past the shorter were not used")


def unpack(source: Path, scratch: Path) -> Path:
    """A folder as is, or an archive extracted into ``scratch``; then step into lone wrapper folders."""
    if source.is_file():
        scratch.mkdir(parents=True, exist_ok=True)
        try:
            if zipfile.is_zipfile(source):
                with zipfile.ZipFile(source) as z:
                    z.extractall(scratch)
            else:
                with tarfile.open(source) as t:
                    t.extractall(scratch, filter="data")
        except _ARCHIVE_ERRORS as error:  # tarfile lists every compression it tried, a line each: keep the first
            reason = (str(error).splitlines() or [type(error).__name__])[0].rstrip(":")
            raise UsageError(f"{source}: not a readable .zip or .tar(.gz) archive ({reason})") from error
        source = scratch
    if not source.is_dir():
        raise MissingFileError(f"{source} is neither a folder nor an archive")
    while True:
        entries = [p for p in source.iterdir() if not p.name.startswith((".", "__"))]  # skip __MACOSX, .DS_Store
        if len(entries) != 1 or not entries[0].is_dir() or entries[0].name.lower() in SPLIT_ALIASES:
            return source
        source = entries[0]


def class_of(folder: str, cfg: dict) -> str | None:
    """A source folder name (class name or raw label code) -> class name, None when it is not a class."""
    names = set(cfg["names"].values())
    key = folder.lower()
    if key in names:
        return key
    return {str(k).lower(): v for k, v in cfg.get("labels", {}).items()}.get(key)


def readable(file: Path, report: Report) -> bool:
    if cv2.imread(str(file), cv2.IMREAD_UNCHANGED) is None:
        report.problem(f"unreadable image {file}")
        report.skipped["unreadable image"] += 1
        return False
    return True


def prepare_split_folders(cfg: dict, root: Path, out: Path, report: Report) -> None:
    """<split>/<class or code>/* release -> <split>/<class>/*, checking every image decodes."""
    renames = {**SPLIT_ALIASES, **{k.lower(): v for k, v in cfg.get("splits", {}).items()}}
    ignore = {str(i).lower() for i in cfg.get("ignore", [])}
    splits = [p for p in sorted(root.iterdir()) if p.is_dir() and p.name.lower() in renames]
    if not any(renames[p.name.lower()] == "train" for p in splits):
        raise MissingFileError(f"{root}: no train/ folder; expected <split>/<class>/ images "
                                f"(split folders: {', '.join(sorted(SPLIT_ALIASES))})")
    for split_dir in splits:
        split = renames[split_dir.name.lower()]
        for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            name = class_of(class_dir.name, cfg)
            if name is None:
                if class_dir.name.lower() not in ignore:
                    report.problem(f"{class_dir}: not a class of {cfg['name']}, skipped")
                report.skipped[f"folder {class_dir.name} (not a class)"] += 1
                continue
            for file in sorted(class_dir.iterdir()):
                target = out / split / name / file.name
                if file.suffix.lower() in IMAGE_SUFFIXES and (target.exists() or readable(file, report)):
                    copy_file(file, target)


def prepare_folds(cfg: dict, root: Path, out: Path, report: Report) -> None:
    """Images anywhere under ``root`` -> all/<class>/ plus fold<k>/{train,val}/<class>/, split by subject.

    The class comes from the parent folder or the YAML pattern's ``label`` group, the subject from its ``subject``
    group. Sorted subjects are dealt round-robin into the folds, so a subject is in the val part of exactly one fold.
    """
    pattern = re.compile(cfg["pattern"], re.IGNORECASE)
    codes = {str(k).upper(): v for k, v in cfg.get("labels", {}).items()}
    items, unmatched = [], []
    for file in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
        match = pattern.match(file.name)
        name = class_of(file.parent.name, cfg)
        if match and "label" in match.groupdict():
            name = codes.get(match["label"].upper())
        if not match or name is None:
            unmatched.append(file.name)
            continue
        if (out / "all" / name / file.name).exists() or readable(file, report):
            copy_file(file, out / "all" / name / file.name)
            items.append((match["subject"].upper(), name, file.name))
    if unmatched:
        report.skipped["file name without subject/class"] += len(unmatched)
        report.problem(f"{len(unmatched)} files do not match {cfg['pattern']!r} (or their class), e.g. "
                       f"{', '.join(unmatched[:5])}")
    subjects = sorted({s for s, _, _ in items})
    k = int(cfg["folds"])
    if len(subjects) < k:
        raise UsageError(f"{len(subjects)} subjects found under {root}, too few for {k} folds")
    fold_of = {s: i % k for i, s in enumerate(subjects)}
    for fold in range(k):
        report.folds[f"fold{fold}"] = [s for s in subjects if fold_of[s] == fold]
        for subject, name, file_name in items:
            split = "val" if fold_of[subject] == fold else "train"
            link_or_copy(out / "all" / name / file_name, out / f"fold{fold}" / split / name / file_name)


def count(out: Path, report: Report) -> None:
    """Count what is on disk (a resumed run wrote only part of it this time)."""
    for file in out.rglob("*"):
        if file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES:
            rel = file.relative_to(out).parts
            report.counts["/".join(rel[:-2])][rel[-2]] += 1


def add_empty_classes(cfg: dict, out: Path, report: Report) -> None:
    """Give every split all class folders, so a split that lacks a class still indexes the classes alike."""
    for split in report.counts:
        for name in cfg["names"].values():
            (out / split / name).mkdir(parents=True, exist_ok=True)


def check_counts(cfg: dict, report: Report) -> None:
    """Compare with the full release's counts; a mismatch is reported (subsets are legitimate) but not fatal."""
    for split, expected in cfg.get("counts", {}).items():
        found = sum(report.counts.get(split, Counter()).values())
        if found != expected:
            report.problem(f"{split}: {found} images, the full release has {expected}")
    for split, counts in report.counts.items():
        missing = sorted(set(cfg["names"].values()) - set(counts))
        if missing:
            report.problem(f"{split}: no images of {', '.join(missing)}")


def prepare(name: str, out: str | Path | None = None, csv_file: str | Path | None = None,
            labels_file: str | Path | None = None, images: str | Path | None = None, force: bool = False) -> Report:
    """Prepare dataset ``name`` (a cfg/datasets YAML name or file) into ``out``; see the module docstring."""
    cfg = dataset_cfg(name)
    for flag, given in (("--csv", csv_file), ("--labels", labels_file), ("--images", images)):
        if given and not Path(given).expanduser().exists():
            raise MissingFileError(f"{flag} {given}: no such file or folder")
    out = Path(out).expanduser() if out else Path(cfg["root"])
    if out.exists() and not force:
        raise OutputExistsError(f"{out} already exists; pass --force to rebuild it")
    partial, scratch = out.with_name(out.name + ".partial"), out.with_name(out.name + ".extract")
    if force:
        shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True, exist_ok=True)
    for stale in partial.rglob(TMP + "*"):  # files a killed run was writing
        stale.unlink()
    report = Report()
    try:
        if cfg["name"] == "ferplus" or labels_file:
            if not (csv_file and labels_file):
                raise UsageError("ferplus needs --csv fer2013.csv and --labels fer2013new.csv")
            prepare_ferplus(cfg, Path(csv_file), Path(labels_file), partial, report)
        elif csv_file:
            prepare_fer_csv(cfg, Path(csv_file), partial, report)
        elif images:
            root = unpack(Path(images).expanduser(), scratch)
            (prepare_folds if cfg.get("folds") else prepare_split_folders)(cfg, root, partial, report)
        else:
            raise UsageError(f"say where the raw data is: {cfg.get('prepare', '--images <folder>')}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    count(partial, report)
    if not report.counts:
        raise UsageError(f"no images were written for {cfg['name']}:\n{report.summary()}")
    add_empty_classes(cfg, partial, report)
    check_counts(cfg, report)
    manifest = {"dataset": cfg["name"], "source": str(csv_file or images), "labels": labels_file and str(labels_file),
                "counts": {s: dict(sorted(c.items())) for s, c in sorted(report.counts.items())},
                "skipped": dict(report.skipped), "problems": report.problems, "folds": report.folds}
    (partial / "manifest.json").write_text(json.dumps(manifest, indent=1))
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    return report


def main(argv: list[str] | None = None) -> int:
    known = sorted(p.stem for p in DATASETS_CFG_DIR.glob("*.yaml"))
    parser = argparse.ArgumentParser(prog="spayolo prepare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", help=f"one of {', '.join(known)}, or a dataset YAML file")
    parser.add_argument("--csv", help="fer2013.csv (emotion,pixels,Usage)")
    parser.add_argument("--labels", help="FERPlus fer2013new.csv")
    parser.add_argument("--images", help="image folder release or its .zip/.tar(.gz) archive")
    parser.add_argument("--out", help="output folder (default: the YAML's path under $SPAYOLO_DATASETS)")
    parser.add_argument("--force", action="store_true", help="rebuild an existing output folder")
    args = parser.parse_args(argv)
    report = prepare(args.dataset, args.out, args.csv, args.labels, args.images, args.force)
    print(report.summary())
    return 0

