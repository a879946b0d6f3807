"""How MariaDB/MySQL ``TIMESTAMP`` columns are read, checked against the mapping's zone.

A ``TIMESTAMP`` column stores an instant (UTC) and shows it in the *reading* session's
``time_zone``, whatever zone the application's session wrote it in. So for those columns
the right ``timezone`` in the mapping is the zone of our own session (the server's
``time_zone``, ``SYSTEM`` by default), not the application's ``APP_TIMEZONE``. When the two
differ, every payment is misdated by the difference: a mapping zone east of the session's
makes payments look older than they are and cuts the grace period short (refused); one
west of it only delays fixes (warned). ``DATETIME`` columns store wall time as written and
are not concerned. Read-only; one query, no table scan.
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from regularization_pipeline.core.clock import shop_zone, utcnow
from regularization_pipeline.core.shop.binding import AppSchema

# Offsets closer than this are the same zone (NOW() and UTC_TIMESTAMP() are read together).
_SAME_OFFSET = dt.timedelta(minutes=1)


def timestamp_columns(conn: sa.Connection, s: AppSchema) -> list[str]:
    """``table.column`` of the mapped time columns declared ``TIMESTAMP`` on MariaDB/MySQL."""
    if conn.dialect.name not in ("mysql", "mariadb"):
        return []
    m = s.mapping
    mapped = {
        m.orders.table: {m.orders.created_at, m.orders.updated_at, m.orders.deleted_at},
        m.transactions.table: {m.transactions.completed_at, m.transactions.updated_at},
    }
    inspector, found = sa.inspect(conn), []
    for table, columns in mapped.items():
        wanted = {c.lower() for c in columns if c}
        for col in inspector.get_columns(table):
            if col["name"].lower() in wanted and type(col["type"]).__name__.upper() == "TIMESTAMP":
                found.append(f"{table}.{col['name']}")
    return sorted(found)


def session_offset(conn: sa.Connection) -> dt.timedelta:
    """The UTC offset our MariaDB/MySQL session shows times in, right now."""
    seconds = conn.exec_driver_sql("SELECT TIMESTAMPDIFF(SECOND, UTC_TIMESTAMP(), NOW())").scalar()
    return dt.timedelta(minutes=round(int(seconds) / 60))


def timestamp_zone_findings(
    conn: sa.Connection, s: AppSchema, now: dt.datetime | None = None
) -> tuple[list[str], list[str]]:
    """(refusals, warnings) about ``TIMESTAMP`` columns read under this session's zone."""
    columns = timestamp_columns(conn, s)
    if not columns:
        return [], []
    now = now or utcnow()
    ours = session_offset(conn)
    zone = s.mapping.timezone
    mapped = shop_zone(zone).utcoffset(now.replace(tzinfo=dt.UTC).astimezone(shop_zone(zone)))
    if abs(mapped - ours) < _SAME_OFFSET:
        return [], []
    names, hours = ", ".join(columns), f"{abs(mapped - ours).total_seconds() / 3600:.1f} h"
    shown = f"this session shows TIMESTAMP columns ({names}) at UTC{_offset(ours)}"
    if mapped > ours:
        return [
            f"{shown}, but timezone {zone} is UTC{_offset(mapped)}: payments would look {hours} "
            "older than they are and the grace period would be cut short; set timezone to the "
            "server's time_zone or the column type to DATETIME"
        ], []
    return [], [
        f"{shown}, but timezone {zone} is UTC{_offset(mapped)}: payments look {hours} younger "
        "than they are and are fixed late; set timezone to the server's time_zone"
    ]


def _offset(delta: dt.timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
