"""When a scheduled drill is due: the maintenance window and the interval, pure.

A window is days and a local time range: 'Sun 02:00-04:00', 'Mon-Fri 22:00-23:30',
'Sat,Sun 01:00-02:00', 'daily 03:00-03:30'. A range that ends before it starts runs past
midnight ('Sat 23:00-01:00' is Saturday 23:00 to Sunday 01:00).
"""

from __future__ import annotations

import dataclasses
import datetime
import re

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_RANGE = re.compile(r"^(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})$")


@dataclasses.dataclass(frozen=True, slots=True)
class Window:
    days: frozenset[int]
    """Weekdays the window starts on (0 = Monday)."""
    start_min: int
    end_min: int

    def contains(self, moment: datetime.datetime) -> bool:
        minute = moment.hour * 60 + moment.minute
        day = moment.weekday()
        if self.start_min < self.end_min:
            return day in self.days and self.start_min <= minute < self.end_min
        # past midnight: the start day's late part, or the next day's early part
        return (day in self.days and minute >= self.start_min) or (
            (day - 1) % 7 in self.days and minute < self.end_min)

    def next_start(self, after: datetime.datetime) -> datetime.datetime:
        base = after.replace(second=0, microsecond=0)
        for offset in range(8):
            day = base + datetime.timedelta(days=offset)
            start = day.replace(hour=self.start_min // 60, minute=self.start_min % 60)
            if day.weekday() in self.days and start > after:
                return start
        raise AssertionError("a window has at least one day")


def parse_window(text: str) -> Window:
    parts = text.strip().lower().split()
    if len(parts) != 2:
        raise ValueError(f"{text!r}: write days and a time range, e.g. 'Sun 02:00-04:00'")
    days_text, range_text = parts
    match = _RANGE.match(range_text)
    if not match:
        raise ValueError(f"{range_text!r} is not a time range like 02:00-04:00")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    if h1 > 23 or h2 > 23 or m1 > 59 or m2 > 59 or (h1, m1) == (h2, m2):
        raise ValueError(f"{range_text!r} is not a time range like 02:00-04:00")
    days: set[int] = set()
    for item in days_text.split(","):
        if item in ("daily", "*"):
            days.update(range(7))
        elif "-" in item:
            first, last = item.split("-", 1)
            if first[:3] not in DAYS or last[:3] not in DAYS:
                raise ValueError(f"{item!r}: days are Mon..Sun")
            a, b = DAYS.index(first[:3]), DAYS.index(last[:3])
            days.update(range(a, b + 1) if a <= b else [*range(a, 7), *range(0, b + 1)])
        elif item[:3] in DAYS:
            days.add(DAYS.index(item[:3]))
        else:
            raise ValueError(f"{item!r}: days are Mon..Sun (or 'daily')")
    return Window(frozenset(days), h1 * 60 + m1, h2 * 60 + m2)


def due(window: Window | None, *, now: datetime.datetime, last_started: float | None,
        every_days: float) -> tuple[bool, str]:
    """(run a scheduled drill now?, why)."""
    if window is None:
        return False, "no maintenance window configured (drill.window)"
    if not window.contains(now):
        return False, f"outside the maintenance window (next: " \
            f"{window.next_start(now):%a %Y-%m-%d %H:%M})"
    if last_started is not None:
        age_days = (now.timestamp() - last_started) / 86400
        if age_days < every_days:
            return False, f"the last drill ran {age_days:.1f} days ago (every " \
                f"{every_days:g} days)"
    return True, "inside the maintenance window and due"
