"""Retention: call records and events are kept 13 months from creation, then deleted daily;
all customer content is purged 30 days after the cloud reports the subscription ended.

Pure date arithmetic here; the daily task lives in the sync service."""

from __future__ import annotations

import calendar
import datetime

RETENTION_MONTHS = 13
PURGE_AFTER_S = 30 * 86400.0


def retention_cutoff(now: float, months: int = RETENTION_MONTHS) -> float:
    """The instant ``months`` calendar months before ``now`` (UTC); older content expires.

    The day is clamped to the target month's length (31 March minus one month is 28/29 Feb).
    """
    moment = datetime.datetime.fromtimestamp(now, datetime.UTC)
    month_index = moment.year * 12 + (moment.month - 1) - months
    year, month = divmod(month_index, 12)
    day = min(moment.day, calendar.monthrange(year, month + 1)[1])
    return moment.replace(year=year, month=month + 1, day=day).timestamp()


def purge_due_at(ended_at: float) -> float:
    return ended_at + PURGE_AFTER_S
