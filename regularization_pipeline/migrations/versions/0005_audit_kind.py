"""The inconsistency kind of an audit row, as a field: ``audit.kind``.

An inconsistency's audit row was recognised by the ``<kind>:`` prefix of its
``reason`` (the tracker audits each order and kind once, and looked for that prefix
to know it had); the kind is now a column of its own. The ``inconsistent`` rows
written before it are back-filled from that prefix, one known kind at a time.

Revision ID: 0005_audit_kind
Revises: 0004_hold_kind
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_audit_kind"
down_revision = "0004_hold_kind"
branch_labels = None
depends_on = None

INCONSISTENT = "inconsistent"  # frozen: the audit action of a reported inconsistency
# Frozen: the kinds an audit reason could start with when this migration was written.
KINDS = (
    "amount_mismatch",
    "currency_mismatch",
    "invalid_amount",
    "double_charge",
    "paid_but_cancelled",
    "missing_order",
    "undated_payment",
    "provider_failed",
)


def upgrade(table_prefix: str) -> None:
    name = f"{table_prefix}audit"
    with op.batch_alter_table(name) as batch:
        batch.add_column(sa.Column("kind", sa.String(32)))
    audit = sa.table(
        name,
        sa.column("action", sa.String),
        sa.column("reason", sa.String),
        sa.column("kind", sa.String),
    )
    for kind in KINDS:
        op.execute(
            audit.update()
            .where(
                audit.c.action == INCONSISTENT,
                audit.c.kind.is_(None),
                audit.c.reason.startswith(f"{kind}:", autoescape=True),
            )
            .values(kind=kind)
        )


def downgrade(table_prefix: str) -> None:
    with op.batch_alter_table(f"{table_prefix}audit") as batch:
        batch.drop_column("kind")
