"""The rules a mapping must obey against the shop's own rows: one check for ``doctor`` and runs.

:mod:`~regularization_pipeline.core.shop.mapping_rules` refuses what the status words alone
betray, before a connection is opened. What only the rows can tell is here, read with a few
``EXISTS`` lookups (no table scan on a sound shop) and changing nothing:

- orders sit in the repaired-to status but none of them has a completed payment: in this
  shop it is not what a paid order becomes (a run would move orders into a status that means
  something else);
- not one transaction in any status listed as completed, while some status reads as paid
  (statuses compare exactly, case included: a misspelt word finds no payment); one unused
  word beside used ones, or in a shop whose payments all still wait, is only warned;
- MariaDB/MySQL ``TIMESTAMP`` columns read under a session zone west of the mapping's
  (:mod:`~regularization_pipeline.core.shop.session_zone`): payments would look older than
  they are and the grace period would be cut short.

``doctor`` prints every finding (:func:`shop_findings`); every run and every operator command
that writes calls :func:`require_sound_shop` first and refuses the first one with one line
(exit 2), before the run lock is taken or anything is written.

A newest payment that looks hours old is *not* among the refusals: a quiet shop (a night, a
holiday) looks exactly like a zone east of the columns' real one, and refusing would stop the
schedule there. ``doctor`` warns about it; the refusal that needs no guess is the session
zone's, where the server says how it shows the columns.
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from regularization_pipeline.core.detection import orphans as d
from regularization_pipeline.core.errors import ConfigurationError
from regularization_pipeline.core.shop.binding import AppSchema
from regularization_pipeline.core.shop.mapping_rules import (
    FAILING,
    HELD_NOT_CAPTURED,
    PAYING,
    looks_like,
)
from regularization_pipeline.core.shop.session_zone import timestamp_zone_findings


def exactly(conn: sa.Connection, column: sa.ColumnElement, value: str) -> sa.ColumnElement[bool]:
    """``column = value``, case included, also under a MariaDB/MySQL ``_ci`` collation.

    The plain comparison comes first so an index on the column still narrows the rows;
    PostgreSQL and SQLite compare exactly already."""
    if conn.dialect.name in ("mysql", "mariadb"):
        return sa.and_(column == value, sa.func.binary(column) == value)
    return column == value


def _exists(conn: sa.Connection, table: sa.TableClause, *conds: sa.ColumnElement[bool]) -> bool:
    query = sa.select(sa.literal(1)).select_from(table).where(*conds).limit(1)
    return conn.execute(query).first() is not None


# The repaired orders whose payments are looked up first: any of them paid is the answer.
REPAIRED_SAMPLE = 50


def repaired_status_refusal(conn: sa.Connection, s: AppSchema) -> str | None:
    """Orders are in the repaired-to status and none has a completed payment: refused.

    A few repaired orders' payments are looked up by order first: in a sound shop one of them
    is paid, two index lookups. Only when none is, every repaired order is asked about. (That
    one ``EXISTS`` is what MariaDB may run as a semi-join materializing every completed
    payment: a second on a 200,000-order shop, measured, whenever its statistics chose it.)
    """
    repaired = s.statuses.order_completed
    some = sa.select(s.o("id")).where(exactly(conn, s.o("status"), repaired))
    ids = list(conn.execute(some.limit(REPAIRED_SAMPLE)).scalars())
    if not ids:
        return None  # a new shop, or one whose paid orders all still wait: nothing to compare
    if _exists(conn, s.transactions, s.t("order_id").in_(ids), *d.payment_is_completed(s)):
        return None
    paid = d.exists_payment(s, *d.completed_payment_of_order(s))
    if _exists(conn, s.orders, s.o("status") == repaired, paid):
        return None
    return (
        f"no order in the repaired status {repaired!r} has a completed payment: in this shop "
        "it is not what a paid order becomes"
    )


def completed_status_findings(conn: sa.Connection, s: AppSchema) -> tuple[list[str], list[str]]:
    """(refusals, warnings): statuses listed as completed that no transaction has.

    Refused when not one transaction has any listed status while some status reads as paid (a
    misspelt word: no payment would ever be found); each unused word beside used ones, or in a
    shop whose payments are all pending or failed, is only warned."""
    if not _exists(conn, s.transactions):
        return [], []
    listed = s.statuses.transaction_completed
    unused = [
        v for v in listed if not _exists(conn, s.transactions, exactly(conn, s.t("status"), v))
    ]
    lines = [
        f"transaction status {value!r} is listed as completed but no transaction has it "
        "(statuses compare exactly, case included)"
        for value in unused
    ]
    if len(unused) < len(listed) or not _paid_looking_status(conn, s):
        return [], lines  # synonyms, or a shop whose payments are all still pending or failed
    return lines, []


def _paid_looking_status(conn: sa.Connection, s: AppSchema) -> bool:
    """Whether some transaction status reads as paid (read only when no listed word is used)."""
    found = conn.execute(sa.select(s.t("status")).distinct()).scalars()
    return any(
        looks_like(str(v), PAYING) and not FAILING.search(str(v))
        for v in found
        if v is not None and not HELD_NOT_CAPTURED.search(str(v))
    )


def shop_findings(
    conn: sa.Connection, s: AppSchema, now: dt.datetime | None = None
) -> tuple[list[str], list[str]]:
    """(refusals, warnings) about the mapping read against the shop's rows; read-only."""
    zone_refusals, zone_warnings = timestamp_zone_findings(conn, s, now)
    repaired = repaired_status_refusal(conn, s)
    listed_refusals, listed_warnings = completed_status_findings(conn, s)
    # A misspelt completed word first: it is also why no repaired order looks paid.
    refusals = [*listed_refusals, *([repaired] if repaired else []), *zone_refusals]
    return refusals, [*listed_warnings, *zone_warnings]


def require_sound_shop(engine: sa.Engine, s: AppSchema) -> None:
    """Refuse (ConfigurationError, the first reason) what ``doctor`` refuses about the rows."""
    with engine.connect() as conn:
        refusals, _ = shop_findings(conn, s)
    if refusals:
        raise ConfigurationError(refusals[0])
