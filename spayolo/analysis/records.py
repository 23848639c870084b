"""Frame records, the JSON lines ``spayolo live --json`` writes: read from a file, or made by running the pipeline.

A record is ``{"frame", "time", "t", ["file"], "faces": [{"box", "score", "landmarks", "track_id", "label",
"probs": {name: p}}]}``: ``time`` is the wall-clock second the frame was processed, ``t`` its second of media time
(spayolo.analysis.clock), absent from files written before it existed.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from spayolo.analysis.clock import MediaClock
from spayolo.errors import MissingFileError, UsageError

__all__ = ("frame_record", "read_records", "stream_records")


def frame_record(index: int, elapsed: float, t: float | None, faces, file: str | None = None) -> dict:
    """The record of frame ``index`` with its faces (spayolo.pipeline.Face)."""
    record = {"frame": index, "time": round(elapsed, 3), "t": t}
    record.update({"file": file} if file else {})
    record["faces"] = [f.to_dict() for f in faces]
    return record


def read_records(path: str | Path) -> list[dict]:
    """The records of a JSON lines file; a last line cut short (a run killed while writing it) is dropped."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"records not found: {path}")
    with open(path, "rb") as f:
        lines = f.read().splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            if number == len(lines):
                print(f"warning: {path}: dropped its last line, cut short", file=sys.stderr)
                break
            raise UsageError(f"{path}:{number}: not a JSON record (spayolo live --json writes one per line)") from None
        if not isinstance(record, dict) or "frame" not in record or not isinstance(record.get("faces"), list):
            raise UsageError(f"{path}:{number}: not a spayolo frame record (needs 'frame' and a 'faces' list)")
        records.append(record)
    return records


def stream_records(fer, source, gallery=None) -> Iterator[dict]:
    """Run ``fer`` (a FERPipeline) over a source and yield the record of each frame; ``gallery``, a
    spayolo.analysis.gallery.FaceGallery, keeps each track's best face per expression on the way."""
    from spayolo.sources import FrameSource, open_source

    source = source if isinstance(source, FrameSource) else open_source(source)
    clock, t0 = MediaClock.of(source), time.perf_counter()
    for i, frame, faces in fer.stream(source):
        elapsed = time.perf_counter() - t0
        record = frame_record(i, elapsed, clock(i, elapsed), faces, source.current)
        if gallery is not None:
            gallery.add(frame, faces, record)
        yield record
