"""The report's pictures as PNG bytes: one timeline per track, an overview of all tracks, the contact sheet of faces,
and the comparison of several recordings. Each expression has the colour the live overlay gives it.

matplotlib's object interface on its Agg canvas (no pyplot: nothing global changes for a notebook that imports this)
with the DejaVu fonts it bundles.
"""

from __future__ import annotations

import io

import numpy as np
import polars as pl
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MultipleLocator, PercentFormatter

from spayolo.analysis.gallery import SIDE
from spayolo.analysis.summary import share_columns
from spayolo.analysis.table import expression_names
from spayolo.apps.overlay import COLOURS

__all__ = ("comparison", "contact_sheet", "expression_colours", "label_runs", "overview", "timeline")

DPI = 100
BAND = 0.25  # a track's band height in overview lanes, as a fraction of its row


def expression_colours(names: list[str]) -> dict[str, tuple[float, float, float]]:
    """Matplotlib RGB of each expression: the live overlay's BGR colour of its class index."""
    return {n: tuple(c / 255 for c in COLOURS[j % len(COLOURS)][::-1]) for j, n in enumerate(names)}


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _time_axis(ax, duration: float) -> None:
    """Seconds, or minutes:seconds past two minutes, over the whole recording (so that timelines line up)."""
    ax.set_xlim(0, max(duration, 1e-3))
    if duration > 120:
        step = next((s for s in (15, 30, 60, 120, 300, 600, 900, 1800, 3600) if duration / s <= 10), 7200)
        ax.xaxis.set_major_locator(MultipleLocator(step))  # whole minutes or halves, not matplotlib's 50 s
        ax.xaxis.set_major_formatter(FuncFormatter(lambda s, _: f"{int(s // 60)}:{int(s % 60):02d}"))
        ax.set_xlabel("time in the recording (min:s)")
    else:
        ax.set_xlabel("time in the recording (s)")


def label_runs(t: np.ndarray, dt: np.ndarray, labels: np.ndarray) -> dict[str, list[tuple[float, float]]]:
    """(start, length) in seconds of each run of one label over consecutive frames, per label; a frame gap breaks a
    run, so time unseen stays blank."""
    if not len(t):
        return {}
    ends = t + dt
    change = (labels[1:] != labels[:-1]) | (t[1:] > ends[:-1] + 1e-6)
    starts = np.flatnonzero(np.r_[True, change])
    stops = np.r_[starts[1:], len(t)] - 1
    runs: dict[str, list[tuple[float, float]]] = {}
    for a, b in zip(starts.tolist(), stops.tolist()):
        runs.setdefault(str(labels[a]), []).append((float(t[a]), float(ends[b] - t[a])))
    return runs


def _track_rows(table: pl.DataFrame, track_id) -> pl.DataFrame:
    keep = pl.col("track_id").is_null() if track_id is None else pl.col("track_id") == track_id
    return table.filter(keep).sort("frame")


def _name(track_id) -> str:
    return "untracked" if track_id is None else f"#{track_id}"


def _clock(seconds: float, duration: float) -> str:
    return f"{int(seconds // 60)}:{seconds % 60:04.1f}" if duration > 120 else f"{seconds:.1f} s"


def timeline(table: pl.DataFrame, person: dict, duration: float) -> bytes:
    """One track's probabilities over time, with its label (the most likely expression) as a band below."""
    names = expression_names(table)
    colours = expression_colours(names)
    rows = _track_rows(table, person["track_id"])
    t, dt = rows["t"].to_numpy(), rows["dt"].to_numpy()
    gap = np.r_[False, t[1:] > t[:-1] + dt[:-1] + 1e-6]  # unseen time: the lines break there
    fig = Figure(figsize=(10, 3.4))  # fixed margins: a layout engine would double the time a timeline takes
    grid = fig.add_gridspec(2, 1, height_ratios=(5, 1), left=0.065, right=0.865, top=0.91, bottom=0.14, hspace=0.45)
    ax, band = fig.add_subplot(grid[0]), fig.add_subplot(grid[1])
    for name in names:
        p = rows[name].to_numpy().astype(np.float64)
        ax.plot(np.insert(t, np.flatnonzero(gap), np.nan), np.insert(p, np.flatnonzero(gap), np.nan),
                color=colours[name], lw=1.4, label=name)
    for name, runs in label_runs(t, dt, rows["label"].to_numpy()).items():
        band.broken_barh(runs, (0, 1), color=colours.get(name, "black"))
    ax.set_ylim(0, 1)
    ax.set_ylabel("probability")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1), frameon=False, title="expression")
    share = person.get(f"share_{person['dominant']}") or 0.0
    ax.set_title(f"Person {_name(person['track_id'])}: seen {_clock(person['first_s'], duration)} to "
                 f"{_clock(person['last_s'], duration)}, visible {person['seconds_visible']:.1f} s, mostly "
                 f"{person['dominant']} ({share:.0%})", loc="left", fontsize=11)
    for a in (ax, band):
        _time_axis(a, duration)
    ax.set_xlabel("")
    band.set_yticks([])
    band.set_ylabel("label", rotation=0, ha="right", va="center")
    return _png(fig)


