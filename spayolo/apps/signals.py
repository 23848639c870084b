"""Ctrl-C and SIGTERM as one clean stop of a run, held while a frame's outputs are written."""

from __future__ import annotations

import contextlib
import signal

__all__ = ("StopSignals", "Stopped")


class Stopped(KeyboardInterrupt):
    """SIGTERM turned into the same clean stop as Ctrl-C (timeout, kill and docker stop send it)."""


class StopSignals:
    """Ctrl-C and SIGTERM stop the run at once, except while a frame's outputs are being written: then right after.

    A stop between writing a frame's JSON line and its video frame would leave the two files a frame apart.
    """

    def __init__(self):
        self.writing, self.pending, self.previous = False, None, {}

    def __enter__(self) -> StopSignals:
        # a signal the parent set to be ignored (a shell's `&` does so for Ctrl-C) stays ignored
        self.previous = {s: signal.signal(s, self._handler) for s in (signal.SIGINT, signal.SIGTERM)
                         if signal.getsignal(s) is not signal.SIG_IGN}
        return self

    def __exit__(self, *exc) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)

    def _handler(self, signum, frame) -> None:
        if self.writing:
            self.pending = signum
        else:
            self._stop(signum)

    @staticmethod
    def _stop(signum: int) -> None:
        raise Stopped if signum == signal.SIGTERM else KeyboardInterrupt

    @contextlib.contextmanager
    def deferred(self):
        """Hold a stop until the block is done."""
        self.writing = True
        try:
            yield
        finally:
            self.writing = False
        if self.pending is not None:
            self._stop(self.pending)
