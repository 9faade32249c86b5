"""Exceptions with messages a user can act on: what file, which line, what was expected, what was found."""

from __future__ import annotations

from pathlib import Path


class FashionlensError(Exception):
    """Base class of every error fashionlens raises on purpose."""


class DataError(FashionlensError):
    """Bad dataset input: a missing or unreadable image, a malformed annotation line, an unknown label.

    The message always starts with ``file:line:`` (or ``file:``) so a user can jump to the problem.
    """

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None):
        self.path = None if path is None else str(path)
        self.line = line
        self.reason = message
        where = ""
        if self.path is not None:
            where = f"{self.path}:{line}: " if line is not None else f"{self.path}: "
        super().__init__(where + message)


class ModelDirError(FashionlensError):
    """A model directory is missing a file, holds a corrupt one, or its weights do not match its config."""