def overview(table: pl.DataFrame, summary: pl.DataFrame, duration: float) -> bytes:
    """Every track of ``summary`` as a lane of its label over time, beside its share of each expression."""
    names = expression_names(table)
    colours = expression_colours(names)
    people = summary.to_dicts()
    fig = Figure(figsize=(11, 1.4 + 0.38 * len(people)), layout="constrained")
    lanes, bars = fig.subplots(1, 2, gridspec_kw={"width_ratios": (3, 1)}, sharey=True)
    for row, person in enumerate(people):
        rows = _track_rows(table, person["track_id"])
        runs = label_runs(rows["t"].to_numpy(), rows["dt"].to_numpy(), rows["label"].to_numpy())
        for name, spans in runs.items():
            lanes.broken_barh(spans, (row - 0.35, 0.7), color=colours.get(name, "black"))
        left = 0.0
        for name, column in zip(names, share_columns(names)):
            bars.barh(row, person[column], left=left, height=0.7, color=colours[name])
            left += person[column]
    lanes.set_yticks(range(len(people)), [_name(p["track_id"]) for p in people])
    lanes.set_ylim(len(people) - 0.5, -0.5)
    lanes.set_ylabel("person (track)")
    lanes.grid(axis="x", alpha=0.3)
    _time_axis(lanes, duration)
    lanes.set_title("label over time", loc="left", fontsize=11)
    bars.set_xlim(0, 1)
    bars.xaxis.set_major_formatter(PercentFormatter(1.0))
    bars.set_xlabel("share of visible time")
    bars.set_title("share of each expression", loc="left", fontsize=11)
    handles = [bars.bar(0, 0, color=colours[n], label=n) for n in names]
    fig.legend(handles=handles, labels=names, loc="outside lower center", ncols=len(names), frameon=False)
    return _png(fig)


def contact_sheet(gallery, people: list[dict], names: list[str]) -> bytes | None:
    """A grid of faces, a row per person and a column per expression, each at its most confident moment; None when
    the gallery holds none of them."""
    cells = [[gallery.best.get((p["track_id"], n)) for n in names] for p in people]
    if not any(any(row) for row in cells):
        return None
    colours = expression_colours(names)
    pad, head, foot, side = 8, 22, 16, 90  # pixels: gaps, column header, caption, row label
    w, h = side + len(names) * (SIDE + pad), head + len(people) * (SIDE + foot + pad)
    canvas = np.full((h, w, 3), 255, np.uint8)
    fig = Figure(figsize=(w / DPI, h / DPI))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    for j, name in enumerate(names):
        ax.text(side + j * (SIDE + pad) + SIDE / 2, head / 2, name, ha="center", va="center", fontsize=9,
                color=colours[name], fontweight="bold")
    for i, (person, row) in enumerate(zip(people, cells)):
        y = head + i * (SIDE + foot + pad)
        ax.text(side - 8, y + SIDE / 2, f"person {_name(person['track_id'])}", ha="right", va="center", fontsize=9)
        for j, portrait in enumerate(row):
            x = side + j * (SIDE + pad)
            if portrait is None:
                canvas[y : y + SIDE, x : x + SIDE] = 240
                continue
            canvas[y : y + SIDE, x : x + SIDE] = portrait.image[..., ::-1]
            when = "" if portrait.t is None else f" at {portrait.t:.1f} s"
            ax.text(x + SIDE / 2, y + SIDE + foot / 2, f"{portrait.confidence:.2f}{when}", ha="center", va="center",
                    fontsize=7, color="#444444")
    ax.imshow(canvas, extent=(0, w, h, 0), interpolation="nearest")
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    return _png(fig)


def comparison(recordings: list[dict], names: list[str]) -> bytes:
    """Per recording (summary.json contents), the share of all people's visible time each expression had."""
    colours = expression_colours(names)
    fig = Figure(figsize=(10, 1.4 + 0.4 * len(recordings)), layout="constrained")
    ax = fig.add_subplot()
    for row, recording in enumerate(recordings):
        left = 0.0
        for name in names:
            share = recording["shares"].get(name, 0.0)
            ax.barh(row, share, left=left, height=0.7, color=colours[name], label=name if not row else None)
            left += share
    ax.set_yticks(range(len(recordings)), [r["name"] for r in recordings])
    ax.set_ylim(len(recordings) - 0.5, -0.5)
    ax.set_xlim(0, 1)
    ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_xlabel("share of all people's visible time")
    fig.legend(loc="outside lower center", ncols=len(names), frameon=False)
    return _png(fig)
