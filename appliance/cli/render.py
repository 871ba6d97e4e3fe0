"""Output helpers: tables that fit the terminal (80 columns by default), durations, times."""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Sequence
from typing import Any


def terminal_width() -> int:
    return max(60, shutil.get_terminal_size((80, 24)).columns)


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *,
          width: int | None = None) -> str:
    """A plain table; the last column is shortened with '…' so lines fit ``width``."""
    width = width or terminal_width()
    cells = [[_cell(value) for value in row] for row in rows]
    columns = len(headers)
    widths = [len(h) for h in headers]
    for row in cells:
        for index, value in enumerate(row):
            widths[index] = max(widths[index], len(value))
    fixed = sum(widths[:-1]) + 2 * (columns - 1)
    widths[-1] = max(len(headers[-1]), min(widths[-1], width - fixed))
    lines = [_line(headers, widths)]
    lines += [_line(row, widths) for row in cells]
    return "\n".join(line[:width] if len(line) > width else line for line in lines)


def shorten_left(text: str, width: int) -> str:
    """Keep the end of a long path, which is the part that tells files apart."""
    return text if len(text) <= width else "…" + text[-(width - 1):]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return " ".join(str(value).split())


def _line(values: Sequence[str], widths: Sequence[int]) -> str:
    parts = []
    for index, (value, size) in enumerate(zip(values, widths, strict=True)):
        if len(value) > size:
            value = value[: max(0, size - 1)] + "…"
        parts.append(value if index == len(widths) - 1 else value.ljust(size))
    return "  ".join(parts).rstrip()


def duration(seconds: float | None) -> str:
    """Compact human duration: 45s, 3m12s, 5h03m, 2d04h."""
    if seconds is None:
        return "-"
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def clock(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """'90s', '10m', '1h30m', '2d' -> seconds. Raises ValueError with a usable message."""
    text = text.strip().lower()
    if not text:
        raise ValueError("empty duration")
    if text.replace(".", "", 1).isdigit():
        return float(text)
    total, number = 0.0, ""
    for char in text:
        if char.isdigit() or char == ".":
            number += char
        elif char in UNITS and number:
            total += float(number) * UNITS[char]
            number = ""
        else:
            raise ValueError(f"{text!r} is not a duration; use e.g. 90s, 10m, 1h30m, 2d")
    if number:
        raise ValueError(f"{text!r} is not a duration; end it with a unit (s, m, h, d, w)")
    return total
