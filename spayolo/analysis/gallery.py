"""Each track's face at its most confident moment of each expression, kept while frames go by, for the contact sheet."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

__all__ = ("FaceGallery", "Portrait", "face_crop")

SIDE = 96  # pixels of a face in the contact sheet


def face_crop(frame: np.ndarray, box, side: int = SIDE, margin: float = 0.15) -> np.ndarray:
    """The square ``side`` x ``side`` BGR crop around a face box with ``margin`` of its side added (black outside)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    half = max(x2 - x1, y2 - y1) * (1 + 2 * margin) / 2
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    scale = side / max(2 * half, 1e-6)
    warp = np.array([[scale, 0, side / 2 - scale * cx], [0, scale, side / 2 - scale * cy]], np.float32)
    return cv2.warpAffine(frame, warp, (side, side), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_CONSTANT)


@dataclass
class Portrait:
    """A face crop (BGR) with the confidence, media second and frame it was taken at."""

    image: np.ndarray
    confidence: float
    t: float | None
    frame: int


class FaceGallery:
    """The best face per (track id, expression): the frame where the expression was the label with the highest
    probability. Untracked faces share the track id None."""

    def __init__(self):
        self.best: dict[tuple[int | None, str], Portrait] = {}

    def add(self, frame: np.ndarray, faces, record: dict) -> None:
        """Offer the faces (spayolo.pipeline.Face) of a frame and its record (spayolo.analysis.records)."""
        for face in faces:
            key, confidence = (face.track_id, face.label), face.confidence
            held = self.best.get(key)
            if held is None or confidence > held.confidence:  # a crop is cut only when it beats the one held
                self.best[key] = Portrait(face_crop(frame, face.box), confidence, record.get("t"), record["frame"])

    @classmethod
    def from_video(cls, table, video: str | Path) -> FaceGallery:
        """The gallery of a frame table (spayolo.analysis.table) from the video it was made from, by seeking to the
        few frames that hold a best face."""
        from spayolo.sources import SourceError

        gallery = cls()
        best = (table.sort("confidence", descending=True).group_by("track_id", "label", maintain_order=True).first()
                .sort("frame"))
        cap = cv2.VideoCapture(str(video))
        if not cap.isOpened():
            raise SourceError(f"--video {video}: cannot open it as a video")
        try:
            for row in best.iter_rows(named=True):
                cap.set(cv2.CAP_PROP_POS_FRAMES, row["frame"])
                ok, frame = cap.read()
                if not ok:
                    raise SourceError(f"--video {video}: has no frame {row['frame']}; is it the video of these "
                                      f"records?")
                box = (row["x1"], row["y1"], row["x2"], row["y2"])
                gallery.best[(row["track_id"], row["label"])] = Portrait(face_crop(frame, box), row["confidence"],
                                                                         row["t"], row["frame"])
        finally:
            cap.release()
        return gallery
