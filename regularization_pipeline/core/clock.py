"""Time as the pipeline reads and writes it: naive UTC, the convention of our own tables."""

from __future__ import annotations

import datetime as dt


def utcnow() -> dt.datetime:
    """Naive UTC, the convention of every timestamp the pipeline reads or writes."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def as_naive_utc(value: dt.datetime) -> dt.datetime:
    """``value`` as naive UTC: an aware time is converted, a naive one is taken as UTC already."""
    return value.astimezone(dt.UTC).replace(tzinfo=None) if value.tzinfo else value


def to_datetime(value) -> dt.datetime | None:
    """A database's time value as a datetime (SQLite hands aggregates of DATETIME columns back as text)."""
    if value is None or isinstance(value, dt.datetime):
        return value
    return dt.datetime.fromisoformat(str(value))
