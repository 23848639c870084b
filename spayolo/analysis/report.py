"""A recording's report: its tables, pictures and one self-contained report.html (pictures embedded as data URIs, inline
CSS, no script), opened from disk without a server; and the index page that compares several recordings."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from urllib.parse import quote

import polars as pl

from spayolo.analysis import plots
from spayolo.analysis.files import write_folder
from spayolo.analysis.summary import share_columns
from spayolo.analysis.table import expression_names

__all__ = ("MAX_PEOPLE", "MIN_SECONDS", "build_report", "index_page", "write_report")

MIN_SECONDS = 1.0  # a track seen for less gets no timeline: mostly a detection that flickered
MAX_PEOPLE = 12  # timelines and contact-sheet rows, the longest-seen tracks first

CSS = """
body{font:15px/1.45 "DejaVu Sans",Verdana,sans-serif;margin:2em auto;max-width:1150px;color:#222;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}
.meta{color:#555}table{border-collapse:collapse;font-size:.9em;margin:1em 0}
th,td{padding:.3em .6em;border-bottom:1px solid #e5e5e5;text-align:right;white-space:nowrap}
th{background:#f4f4f4;vertical-align:bottom}td.l,th.l{text-align:left}
.bar{display:flex;width:220px;height:14px;border:1px solid #ccc}.bar span{display:block;height:100%}
.chip{display:inline-block;width:.8em;height:.8em;border-radius:2px;margin-right:.35em;vertical-align:-.05em}
img{max-width:100%;display:block;margin:.8em 0}.note{color:#666;font-size:.88em}
"""


def _hex(rgb: tuple[float, float, float]) -> str:
    return "#" + "".join(f"{round(c * 255):02x}" for c in rgb)


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _bar(shares: dict[str, float], colours: dict[str, str]) -> str:
    parts = "".join(f'<span style="width:{100 * p:.2f}%;background:{colours[n]}" title="{n} {p:.0%}"></span>'
                    for n, p in shares.items() if p > 0)
    return f'<div class="bar">{parts}</div>'


def _chip(name: str | None, colours: dict[str, str]) -> str:
    if name is None:
        return ""
    return f'<span class="chip" style="background:{colours[name]}"></span>{html.escape(name)}'


def _headers(names: list[str], colours: dict[str, str]) -> str:
    """A table header cell per expression, with its colour."""
    return "".join(f'<th>{_chip(n, colours)}</th>' for n in names)


def _page(title: str, body: str) -> bytes:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body>\n{body}\n</body></html>\n").encode()


def _seconds(value) -> str:
    return "" if value is None else f"{value:.1f}"


def _people_table(summary: pl.DataFrame, names: list[str], colours: dict[str, str]) -> str:
    rows = []
    for p in summary.to_dicts():
        shares = {n: p[c] or 0.0 for n, c in zip(names, share_columns(names))}
        cells = "".join(f"<td>{shares[n]:.0%}</td>" for n in names)
        person = "untracked" if p["track_id"] is None else f"#{p['track_id']}"
        rows.append(f'<tr><td class="l">{person}</td><td>{_seconds(p["first_s"])}</td><td>{_seconds(p["last_s"])}</td>'
                    f'<td>{_seconds(p["seconds_visible"])}</td><td>{p["frames"]}</td>'
                    f'<td class="l">{_chip(p["dominant"], colours)}</td><td>{p["mean_confidence"]:.2f}</td>'
                    f"<td>{_bar(shares, colours)}</td>{cells}</tr>")
    return (f'<table><tr><th class="l">person</th><th>first seen (s)</th><th>last seen (s)</th><th>visible (s)</th>'
            f'<th>frames</th><th class="l">dominant</th><th>mean confidence</th><th class="l">share of visible time'
            f"</th>{_headers(names, colours)}</tr>\n" + "\n".join(rows) + "</table>")


def _shown(summary: pl.DataFrame) -> pl.DataFrame:
    """The people who get a timeline and a contact-sheet row: the longest seen, in order of first appearance."""
    return (summary.filter(pl.col("seconds_visible") >= MIN_SECONDS).sort("seconds_visible", descending=True)
            .head(MAX_PEOPLE).sort("first_s", "track_id", nulls_last=True))


def build_report(table: pl.DataFrame, summary: pl.DataFrame, about: dict, gallery=None) -> dict[str, bytes]:
    """Every file of a recording's report by name: frames.csv/.parquet, summary.csv/.json, the PNGs, report.html.

    ``about`` describes the recording (spayolo.analysis.job.describe): source, frames, duration_s, time basis, names.
    ``gallery`` (spayolo.analysis.gallery.FaceGallery) adds the contact sheet of faces.
    """
    names = expression_names(table)
    colours = {n: _hex(c) for n, c in plots.expression_colours(names).items()}
    files: dict[str, bytes] = {"frames.csv": table.write_csv(float_precision=4).encode()}
    buffer = io.BytesIO()
    table.write_parquet(buffer)
    files["frames.parquet"] = buffer.getvalue()
    files["summary.csv"] = summary.write_csv(float_precision=4).encode()
    rows = [{k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()} for row in summary.to_dicts()]
    files["summary.json"] = (json.dumps({**about, "tracks": rows}, indent=1) + "\n").encode()

    duration, timed = about["duration_s"], bool(len(table))
    shown = _shown(summary)
    sections = []
    if timed and len(shown):
        files["overview.png"] = plots.overview(table, shown, duration)
        sections.append("<h2>Overview</h2>" + _img(files["overview.png"], "each person's label over time"))
        timelines = []
        for person in shown.to_dicts():
            name = f"timeline-{'untracked' if person['track_id'] is None else person['track_id']}.png"
            files[name] = plots.timeline(table, person, duration)
            timelines.append(_img(files[name], f"timeline of person {person['track_id']}"))
        sections.append("<h2>Timelines</h2>" + "".join(timelines))
    sheet = gallery and len(shown) and plots.contact_sheet(gallery, shown.to_dicts(), names)
    if sheet:
        files["faces.png"] = sheet
        sections.append("<h2>Faces</h2><p class=note>Each person at the most confident moment of each expression it "
                        "showed (probability and time below the face).</p>" + _img(sheet, "faces per expression"))
    left_out = len(summary) - len(shown)
    note = (f"<p class=note>{left_out} more track(s), seen for less than {MIN_SECONDS:g} s or beyond the "
            f"{MAX_PEOPLE} longest seen, are in the table only.</p>" if left_out and len(shown) else "")
    basis = {"media": "seconds of the recording", "processing": "seconds since processing started (the records "
             "carry no media time)"}[about["time"]]
    body = (f"<h1>Facial expressions: {html.escape(about['source'])}</h1>"
            f'<p class="meta">{about["frames"]} frames, {duration:.1f} s, {len(summary)} person(s) (tracks). '
            f"Made by spayolo {html.escape(about['spayolo'])}.</p>"
            f"<h2>People</h2>{_people_table(summary, names, colours)}{note}{''.join(sections)}"
            f"<h2>About these numbers</h2><p class=note>Time: {basis}. A person is a track: a face followed from frame "
            f"to frame; a face that is lost for long and comes back may get a new number. Probabilities are those "
            f"the live tool shows, each track's moving average over frames; the label is the most likely expression; "
            f"a share is the part of a person's visible time an expression was the label.</p>"
            f"<p>Data: " + ", ".join(f'<a href="{n}">{n}</a>' for n in ("frames.csv", "frames.parquet", "summary.csv",
                                                                       "summary.json")) + "</p>")
    files["report.html"] = _page(f"Expressions: {about['source']}", body)
    return files


def write_report(folder: str | Path, table: pl.DataFrame, summary: pl.DataFrame, about: dict, gallery=None) -> Path:
    """Build the report and write it into ``folder`` (spayolo.analysis.files.write_folder); the path of report.html."""
    return write_folder(folder, build_report(table, summary, about, gallery)) / "report.html"


def index_page(entries: list[tuple[str, dict]]) -> bytes:
    """index.html comparing recordings: (relative link to a report folder, its summary.json contents) each."""
    names = next((e["names"] for _, e in entries if e.get("names")), [])
    colours = {n: _hex(c) for n, c in plots.expression_colours(names).items()}
    recordings, rows = [], []
    for link, e in entries:
        seen = sum(t["seconds_visible"] or 0.0 for t in e["tracks"])
        shares = {n: sum((t[f"share_{n}"] or 0.0) * (t["seconds_visible"] or 0.0) for t in e["tracks"]) / seen
                  if seen else 0.0 for n in names}
        dominant = max(shares, key=shares.get) if seen else None
        recordings.append({"name": e["source"], "shares": shares})
        cells = "".join(f"<td>{shares[n]:.0%}</td>" for n in names)
        href = html.escape(quote(link))
        rows.append(f'<tr><td class="l"><a href="{href}/report.html">{html.escape(e["source"])}</a></td>'
                    f'<td>{e["duration_s"]:.1f}</td><td>{len(e["tracks"])}</td><td>{seen:.1f}</td>'
                    f'<td class="l">{_chip(dominant, colours)}</td><td>{_bar(shares, colours)}</td>{cells}</tr>')
    chart = _img(plots.comparison(recordings, names), "expression shares per recording") if entries and names else ""
    body = (f"<h1>Facial expressions in {len(entries)} recording(s)</h1><p class=meta>Each name links to its "
            f"report.</p><table><tr><th class=l>recording</th><th>duration (s)</th><th>people</th>"
            f"<th>person-seconds seen</th><th class=l>dominant</th><th class=l>share of all people's visible time</th>"
            f"{_headers(names, colours)}</tr>\n" + "\n".join(rows) + f"</table>{chart}")
    return _page("Facial expressions: index", body)
