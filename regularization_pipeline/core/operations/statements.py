"""The SQL an owner runs before the first run, written for the mapped names: indexes and grants.

docs/sql/grants.*.sql take Laravel's names by default; on another shop every table and
column differs, and a repaired column needs its own UPDATE grant. ``doctor`` prints
these statements for the server it reads (PostgreSQL or MariaDB/MySQL), quoted by the
server's own rules, so they can be pasted as they are. Nothing here runs them.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql

from regularization_pipeline.core.shop import tables as tb
from regularization_pipeline.core.shop.binding import AppSchema

DEFAULT_ROLE = "regularization_pipeline"
_DIALECTS = {"postgresql": postgresql.dialect(), "mysql": mysql.dialect()}


def _family(dialect_name: str) -> str:
    return "mysql" if dialect_name in ("mysql", "mariadb") else dialect_name


def recommended_indexes(s: AppSchema) -> list[tuple[str, str, list[str]]]:
    """(index name, table, columns) of the indexes docs/schema.md recommends, for the mapped names."""
    o, t, links = s.mapping.orders, s.mapping.transactions, s.mapping.payment_links
    paid_at = t.completed_at or t.updated_at
    # Payments completed by a column being set are found by that column.
    status = t.status or s.mapping.payment_rows.completed_when_set
    by_order = (
        (f"ix_{t.table}_order_status", t.table, [t.order_id, status])
        if links is None
        else (f"ix_{links.table}_order_payment", links.table, [links.order_id, links.payment_id])
    )
    return [
        (f"ix_{o.table}_status_id", o.table, [o.status, o.id]),
        by_order,
        (f"ix_{t.table}_status_paid_at", t.table, list(dict.fromkeys([status, paid_at]))),
    ]


def index_statements(s: AppSchema, dialect_name: str) -> list[str]:
    """``CREATE INDEX`` for each recommended index; PostgreSQL's build without blocking writes."""
    family = _family(dialect_name)
    quote = _DIALECTS[family].identifier_preparer.quote
    how = "CONCURRENTLY IF NOT EXISTS" if family == "postgresql" else "IF NOT EXISTS"
    return [
        f"CREATE INDEX {how} {quote(name)} ON {quote(table)} ({', '.join(map(quote, columns))});"
        for name, table, columns in recommended_indexes(s)
    ]


def written_order_columns(s: AppSchema) -> list[str]:
    """Every column of the orders table the flip writes: the status, updated_at, the repairs."""
    o = s.mapping.orders
    return [o.status, *([o.updated_at] if o.updated_at else []), *s.mapping.repairs]


def grant_statements(s: AppSchema, dialect_name: str, role: str = DEFAULT_ROLE) -> list[str]:
    """The least-privilege grants of docs/sql/grants.*.sql for the mapped names.

    Read: the payments (and the currency table); read and update only the written columns
    of the orders; our own tables in full; our migration version read only.
    """
    family = _family(dialect_name)
    quote = _DIALECTS[family].identifier_preparer.quote
    m, ours = s.mapping, tb.owned_tables(s.mapping.table_prefix)
    read = [m.transactions.table]
    read += [m.payment_links.table] if m.payment_links else []
    read += [m.currencies.table] if m.currencies else []
    owned = [
        ours.audit.name,
        ours.outbox.name,
        ours.attempts.name,
        ours.deliveries.name,
        ours.inconsistencies.name,
        ours.scan_state.name,
    ]
    written = ", ".join(quote(c) for c in written_order_columns(s))
    version = f"{m.table_prefix}alembic_version"
    if family == "postgresql":
        who = quote(role)
        lines = [
            f"CREATE ROLE {who} LOGIN;  -- once; give it a password or your own authentication",
            f"GRANT SELECT ON {', '.join(map(quote, read))} TO {who};",
            f"GRANT SELECT, UPDATE ({written}) ON {quote(m.orders.table)} TO {who};",
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON {', '.join(map(quote, owned))} TO {who};",
            f"GRANT SELECT ON {quote(version)} TO {who};",
            "GRANT USAGE, SELECT ON SEQUENCE "
            f"{quote(ours.audit.name + '_id_seq')}, {quote(ours.outbox.name + '_id_seq')} TO {who};",
        ]
        return lines
    who = "'" + role.replace("\\", "\\\\").replace("'", "''") + "'@'%'"
    lines = [f"CREATE USER IF NOT EXISTS {who};"]
    lines += [f"GRANT SELECT ON {quote(table)} TO {who};" for table in read]
    lines.append(f"GRANT SELECT, UPDATE ({written}) ON {quote(m.orders.table)} TO {who};")
    lines += [f"GRANT SELECT, INSERT, UPDATE, DELETE ON {quote(t)} TO {who};" for t in owned]
    lines.append(f"GRANT SELECT ON {quote(version)} TO {who};")
    return lines


def statement_lines(conn: sa.Connection, s: AppSchema) -> list[str]:
    """What doctor prints: the statements for the server ``conn`` reads, or why there are none."""
    family = _family(conn.dialect.name)
    if family not in _DIALECTS:
        return [f"none for {conn.dialect.name}: indexes and grants are for PostgreSQL and MariaDB"]
    where = "the shop's database, as its owner, after `regularize-completed-orders migrate`"
    return [
        f"run on {where}:",
        *index_statements(s, family),
        *grant_statements(s, family),
    ]
