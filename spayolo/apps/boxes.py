"""Face boxes found by the caller's own detector, for ``spayolo live --boxes``: JSON lines, one record per frame.

    {"frame": 12, "boxes": [[x1, y1, x2, y2], ...]}      a video frame, by its index in the source
    {"file": "a.jpg", "boxes": [[x1, y1, x2, y2]]}      an image of a folder, by its file name

spayolo live's own ``--json`` records (``faces`` with a ``box`` each) are read as well, so one run's faces can be
classified again by another model. A frame or image that no record names has no faces.
"""

from __future__ import annotations

import json
from pathlib import Path

from spayolo.errors import MissingFileError, UsageError
from spayolo.sources import printable

__all__ = ("GivenBoxes", "read_boxes")


class GivenBoxes(dict):
    """{frame index or file name: boxes} that remembers which entries a run asked for."""

    def __init__(self, *args):
        super().__init__(*args)
        self.asked = set()

    def get(self, key, default=None):
        self.asked.add(key)
        return super().get(key, default)

    def unused(self) -> list:
        """The entries no frame asked for: a misspelt file name, or frames past the end of the video."""
        return [key for key in self if key not in self.asked]


def read_boxes(path: str | Path) -> GivenBoxes:
    """Read a --boxes file; UsageError naming the file and line of a record that is not one."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"--boxes {printable(path)}: no such file")
    boxes = GivenBoxes()
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"--boxes {printable(path)}:{number}"
        try:
            record = json.loads(line)
        except ValueError:
            raise UsageError(f"{where}: not a JSON record") from None
        if not isinstance(record, dict) or not ("file" in record or isinstance(record.get("frame"), int)):
            raise UsageError(f"{where}: a record names its 'frame' (an index) or its 'file'")
        if "boxes" in record:
            found = record["boxes"]
        elif isinstance(record.get("faces"), list):
            found = [face.get("box") for face in record["faces"] if isinstance(face, dict)]
        else:
            raise UsageError(f"{where}: a record holds 'boxes' ([[x1, y1, x2, y2], ...]) or spayolo's 'faces'")
        if not isinstance(found, list) or not all(isinstance(b, list) and len(b) == 4 for b in found):
            raise UsageError(f"{where}: boxes are lists of four numbers x1, y1, x2, y2 (pixels)")
        boxes[record["file"] if "file" in record else record["frame"]] = found
    return boxes
