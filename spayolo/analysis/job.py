"""One recording analysed: a video run through the pipeline, or the records of an earlier run, to its report's files.

The work of ``spayolo analyze`` for one input, the same in the command, a process pool and a Ray task: it returns the
report's files as bytes, and whoever asked writes them (spayolo.analysis.files), so that a Ray cluster needs no shared
folder for its outputs.
"""

from __future__ import annotations

from pathlib import Path

from spayolo.analysis.gallery import FaceGallery
from spayolo.analysis.records import read_records, stream_records
from spayolo.analysis.report import build_report
from spayolo.analysis.summary import summarize
from spayolo.analysis.table import expression_names, frame_table, media_times

__all__ = ("RECORD_SUFFIXES", "VIDEO_SUFFIXES", "analyze_file", "analyze_records", "describe")

VIDEO_SUFFIXES = frozenset({".avi", ".flv", ".m4v", ".mkv", ".mov", ".mp4", ".mpeg", ".mpg", ".webm", ".wmv"})
RECORD_SUFFIXES = frozenset({".jsonl"})
_pipelines: dict[str, object] = {}  # one FERPipeline per worker process and settings: the models load once


def describe(records: list[dict], source: str, names: list[str], fps: float | None = None) -> dict:
    """What the report says about a recording: source, frames, duration_s, time basis, expression names, version."""
    from spayolo import __version__

    t, dt = media_times(records, fps)
    media = bool(fps) or all(r.get("t") is not None for r in records)
    return {"source": source, "frames": len(records), "duration_s": round(float(t[-1] + dt[-1]), 4) if len(t) else 0.0,
            "time": "media" if media else "processing", "names": names, "spayolo": __version__}


def analyze_records(records: list[dict], source: str, names: list[str] | None = None, fps: float | None = None,
                    gallery: FaceGallery | None = None, video: str | Path | None = None) -> dict[str, bytes]:
    """The report's files (name -> bytes) of a recording's records; faces for the contact sheet from ``gallery``, or
    cut from ``video``, the video the records were made from."""
    table = frame_table(records, names, fps)
    if video is not None:
        gallery = FaceGallery.from_video(table, video)
    about = describe(records, source, expression_names(table), fps)
    return build_report(table, summarize(table), about, gallery)


def _pipeline(settings: dict):
    from spayolo.pipeline import FERPipeline

    key = repr(sorted(settings.items()))
    if key not in _pipelines:
        _pipelines[key] = FERPipeline(**settings)
    fer = _pipelines[key]
    fer.reset()
    return fer


def analyze_file(path: str | Path, settings: dict | None = None, video: str | Path | None = None,
                 fps: float | None = None) -> dict[str, bytes]:
    """The report's files of a video (run through FERPipeline(**settings)) or a .jsonl of records (with ``video``,
    its source video, for the faces; ``fps`` for records without media time)."""
    path = Path(path)
    if path.suffix.lower() in RECORD_SUFFIXES:
        return analyze_records(read_records(path), path.name, fps=fps, video=video)
    fer, gallery = _pipeline(settings or {}), FaceGallery()
    records = list(stream_records(fer, path, gallery))
    return analyze_records(records, path.name, fer.names, gallery=gallery)

