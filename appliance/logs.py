"""Logging to stderr; under journald (JOURNAL_STREAM set) no timestamps of our own, and a
syslog priority prefix so the journal keeps each line's severity."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
             logging.CRITICAL: 2}


class _JournaldFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno, 6)
        return f"<{priority}>{super().format(record)}"


def under_journald(environ: Mapping[str, str], stream=None) -> bool:
    """True when stderr is the journal stream systemd gave us (not merely inherited)."""
    stream = sys.stderr if stream is None else stream
    value = environ.get("JOURNAL_STREAM")
    if not value:
        return False
    try:
        device, inode = (int(part) for part in value.split(":"))
        stat = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (stat.st_dev, stat.st_ino) == (device, inode)


def setup_logging(level: str, environ: Mapping[str, str] | None = None) -> None:
    environ = os.environ if environ is None else environ
    handler = logging.StreamHandler(sys.stderr)
    if under_journald(environ):
        handler.setFormatter(_JournaldFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
