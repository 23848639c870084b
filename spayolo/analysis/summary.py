"""The per-person summary: one row per track with when it was seen, for how long, and the share of each expression."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from spayolo.analysis.table import expression_names

__all__ = ("share_columns", "summarize", "write_summary")


def share_columns(names: list[str]) -> list[str]:
    """The summary's column of each expression's share of the time."""
    return [f"share_{n}" for n in names]


def summarize(table: pl.DataFrame) -> pl.DataFrame:
    """Per track of a frame table (spayolo.analysis.table), in order of first appearance (untracked faces last):
    ``track_id``, ``first_s`` and ``last_s`` (media seconds it was first and last seen), ``seconds_visible``,
    ``frames``, ``dominant`` (the expression with the largest share), ``mean_confidence`` and ``share_<expression>``,
    the fraction of its visible time each expression was the label. Frames without media time weigh one each."""
    names = expression_names(table)
    timed = table["dt"].fill_nan(None).drop_nulls().sum() > 0
    weight = pl.col("weight")
    shares = [(weight * (pl.col("label") == n)).sum() / weight.sum() for n in names]
    weights = pl.col("dt").fill_nan(None).fill_null(0.0) if timed else pl.lit(1.0)
    summary = (table.with_columns(weights.alias("weight")).group_by("track_id", maintain_order=True)
               .agg(pl.col("t").min().alias("first_s"), pl.col("t").max().alias("last_s"),
                    pl.col("dt").fill_nan(None).sum().alias("seconds_visible"), pl.len().cast(pl.Int64).alias("frames"),
                    pl.col("confidence").mean().cast(pl.Float64).alias("mean_confidence"),
                    *(s.alias(c) for s, c in zip(shares, share_columns(names))))
               .sort("first_s", "track_id", nulls_last=True))
    if not names:
        return summary.with_columns(pl.lit(None, pl.String).alias("dominant"))
    best = pl.concat_list(share_columns(names)).list.arg_max()
    dominant = best.replace_strict(list(range(len(names))), names, return_dtype=pl.String)
    summary = summary.with_columns(dominant.alias("dominant"))
    return summary.select("track_id", "first_s", "last_s", "seconds_visible", "frames", "dominant", "mean_confidence",
                          *share_columns(names))


def write_summary(summary: pl.DataFrame, folder: str | Path, about: dict) -> list[Path]:
    """summary.csv, and summary.json: ``about`` (the recording: source, frames, duration, ...) with its ``tracks``."""
    folder = Path(folder)
    csv, js = folder / "summary.csv", folder / "summary.json"
    summary.write_csv(csv, float_precision=4)
    rows = [{k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()} for row in summary.to_dicts()]
    js.write_text(json.dumps({**about, "tracks": rows}, indent=1) + "\n")
    return [csv, js]
