"""Errors of the data layer.

:class:`DataError` is raised for a dataset on disk that cannot be read as it should: a
missing or corrupt file, a malformed line, a split file naming frames that do not exist.
Its message names the file (and the line where there is one) and the problem, so that a
broken file among thousands is found at once. It is a :class:`~distill3d.errors.Distill3DError`
(the CLI prints it as one line, without a traceback) and a :class:`ValueError` (code that
catches the ``ValueError`` of the low-level readers keeps working).
"""

from __future__ import annotations

from distill3d.errors import Distill3DError

__all__ = ["DataError"]


class DataError(Distill3DError, ValueError):
    """A dataset file is missing, truncated, corrupt or inconsistent; the message says
    which file (and line) and what is wrong."""
