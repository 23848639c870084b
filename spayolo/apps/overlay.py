"""Drawing recognised faces on a frame: box, label, per-class probability bars, landmarks, and the FPS counter.

Every label and bar block is placed inside the frame and clear of the FPS counter, whatever the face's position. A
model with more classes than MAX_BARS (or than the frame has room for) gets bars for its most probable classes only.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ("COLOURS", "MAX_BARS", "draw")

COLOURS = [(0, 0, 255), (0, 128, 0), (128, 0, 128), (0, 215, 255), (255, 128, 0), (255, 0, 255), (128, 128, 128)]
FONT = cv2.FONT_HERSHEY_SIMPLEX
BAR_ROW, BAR_BLOCK_W = 12, 110  # pixels per class row; width of a name + bar block
REGION_COLOUR = (160, 160, 160)
MAX_BARS = 8  # every expression set spayolo knows has at most 8 classes; more bars would not be read


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int] | None) -> bool:
    return b is not None and a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _place(x: int, y: int, w: int, h: int, frame_w: int, frame_h: int, avoid) -> tuple[int, int]:
    """Top-left of a w x h block near (x, y), inside the frame and below the `avoid` rectangle if it would cover it."""
    x, y = min(max(0, x), max(0, frame_w - w)), min(max(0, y), max(0, frame_h - h))
    if _overlaps((x, y, x + w, y + h), avoid):
        y = min(avoid[3] + 2, max(0, frame_h - h))
    return x, y


def _fps(fps: float) -> tuple[str, tuple[int, int], tuple[int, int, int, int]]:
    """The FPS text, its baseline origin and the rectangle it covers (kept free of labels and bars)."""
    text = f"{fps:.1f} FPS"
    (w, h), base = cv2.getTextSize(text, FONT, 0.6, 2)
    return text, (8, 8 + h), (0, 0, 8 + w + 4, 8 + h + base + 2)


def _rows(probs: np.ndarray, frame_h: int) -> list[int]:
    """The classes to draw bars for: all, in class order, when they fit; else the most probable, most probable first."""
    room = max(1, min(MAX_BARS, frame_h // BAR_ROW))
    if len(probs) <= room:
        return list(range(len(probs)))
    return [int(j) for j in np.argsort(-probs, kind="stable")[:room]]


def draw(frame: np.ndarray, faces, fps: float | None = None, region: tuple[int, int, int, int] | None = None
         ) -> np.ndarray:
    """A copy of ``frame`` with each face's box, label, probability bars and landmarks, the FPS if given, and the
    region of interest (x1, y1, x2, y2 pixels) where faces were looked for, if given."""
    out = frame.copy()
    fh, fw = out.shape[:2]
    if region is not None:  # first, under everything else
        cv2.rectangle(out, region[:2], (region[2] - 1, region[3] - 1), REGION_COLOUR, 1)
    text, origin, avoid = _fps(fps) if fps is not None else (None, None, None)
    for f in faces:
        x1, y1, x2, y2 = (int(round(v)) for v in f.box)
        colour = COLOURS[int(f.probs.argmax()) % len(COLOURS)]
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, 2)
        tag = f"{f.label} {f.confidence:.2f}" + (f" #{f.track_id}" if f.track_id is not None else "")
        (tw, th), base = cv2.getTextSize(tag, FONT, 0.5, 1)
        above = y1 - 6 - th >= 0 and not _overlaps((x1, y1 - 6 - th, x1 + tw, y1), avoid)
        tx, ty = _place(x1, y1 - 6 - th if above else y1 + 4, tw, th + base, fw, fh, avoid)
        cv2.putText(out, tag, (tx, ty + th), FONT, 0.5, colour, 1, cv2.LINE_AA)
        rows = _rows(f.probs, fh)
        bx = x2 + 4 if x2 + 4 + BAR_BLOCK_W <= fw else x1 - 4 - BAR_BLOCK_W
        bx, by = _place(bx, y1, BAR_BLOCK_W, BAR_ROW * len(rows), fw, fh, avoid)
        for row, j in enumerate(rows):
            y = by + BAR_ROW * row
            cv2.rectangle(out, (bx + 50, y), (bx + 50 + int(55 * f.probs[j]), y + 9), COLOURS[j % len(COLOURS)], -1)
            cv2.putText(out, str(f.names[j])[:8], (bx, y + 9), FONT, 0.33, (255, 255, 255), 1, cv2.LINE_AA)
        if f.landmarks is not None:
            for px, py in f.landmarks:
                cv2.circle(out, (int(px), int(py)), 2, (0, 255, 0), -1)
    if text:  # last, so that no box line crosses it
        cv2.putText(out, text, origin, FONT, 0.6, (0, 255, 255), 2, cv2.LINE_AA)
    return out
