"""Audit trail, OrderCompleted outbox, per-order attempts and per-publisher deliveries.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Frozen here on purpose: a migration must keep creating what it created the
# day it was written, whatever core/shop/tables.py says later.
_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")
_TZ = sa.DateTime()  # naive UTC: MySQL and SQLite keep no zone, Laravel writes UTC
_MONEY = sa.Numeric(20, 6)


def upgrade(table_prefix: str) -> None:
    _audit(table_prefix)
    _outbox(table_prefix)
    _attempts_and_deliveries(table_prefix)


def _audit(p: str) -> None:
    op.create_table(
        f"{p}audit",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("order_id", sa.String(64), nullable=False),
        sa.Column("transaction_id", sa.String(64)),
        sa.Column("action", sa.String(20), nullable=False),
        sa.Column("reason", sa.String(500), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("order_status", sa.String(64)),
        sa.Column("order_amount", _MONEY),
        sa.Column("transaction_amount", _MONEY),
        sa.Column("currency", sa.String(16)),
        sa.Column("transaction_completed_at", _TZ),
        sa.Column("created_at", _TZ, nullable=False),
    )
    op.create_index(f"ix_{p}audit_run", f"{p}audit", ["run_id"])
    op.create_index(f"ix_{p}audit_order", f"{p}audit", ["order_id"])
    op.create_index(f"ix_{p}audit_created", f"{p}audit", ["created_at"])


def _outbox(p: str) -> None:
    op.create_table(
        f"{p}outbox",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(36), nullable=False, unique=True),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("idempotency_key", sa.String(128), nullable=False, unique=True),
        sa.Column("order_id", sa.String(64), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", _TZ, nullable=False),
        sa.Column("lease_owner", sa.String(64)),
        sa.Column("lease_expires_at", _TZ),
        sa.Column("last_error", sa.String(1000)),
        sa.Column("created_at", _TZ, nullable=False),
        sa.Column("delivered_at", _TZ),
        sa.Column("updated_at", _TZ, nullable=False),
    )
    op.create_index(f"ix_{p}outbox_due", f"{p}outbox", ["state", "next_attempt_at"])
    op.create_index(f"ix_{p}outbox_order", f"{p}outbox", ["order_id"])


def _attempts_and_deliveries(p: str) -> None:
    op.create_table(
        f"{p}order_attempts",
        sa.Column("order_id", sa.String(64), primary_key=True),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("total_attempts", sa.Integer, nullable=False),
        sa.Column("last_outcome", sa.String(20), nullable=False),
        sa.Column("last_reason", sa.String(500)),
        sa.Column("last_run_id", sa.String(64)),
        sa.Column("quarantined_at", _TZ),
        sa.Column("updated_at", _TZ, nullable=False),
    )

    op.create_table(
        f"{p}event_deliveries",
        sa.Column("event_id", sa.String(36), primary_key=True),
        sa.Column("publisher", sa.String(128), primary_key=True),
        sa.Column("delivered_at", _TZ, nullable=False),
    )


def downgrade(table_prefix: str) -> None:
    p = table_prefix
    for name in ("event_deliveries", "order_attempts", "outbox", "audit"):
        op.drop_table(f"{p}{name}")
