"""doctor's reading of the orders table beyond the mapped status: every other status-like column
with its values, every date column named like a closing, and what the guards let through. A
value that says the order is over, and that no guard holds, is warned about, and refused when a
run would complete such an order now."""

from __future__ import annotations

import re

import sqlalchemy as sa

from regularization_pipeline.core.detection import orphans as d
from regularization_pipeline.core.operations.doctor_report import DoctorReport
from regularization_pipeline.core.shop.binding import AppSchema
from regularization_pipeline.core.shop.guards import ColumnCondition

# Values of another order column that say the order is over, whatever its payment state says.
CLOSED_ORDER = re.compile(
    r"cancel|abort|void|refund|revers|fraud|charge.?back|expir|draft|abandon|reject|declin", re.I
)


STATUS_LIKE_NAME = re.compile(r"status|state|stage|phase|type|kind", re.I)


CLOSED_NAME = re.compile(r"cancel|void|expired|refund|reject|abandon", re.I)


MAX_VALUES_SHOWN = 20


def _guards_let_through(s: AppSchema, column: str, value) -> bool:
    """Whether an order whose ``column`` holds ``value`` passes the guards on that column."""
    guards, text = s.mapping.guards, None if value is None else str(value)

    def holds(c: ColumnCondition) -> bool:
        if c.is_null is not None:
            return (text is None) == c.is_null
        if text is None:
            return False
        listed = {str(v) for v in (c.in_ if c.in_ is not None else c.not_in)}
        return (text in listed) == (c.in_ is not None)

    required = [c for c in guards.require if c.column == column]
    closing = [c for c in guards.do_not_touch if c.column == column]
    return all(holds(c) for c in required) and not any(holds(c) for c in closing)


def other_order_columns(report: DoctorReport, conn: sa.Connection, s: AppSchema) -> None:
    """Every status-like column of the orders table besides the repaired one, with its values.

    A shop that keeps the order's state apart from its payment state says "canceled" or
    "expired" there while the repaired column still says "not paid": unguarded, such
    orders would be completed. Refused when a run would complete one of them now.
    """
    m = s.mapping
    lines = report._section(f"other status-like columns of {m.orders.table}")
    guarded = set(m.guards.columns)
    # A column guarded by whether it is set (canceled_at) reads as a date, not as words.
    dated = {c.column for c in (*m.guards.require, *m.guards.do_not_touch) if c.is_null is not None}
    shown = 0
    for col in sa.inspect(conn).get_columns(m.orders.table):
        name = col["name"]
        if name.lower() == m.orders.status.lower():
            continue
        is_text = isinstance(col["type"], sa.String)
        if name in dated or (not is_text and CLOSED_NAME.search(name)):
            shown += 1
            _closing_date_column(report, lines, conn, s, name)
        elif name in guarded or (is_text and STATUS_LIKE_NAME.search(name)):
            shown += 1
            _status_like_column(report, lines, conn, s, name)
    if not shown:
        lines.append("none besides the repaired status column")


def _status_like_column(report, lines, conn, s: AppSchema, name: str) -> None:
    column = _orders_column(conn, s, name)
    values = value_counts(conn, column, s.orders)
    words = [c.describe() for c in (*s.mapping.guards.require, *s.mapping.guards.do_not_touch)]
    on_it = [w for w in words if w.split(" ", 1)[0] == name]
    lines.append(f"{name}: " + (f"guarded ({'; '.join(on_it)})" if on_it else "not guarded"))
    for value, count in values[:MAX_VALUES_SHOWN]:
        lines.append(f"  {value!r}: {count} order(s)")
    if len(values) > MAX_VALUES_SHOWN:
        lines.append(f"  ... and {len(values) - MAX_VALUES_SHOWN} more value(s)")
    for (value,) in conn.execute(sa.select(column).select_from(s.orders).distinct()):
        if value is None or not CLOSED_ORDER.search(str(value)):
            continue
        if _guards_let_through(s, name, value):
            _closed_but_flippable(
                report,
                lines,
                conn,
                s,
                f"{s.mapping.orders.table}.{name} holds {str(value)!r}, which reads as a closed "
                "order, and no guard keeps such orders from being flipped (add "
                f"guards.do_not_touch: [{{column: {name}, in: [{value}]}}])",
                column == value,
            )


def _closing_date_column(report, lines, conn, s: AppSchema, name: str) -> None:
    column = _orders_column(conn, s, name)
    is_set = conn.execute(
        sa.select(sa.func.count()).select_from(s.orders).where(column.is_not(None))
    ).scalar_one()
    guarded = not _guards_let_through(s, name, "set")
    lines.append(
        f"{name}: set on {is_set} order(s), "
        + ("guarded (do not touch when set)" if guarded else "not guarded")
    )
    if is_set and not guarded:
        _closed_but_flippable(
            report,
            lines,
            conn,
            s,
            f"{s.mapping.orders.table}.{name} is set on {is_set} order(s) and reads as a closed "
            "order, but no guard keeps such orders from being flipped (add "
            f"guards.do_not_touch: [{{column: {name}, is_null: false}}])",
            column.is_not(None),
        )


def _closed_but_flippable(report, lines, conn, s: AppSchema, text: str, having) -> None:
    """Refused when a run would complete such an order now, a warning while pending orders
    (by their status and every guard) have it, a note when other guards hold them all."""
    window = d.ScanWindow(now=report.now)
    flip, pending = conn.execute(
        sa.select(
            sa.func.count(sa.case((d.regularizable_condition(s, window), 1))),
            sa.func.count(sa.case((sa.and_(*d.order_is_pending(s)), 1))),
        ).where(having)
    ).one()
    if flip:
        report._refuse(lines, f"{text}: a run would complete {flip} such order(s) now")
    elif pending:
        report._warn(lines, f"{text}: {pending} pending order(s) have it")
    else:
        lines.append(f"  note: {text}; today every order with it is held by another guard")


def _orders_column(conn: sa.Connection, s: AppSchema, name: str) -> sa.ColumnElement:
    """A column of the orders table the mapping may not name, qualified so it joins no new FROM."""
    if name in s.orders.c:
        return s.orders.c[name]
    quote = conn.dialect.identifier_preparer.quote
    return sa.literal_column(f"{quote(s.mapping.orders.table)}.{quote(name)}")


def value_counts(
    conn: sa.Connection, column: sa.ColumnElement, table: sa.TableClause | None = None
) -> list[tuple[str, int]]:
    query = sa.select(column, sa.func.count()).group_by(column).order_by(column)
    if table is not None:
        query = query.select_from(table)
    return [(str(value), count) for value, count in conn.execute(query).all()]
