"""Media time: the second of the recording a frame shows, which a report needs rather than when it was processed."""

from __future__ import annotations

__all__ = ("MediaClock",)


class MediaClock:
    """Seconds of media time of frame ``index``: index / fps for a video file; for a camera or stream the seconds since
    the run started (its frames are the present); None for the unrelated images of a folder.

    A file is read at its own pace, faster or slower than it plays, so its processing time says nothing about when in
    the recording a face was seen.
    """

    def __init__(self, fps: float | None = None, live: bool = False, timed: bool = True):
        self.fps, self.live, self.timed = fps, live, timed

    @classmethod
    def of(cls, source) -> MediaClock:
        """The clock of a spayolo.sources.FrameSource."""
        if source.live or not source.sequential:
            return cls(live=source.live, timed=source.live)
        return cls(fps=source.fps)

    def __call__(self, index: int, elapsed: float) -> float | None:
        """Media seconds of frame ``index`` (its place in the source), seen ``elapsed`` wall-clock seconds after the
        start; a video file that declares no frame rate falls back to the latter."""
        if not self.timed:
            return None
        return round(index / self.fps, 4) if self.fps else round(elapsed, 3)
