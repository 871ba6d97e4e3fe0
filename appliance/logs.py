"""Logging to stderr; under journald (JOURNAL_STREAM set) no timestamps of our own, and a
syslog priority prefix so the journal keeps each line's severity. Warnings and errors that
repeat (the same logger and message, whatever its arguments) are rate-limited, so a flood of
hostile input or a resource running out cannot flood the journal."""

from __future__ import annotations

import collections
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


class RepeatLimiter(logging.Filter):
    """Let through at most ``burst`` warnings or errors with the same logger and message
    template per ``interval_s``; the first one after a quiet spell says how many were held
    back. Records below WARNING pass untouched."""

    def __init__(self, *, burst: int = 3, interval_s: float = 10.0,
                 max_keys: int = 1024) -> None:
        super().__init__()
        self.burst = burst
        self.interval_s = interval_s
        self.max_keys = max_keys
        self._windows: collections.OrderedDict[tuple, list] = collections.OrderedDict()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.levelno, str(record.msg).partition("\n")[0])
        window = self._windows.get(key)
        now = record.created
        if window is None or now - window[0] >= self.interval_s:
            held = window[2] if window is not None else 0
            self._windows[key] = [now, 1, 0]
            self._windows.move_to_end(key)
            while len(self._windows) > self.max_keys:
                self._windows.popitem(last=False)
            if held:
                record.msg = f"{record.msg} ({held} more like this held back in the last " \
                             f"{self.interval_s:g} s)"
            return True
        window[1] += 1
        if window[1] <= self.burst:
            return True
        window[2] += 1
        return False


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
    handler.addFilter(RepeatLimiter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
