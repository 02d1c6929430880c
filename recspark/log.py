"""The one logger of recspark: ``[recspark] <message>`` lines on stderr, level set by the CLI's
``--log-level`` (default INFO).

Stage progress, retries and resumptions go through it, so that a scheduler's log shows them
and ``--log-level WARNING`` silences them. Results (a stage's JSON summary) stay on stdout.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

NAME = "recspark"
FORMAT = "[recspark] %(message)s"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the record (pytest's capture, a
    notebook's redirection), not to the stream that was current when logging was set up."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _: TextIO) -> None:
        pass


def get_logger(name: str | None = None) -> logging.Logger:
    """The ``recspark`` logger (or a child, e.g. ``recspark.ingest``), with its stderr handler
    installed once at INFO."""
    root = logging.getLogger(NAME)
    if not any(isinstance(h, _CurrentStderr) for h in root.handlers):
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False
    return root if name is None else root.getChild(name)


def set_level(level: str) -> None:
    """Set the level of every recspark logger (one of :data:`LEVELS`)."""
    get_logger().setLevel(level.upper())
