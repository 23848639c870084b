"""The per-frame table: one row per frame and face, with media time, track id, box, label and every probability.

Columns: ``frame``; ``t``, the second of media time (spayolo.analysis.clock); ``dt``, the seconds the frame stands
for (to the next frame, at most ``MAX_STEPS`` typical frame steps, so that a stalled camera does not count as time
seen); ``file`` (images of a folder); ``track_id``; the box
``x1 y1 x2 y2`` in pixels; the detector's ``score``; ``label`` and ``confidence``, the most likely expression and its
probability; then one column per expression. For a tracked video the probabilities are those the live tool shows:
the track's exponential moving average (spayolo.track). Frames without a face have no row. The records' wall-clock
``time`` stays out (it differs from run to run), except as ``t`` where records carry no media time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

__all__ = ("MAX_STEPS", "expression_names", "frame_table", "media_times", "write_table")

MAX_STEPS = 5
FIXED = {"frame": pl.Int64, "t": pl.Float64, "dt": pl.Float64, "file": pl.String,
         "track_id": pl.Int64, "x1": pl.Float32, "y1": pl.Float32, "x2": pl.Float32, "y2": pl.Float32,
         "score": pl.Float32, "label": pl.String, "confidence": pl.Float32}


def expression_names(table: pl.DataFrame) -> list[str]:
    """The expression columns of a frame table, in the classifier's order."""
    return [c for c in table.columns if c not in FIXED]


def media_times(records: list[dict], fps: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(t, dt) of each record: ``t`` as recorded, else frame / ``fps`` if given, else the processing time."""
    if fps:
        t = np.array([r["frame"] / fps for r in records], np.float64)
    else:
        t = np.array([r["t"] if r.get("t") is not None else r.get("time", np.nan) for r in records], np.float64)
    if not len(t):
        return t, t
    steps = np.diff(t)
    typical = float(np.median(steps)) if len(steps) else 0.0
    dt = np.append(steps, typical)
    return t, np.clip(dt, 0, MAX_STEPS * typical)


def frame_table(records: list[dict], names: list[str] | None = None, fps: float | None = None) -> pl.DataFrame:
    """The table of a list of frame records (spayolo.analysis.records); ``names`` fixes the expression columns (else
    the first face's), ``fps`` gives records without media time one (frame / fps)."""
    t, dt = media_times(records, fps)
    if names is None:
        names = next((list(f["probs"]) for r in records for f in r["faces"]), [])
    columns: dict[str, list] = {name: [] for name in (*FIXED, *names)}
    frame, tt, dtt, file, track = (columns[k] for k in ("frame", "t", "dt", "file", "track_id"))
    x1, y1, x2, y2, score, label, confidence = (columns[k] for k in ("x1", "y1", "x2", "y2", "score", "label",
                                                                      "confidence"))
    probs = [columns[n] for n in names]
    for record, ti, dti in zip(records, t.tolist(), dt.tolist()):
        for face in record["faces"]:
            frame.append(record["frame"])
            tt.append(ti)
            dtt.append(dti)
            file.append(record.get("file"))
            track.append(face.get("track_id"))
            b = face["box"]
            x1.append(b[0]), y1.append(b[1]), x2.append(b[2]), y2.append(b[3])
            score.append(face.get("score"))
            p = face["probs"]
            label.append(face["label"])
            confidence.append(p[face["label"]])
            for column, name in zip(probs, names):
                column.append(p[name])
    schema = {**FIXED, **dict.fromkeys(names, pl.Float32)}
    return pl.DataFrame(columns, schema=schema)


def write_table(table: pl.DataFrame, folder: str | Path) -> list[Path]:
    """frames.csv and frames.parquet in ``folder``."""
    folder = Path(folder)
    csv, parquet = folder / "frames.csv", folder / "frames.parquet"
    table.write_csv(csv, float_precision=4)
    table.write_parquet(parquet)
    return [csv, parquet]
