"""Errors a user can fix (a file, flag, model, value or missing optional package), apart from bugs in spayolo.

The ``spayolo`` command prints these as one line and exits 2 (``--debug`` or ``SPAYOLO_DEBUG=1`` adds the
traceback); anything else is a bug and keeps its traceback. Each class also derives from the built-in type that
library users already catch (``ValueError``, ``FileNotFoundError``, ...).
"""

from __future__ import annotations

__all__ = ("CheckpointError", "MissingDependencyError", "MissingFileError", "OutputExistsError", "SpayoloError",
           "UsageError")


class SpayoloError(Exception):
    """Base of the errors that name something the user gave (file, flag, model, value) and say what to do."""


class UsageError(SpayoloError, ValueError):
    """A value, flag, model or file that spayolo refuses."""


class MissingFileError(SpayoloError, FileNotFoundError):
    """A file or folder the user named that does not exist."""


class OutputExistsError(SpayoloError, FileExistsError):
    """An output that exists and would be replaced without being asked to."""


class MissingDependencyError(SpayoloError, ImportError):
    """An optional package a command needs and that this install lacks; the message says what to install."""


class CheckpointError(UsageError):
    """A model file that cannot be used: unreadable, refused by restricted loading, or not the model it must be."""
