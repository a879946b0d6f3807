"""Time as the pipeline reads and writes it.

Inside the pipeline every time is naive UTC, the convention of our own tables.
The shop's tables are another matter: Laravel writes naive wall-clock times in
the application's zone (``APP_TIMEZONE``), and a PostgreSQL ``timestamptz``
column hands back aware times. :func:`from_shop` turns either into naive UTC
before anything compares it, and :func:`to_shop` turns our times back into the
shop's zone and type before they are bound into a statement on its tables.
:func:`parse_retry_after` reads the time a provider or a receiver asks us to wait
(both the gateway and the webhook publisher honour it).
"""

from __future__ import annotations

import datetime as dt
import email.utils
import math
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones


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


# Files of the zone database that are not zones a shop runs in: the host's own setting,
# the template of POSIX rules, and the "no zone set" placeholder.
_NOT_SHOP_ZONES = frozenset({"localtime", "posixrules", "Factory"})


@lru_cache(maxsize=32)
def shop_zone(name: str) -> ZoneInfo:
    """The IANA zone ``name`` (``Asia/Kolkata``), or a ValueError naming it.

    Only the zone database's own names: not a folder (``America``), not a file name such as
    ``localtime`` that means whatever the host says, not ``posix/...`` or ``right/...`` copies.
    """
    known = name in available_timezones() and name not in _NOT_SHOP_ZONES
    if known and not name.startswith(("posix/", "right/")):
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            pass
    raise ValueError(f"{name!r} is not an IANA time zone name (e.g. UTC, Europe/Berlin)")


def from_shop(value, zone: ZoneInfo) -> dt.datetime | None:
    """A time read from the shop's tables, as naive UTC.

    An aware value (``timestamptz``) carries its own offset. A naive one is a wall
    clock time in ``zone``; one the clock showed twice (the autumn hour) or never
    (the spring hour) is read as the latest instant it can mean, so a payment never
    looks older than it is and its grace period is never cut short.
    """
    value = to_datetime(value)
    if value is None or value.tzinfo is not None:
        return None if value is None else as_naive_utc(value)
    return max(as_naive_utc(value.replace(tzinfo=zone, fold=fold)) for fold in (0, 1))


def to_shop(value: dt.datetime, zone: ZoneInfo, *, aware: bool) -> dt.datetime:
    """Naive UTC ``value`` as the shop's column stores it: aware UTC, or naive wall time in ``zone``."""
    instant = value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value
    return instant.astimezone(dt.UTC) if aware else instant.astimezone(zone).replace(tzinfo=None)


def parse_retry_after(value: str | None, now: dt.datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date; None if absent or invalid."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        now = now or dt.datetime.now(dt.UTC)
        if now.tzinfo is None:
            now = now.replace(tzinfo=dt.UTC)
        return max((when - now).total_seconds(), 0.0)
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(seconds, 0.0)
