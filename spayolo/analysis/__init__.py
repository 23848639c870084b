"""From per-frame results to answers: a per-frame table, per-person summaries, plots and an HTML report per video.

    from spayolo import FERPipeline
    from spayolo.analysis import summarize
    frames = FERPipeline().analyze("clip.mp4")   # polars DataFrame, one row per frame and face (to_pandas() for pandas)
    people = summarize(frames)                  # one row per track: time visible, share of each expression, ...

``spayolo analyze`` writes the same tables, the plots and a self-contained report.html (spayolo.analysis.report).
polars and matplotlib come with the full install; spayolo-runtime needs its ``analyze`` extra. The modules that only
read records or keep time (clock, records) import neither, so that the live command can use them.
"""

from __future__ import annotations

import importlib

__all__ = ("FaceGallery", "MediaClock", "analyze_file", "frame_table", "read_records", "summarize", "write_report")

_HOMES = {"FaceGallery": "gallery", "MediaClock": "clock", "analyze_file": "job", "frame_table": "table",
          "read_records": "records", "summarize": "summary", "write_report": "report"}


def __getattr__(name: str):
    # polars and matplotlib load only when a name that needs them is asked for
    if name in _HOMES:
        return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
