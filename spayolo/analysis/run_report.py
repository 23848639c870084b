"""The report of a ``spayolo live --report`` run, made from its JSON lines when it ends (also when it is stopped).

Imported by the live command, so polars and matplotlib load only when a report is asked for and written.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ("live_report", "live_report_folder")


def live_report_folder(folder: str, records: Path | None) -> Path:
    """The report's folder, checked before the run: the report needs the run's JSON lines, polars and matplotlib,
    and a folder it can write into."""
    from spayolo.analysis.deps import require
    from spayolo.analysis.files import report_folder
    from spayolo.errors import UsageError

    if records is None:
        raise UsageError("--report is made from the run's records: give --json a path (not '')")
    require("polars", "matplotlib", what="spayolo live --report")
    return report_folder(folder, "--report")


def live_report(records: Path, folder: Path, source, names: list[str]) -> Path:
    """Write the report of a run from its JSON lines into ``folder``; a video file's faces are cut from it. Returns
    the path of report.html."""
    from spayolo.analysis.files import write_folder
    from spayolo.analysis.job import analyze_records
    from spayolo.analysis.records import read_records

    video = source.path if source.path is not None and not source.live else None
    files = analyze_records(read_records(records), Path(source.name).name, names, video=video)
    return write_folder(folder, files) / "report.html"
