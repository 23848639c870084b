"""A progress line on stderr, drawn only on a terminal: output redirected to a file or a pipe gets no escape codes."""

from __future__ import annotations

import sys
import time

__all__ = ("Progress",)


class Progress:
    """``done/total`` with rate and time left, redrawn at most every ``every`` seconds on ``stream`` if it is a TTY."""

    def __init__(self, total: int, desc: str, unit: str = "frame", stream=None, every: float = 0.2):
        self.total, self.desc, self.unit, self.every = total, desc, unit, every
        self.stream = stream or sys.stderr
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.count, self.start, self.drawn = 0, time.perf_counter(), 0.0

    def update(self, n: int = 1) -> None:
        self.count += n
        now = time.perf_counter()
        if self.enabled and (now - self.drawn >= self.every or self.count >= self.total):
            self.drawn = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        rate = self.count / max(now - self.start, 1e-9)
        left = (self.total - self.count) / rate if rate else 0.0
        share = self.count / self.total if self.total else 1.0
        bar = "#" * int(20 * share)
        self.stream.write(f"\r{self.desc}: {share:4.0%} [{bar:<20}] {self.count}/{self.total} {self.unit}s "
                          f"{rate:.1f}/s, {left:.0f} s left\x1b[K")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.drawn:
            self.stream.write("\n")
            self.stream.flush()
