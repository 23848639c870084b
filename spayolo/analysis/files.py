"""Writing a report's files into a folder so that a reader never sees half of one, and report.html marks it finished."""

from __future__ import annotations

import os
from pathlib import Path

from spayolo.errors import UsageError

__all__ = ("FINISHED", "finished", "report_folder", "write_folder")

FINISHED = "report.html"  # written last: its presence means the folder holds a whole report
OURS = ("overview.png", "faces.png", "timeline-*.png")  # pictures a previous report may have left


def finished(folder: str | Path) -> bool:
    """Whether ``folder`` holds a finished report."""
    return (Path(folder) / FINISHED).is_file()


def report_folder(path: str | Path, flag: str) -> Path:
    """``path`` as a folder a report can be written into (made if missing); one line naming ``flag`` if it cannot."""
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{flag} {folder} is a file: give a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"{flag} {folder}: cannot create it ({error.strerror})") from None
    if not os.access(folder, os.W_OK):
        raise UsageError(f"{flag} {folder}: not writable")
    return folder


def write_folder(folder: str | Path, files: dict[str, bytes]) -> Path:
    """Write ``files`` (name -> bytes) into ``folder``, each under a temporary name renamed into place, the finishing
    report.html last (an earlier one is removed first); pictures of an earlier report that this one lacks are removed,
    nothing else is touched."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / FINISHED).unlink(missing_ok=True)
    for pattern in OURS:
        for stale in folder.glob(pattern):
            if stale.name not in files:
                stale.unlink()
    for name in sorted(files, key=lambda n: n == FINISHED):
        tmp = folder / f".{name}.partial"
        tmp.write_bytes(files[name])
        os.replace(tmp, folder / name)
    return folder
