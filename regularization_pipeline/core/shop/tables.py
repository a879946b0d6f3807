"""The tables this project owns: audit trail, event outbox, per-order attempts, deliveries, open inconsistencies.

They are created by the Alembic migrations in ``regularization_pipeline/migrations``
(``regularize-completed-orders migrate``); the definitions here are what the
code reads and writes. Every name carries the mapping's ``table_prefix`` so our
tables never collide with the application's.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

# Outbox states.
PENDING = "pending"
DELIVERED = "delivered"
DEAD = "dead"

ORDER_ID = sa.String(64)  # order ids may be integers or UUIDs in the application
MONEY = sa.Numeric(20, 6)
# Naive UTC everywhere, like the application's own timestamps. MySQL's DATETIME
# keeps whole seconds unless asked for more, which would stretch leases and
# backoff by up to a second and blur the order of audit rows.
TIMESTAMP = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


@dataclass(frozen=True)
class OwnedTables:
    metadata: sa.MetaData
    audit: sa.Table
    outbox: sa.Table
    attempts: sa.Table
    deliveries: sa.Table
    inconsistencies: sa.Table
    scan_state: sa.Table
    version_table: str


def _surrogate_id() -> sa.Column:
    # SQLite autoincrements only an INTEGER primary key.
    return sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    )


def _audit_table(prefix: str, md: sa.MetaData) -> sa.Table:
    """One row per decision on an order."""
    return sa.Table(
        f"{prefix}audit",
        md,
        _surrogate_id(),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("order_id", ORDER_ID, nullable=False),
        sa.Column("transaction_id", sa.String(64)),
        sa.Column("action", sa.String(20), nullable=False),
        sa.Column("reason", sa.String(500), nullable=False),
        # The inconsistency kind of an ``inconsistent`` row (e.g. double_charge), as a field:
        # readers key on it, never on the reason's words. NULL for every other action.
        sa.Column("kind", sa.String(32)),
        sa.Column("attempt", sa.Integer, nullable=False, default=0),
        sa.Column("order_status", sa.String(64)),
        sa.Column("order_amount", MONEY),
        sa.Column("transaction_amount", MONEY),
        sa.Column("currency", sa.String(16)),
        sa.Column("transaction_completed_at", TIMESTAMP),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Index(f"ix_{prefix}audit_run", "run_id"),
        sa.Index(f"ix_{prefix}audit_order", "order_id"),
        sa.Index(f"ix_{prefix}audit_created", "created_at"),
    )


def _outbox_table(prefix: str, md: sa.MetaData) -> sa.Table:
    """One OrderCompleted event per flipped order, and its delivery state."""
    return sa.Table(
        f"{prefix}outbox",
        md,
        _surrogate_id(),
        sa.Column("event_id", sa.String(36), nullable=False, unique=True),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("idempotency_key", sa.String(128), nullable=False, unique=True),
        sa.Column("order_id", ORDER_ID, nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, default=0),
        sa.Column("next_attempt_at", TIMESTAMP, nullable=False),
        sa.Column("lease_owner", sa.String(64)),
        sa.Column("lease_expires_at", TIMESTAMP),
        sa.Column("last_error", sa.String(1000)),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("delivered_at", TIMESTAMP),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.Index(f"ix_{prefix}outbox_due", "state", "next_attempt_at"),
        sa.Index(f"ix_{prefix}outbox_order", "order_id"),
    )


@lru_cache(maxsize=16)
def owned_tables(prefix: str = "regularization_") -> OwnedTables:
    """Our tables under ``prefix``: audit, outbox, attempts, deliveries, inconsistencies, scan state."""
    md = sa.MetaData()
    audit = _audit_table(prefix, md)
    outbox = _outbox_table(prefix, md)
    attempts = sa.Table(
        f"{prefix}order_attempts",
        md,
        sa.Column("order_id", ORDER_ID, primary_key=True),
        sa.Column("failures", sa.Integer, nullable=False, default=0),
        sa.Column("total_attempts", sa.Integer, nullable=False, default=0),
        sa.Column("last_outcome", sa.String(20), nullable=False),
        sa.Column("last_reason", sa.String(500)),
        # Why the order is held, as a field (the inconsistency kind, e.g. provider_failed);
        # NULL for a failure quarantine and for an order that is not held. Never prose.
        sa.Column("hold_kind", sa.String(32)),
        sa.Column("last_run_id", sa.String(64)),
        sa.Column("quarantined_at", TIMESTAMP),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
    )
    deliveries = sa.Table(
        f"{prefix}event_deliveries",
        md,
        sa.Column("event_id", sa.String(36), primary_key=True),
        sa.Column("publisher", sa.String(128), primary_key=True),
        sa.Column("delivered_at", TIMESTAMP, nullable=False),
    )
    inconsistencies = sa.Table(
        f"{prefix}inconsistencies",
        md,
        sa.Column("order_id", ORDER_ID, primary_key=True),
        sa.Column("kind", sa.String(32), primary_key=True),
        sa.Column("first_seen_at", TIMESTAMP, nullable=False),
    )
    scan_state = sa.Table(
        f"{prefix}scan_state",
        md,
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("scanned_at", TIMESTAMP),
        sa.Column("full_scan_at", TIMESTAMP),
    )
    return OwnedTables(
        md,
        audit,
        outbox,
        attempts,
        deliveries,
        inconsistencies,
        scan_state,
        f"{prefix}alembic_version",
    )
