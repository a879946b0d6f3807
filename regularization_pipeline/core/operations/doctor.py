"""``doctor``: what a person needs to know before switching the schedule on. Read-only.

It reads the shop through the mapping and says how the mapping classifies every
status the tables hold, which combinations would make a run act wrongly
(refused, with the reason), which recommended indexes are missing (with the
statement that creates each), what the server can do, whether the configured
time zone is plausible, what a run would do now, and the index and grant statements
for the mapped names (and every repaired column). The CLI prints the report;
the UI's ``doctor`` job logs it. Nothing here writes.
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from regularization_pipeline.core.clock import utcnow
from regularization_pipeline.core.detection import orphans as d
from regularization_pipeline.core.detection.scans import inconsistency_report
from regularization_pipeline.core.detection.shop_rules import (
    completed_status_findings,
    repaired_status_refusal,
)
from regularization_pipeline.core.operations.doctor_columns import other_order_columns, value_counts
from regularization_pipeline.core.operations.doctor_report import DoctorReport
from regularization_pipeline.core.operations.statements import recommended_indexes, statement_lines
from regularization_pipeline.core.shop import tables as tb
from regularization_pipeline.core.shop.binding import AppSchema
from regularization_pipeline.core.shop.engine import server_version, skip_locked_refusal
from regularization_pipeline.core.shop.mapping_rules import (
    CLOSING,
    FAILING,
    HELD_NOT_CAPTURED,
    HELD_WORDS,
    PAYING,
    looks_like,
)
from regularization_pipeline.core.shop.session_zone import timestamp_zone_findings

PENDING, REPAIRED, DO_NOT_TOUCH, COMPLETED, IGNORED = (
    "pending",
    "repaired-to",
    "do-not-touch",
    "completed",
    "ignored",
)
FUTURE_TOLERANCE = dt.timedelta(minutes=5)
STALE_AFTER = dt.timedelta(hours=1)


def diagnose(
    conn: sa.Connection, schema: AppSchema, now: dt.datetime | None = None
) -> DoctorReport:
    """The whole report, read in ``conn`` (one connection: SQLite's would lock each other out).

    ``now`` is naive UTC, the clock by default.
    """
    now = now or utcnow()
    report = DoctorReport(now=now)
    _server(report, conn, schema)
    _order_statuses(report, conn, schema)
    other_order_columns(report, conn, schema)
    _transaction_statuses(report, conn, schema)
    _indexes(report, conn, schema)
    _time_zone(report, conn, schema, now)
    _what_a_run_would_do(report, conn, schema, now)
    report._section("what a flip checks and writes").extend(flip_in_words(schema))
    report._section("statements for this mapping").extend(statement_lines(conn, schema))
    return report


# --- the server -------------------------------------------------------------------------


def _server(report: DoctorReport, conn: sa.Connection, s: AppSchema) -> None:
    lines = report._section("server")
    version = server_version(conn)
    lines.append(f"{conn.dialect.name} {version}")
    if conn.dialect.name in ("mysql", "mariadb"):
        refusal = skip_locked_refusal(version)
        if refusal:
            report._refuse(lines, refusal)
        else:
            lines.append("SKIP LOCKED: yes")
        _collations(lines, conn, s)
    elif conn.dialect.name == "postgresql":
        lines.append("SKIP LOCKED: yes")
        zone = conn.exec_driver_sql("SHOW TimeZone").scalar_one()
        lines.append(f"session TimeZone: {zone} (pinned by the pipeline)")
    else:
        lines.append("SKIP LOCKED: no (SQLite: a run holds the database's write lock instead)")


def _collations(lines: list[str], conn: sa.Connection, s: AppSchema) -> None:
    database, connection = conn.exec_driver_sql(
        "SELECT @@collation_database, @@collation_connection"
    ).one()
    lines.append(f"collation: database {database}, session {connection}")
    ours = tb.owned_tables(s.mapping.table_prefix).attempts.name
    names = [s.mapping.orders.table, s.mapping.transactions.table, ours]
    rows = conn.execute(
        sa.text(
            "SELECT table_name, table_collation FROM information_schema.tables "
            "WHERE table_schema = DATABASE() AND table_name IN :names"
        ).bindparams(sa.bindparam("names", expanding=True)),
        {"names": names},
    ).all()
    for name, collation in sorted(rows):
        lines.append(f"collation of {name}: {collation}")


# --- statuses ---------------------------------------------------------------------------


def _order_statuses(report: DoctorReport, conn: sa.Connection, s: AppSchema) -> None:
    lines, st = report._section("order statuses"), s.statuses
    found = value_counts(conn, s.o("status"))
    for value, count in found:
        if value in st.order_pending:
            kind = PENDING
        elif value == st.order_completed:
            kind = REPAIRED
        elif value in st.order_do_not_touch:
            kind = DO_NOT_TOUCH
        else:
            kind = IGNORED
        lines.append(f"{value!r}: {count} order(s), {kind}")
        meaning = looks_like(value) if kind == IGNORED else None
        if meaning in CLOSING:
            report._warn(
                lines,
                f"order status {value!r} looks like {meaning} but is not in "
                "statuses.order_do_not_touch: a completed payment on it goes unreported",
            )
        elif meaning:
            lines.append(f"  note: {value!r} looks like {meaning}; orders in it are left alone")
    # Words that contradict their role were refused with the mapping (shop/mapping_rules.py);
    # what the rows tell is the one check every run makes too (detection/shop_rules.py).
    refusal = repaired_status_refusal(conn, s)
    if refusal:
        report._refuse(lines, refusal)


def _transaction_statuses(report: DoctorReport, conn: sa.Connection, s: AppSchema) -> None:
    lines, completed = report._section("transaction statuses"), s.statuses.transaction_completed
    found = dict(value_counts(conn, s.t("status")))
    for value, count in found.items():
        kind = COMPLETED if value in completed else IGNORED
        lines.append(f"{value!r}: {count} transaction(s), {kind}")
        if HELD_NOT_CAPTURED.search(value):
            if kind == IGNORED:
                lines.append(f"  note: {value!r} reads as {HELD_WORDS}")
            continue
        meaning = looks_like(value, PAYING) if kind == IGNORED else None
        if meaning and not FAILING.search(value):
            report._warn(
                lines,
                f"transaction status {value!r} looks like {meaning} but is not in "
                "statuses.transaction_completed: its orders are never found",
            )
    refusals, warnings = completed_status_findings(conn, s)
    for text in refusals:
        report._refuse(lines, text)
    for text in warnings:
        report._warn(lines, text)


# --- the other columns of the orders table ----------------------------------------------


def flip_in_words(s: AppSchema) -> list[str]:
    """The compare-and-set in words: which orders it may move, and every column it writes."""
    m = s.mapping
    o, guards = m.orders, m.guards
    lines = [f"only orders with {o.status} in {list(m.statuses.order_pending)}"]
    lines += [f"  and {c.describe()}" for c in guards.require]
    lines += [f"  and not {c.describe()}" for c in guards.do_not_touch]
    lines.append(f"sets {o.status} = {m.statuses.order_completed!r}")
    if o.updated_at:
        lines.append(f"sets {o.updated_at} = the current time")
    lines += [f"sets {column} = {repair.describe()}" for column, repair in m.repairs.items()]
    return lines


# --- indexes ----------------------------------------------------------------------------


def _indexes(report: DoctorReport, conn: sa.Connection, s: AppSchema) -> None:
    lines, inspector = report._section("recommended indexes"), sa.inspect(conn)
    quote = conn.dialect.identifier_preparer.quote
    for name, table, columns in recommended_indexes(s):
        existing = [
            [c.lower() for c in index["column_names"] if c]
            for index in inspector.get_indexes(table)
        ]
        wanted = [c.lower() for c in columns]
        on = f"{table} ({', '.join(columns)})"
        if any(index[: len(wanted)] == wanted for index in existing):
            lines.append(f"present: {on}")
            continue
        statement = (
            f"CREATE INDEX {quote(name)} ON {quote(table)} ({', '.join(map(quote, columns))});"
        )
        report._warn(lines, f"missing: {on}; create it with: {statement}")


# --- time zone --------------------------------------------------------------------------


def _time_zone(report: DoctorReport, conn: sa.Connection, s: AppSchema, now: dt.datetime) -> None:
    lines = report._section("time zone")
    aware = sorted(f"{table}.{column}" for table, column in s.aware_columns)
    lines.append(
        f"timezone: {s.mapping.timezone} (naive columns)"
        + (f"; with a zone of their own: {', '.join(aware)}" if aware else "")
    )
    refusals, warnings = timestamp_zone_findings(conn, s, now)
    for text in refusals:
        report._refuse(lines, text)
    for text in warnings:
        report._warn(lines, text)
    column = s.t("updated_at")
    newest = s.read_time(conn.execute(sa.select(sa.func.max(column))).scalar())
    if newest is None:
        lines.append("no transaction yet: nothing to check the zone against")
        return
    ahead = newest - now
    lines.append(f"newest transaction {column.name}: {newest:%Y-%m-%d %H:%M} UTC")
    # A zone east of the columns' real one makes payments look older than they are: the
    # grace period is cut short. But a shop that took no payment for an hour looks the same,
    # so this is a warning (a refusal here would stop every run on a quiet night); the zone
    # refusals that need no guess are the session zone's (shop/session_zone.py), above.
    # A zone west of it makes payments look younger: fixes are only delayed. Warned.
    if -ahead > STALE_AFTER:
        report._warn(
            lines,
            f"the newest transaction is {_hours(-ahead)} old under timezone "
            f"{s.mapping.timezone}: if the shop took payments since, the columns are in a "
            "zone west of it; payments would look older than they are and the grace period "
            "would be cut short",
        )
    elif ahead > FUTURE_TOLERANCE:
        report._warn(
            lines,
            f"the newest transaction is {_hours(ahead)} in the future under timezone "
            f"{s.mapping.timezone}: the columns are in a zone east of it; payments look "
            "younger than they are and are fixed late",
        )


def _hours(delta: dt.timedelta) -> str:
    return f"{delta.total_seconds() / 3600:.1f} h"


# --- what a run would do ----------------------------------------------------------------


def _what_a_run_would_do(
    report: DoctorReport, conn: sa.Connection, s: AppSchema, now: dt.datetime
) -> None:
    lines = report._section("what a run would do now (default options)")
    window = d.ScanWindow(now=now)
    orphans = conn.execute(
        sa.select(sa.func.count()).where(d.orphan_condition(s, window))
    ).scalar_one()
    fixable = conn.execute(
        sa.select(sa.func.count()).where(d.regularizable_condition(s, window))
    ).scalar_one()
    recent = d.ScanWindow(
        now=now,
        min_age_minutes=0,
        since=window.not_after + dt.timedelta(microseconds=1),
    )
    waiting = conn.execute(
        sa.select(sa.func.count()).where(d.orphan_condition(s, recent))
    ).scalar_one()
    lines.append(f"orphans: {orphans}, of which fixable: {fixable}")
    held = inconsistency_report(conn, s, sample_size=0)
    for kind, count in held.counts.items():
        if count:
            lines.append(f"held, reported and never fixed: {kind}: {count}")
    at = tb.owned_tables(s.mapping.table_prefix).attempts
    if not sa.inspect(conn).has_table(at.name):
        report._warn(
            lines,
            "the pipeline's own tables are missing: run `regularize-completed-orders migrate`",
        )
    else:
        quarantined = conn.execute(
            sa.select(sa.func.count()).where(at.c.quarantined_at.is_not(None))
        ).scalar_one()
        lines.append(f"held, quarantined after failures: {quarantined}")
    lines.append(
        f"recent payments left to their webhook (last {d.DEFAULT_MIN_AGE_MINUTES} min): {waiting}"
    )
