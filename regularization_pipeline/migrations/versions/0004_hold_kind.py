"""Why an order is held, as a field: ``order_attempts.hold_kind``.

A provider's hold was recognised by the ``provider_failed:`` prefix of the prose in
``last_reason``; the kind is now a column of its own, and the rows held before it are
back-filled from that prefix (the only kind stored so far).

Revision ID: 0004_hold_kind
Revises: 0003
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_hold_kind"
down_revision = "0003"
branch_labels = None
depends_on = None

PROVIDER_FAILED = "provider_failed"  # frozen: the word the prefix carried


def upgrade(table_prefix: str) -> None:
    name = f"{table_prefix}order_attempts"
    with op.batch_alter_table(name) as batch:
        batch.add_column(sa.Column("hold_kind", sa.String(32)))
    attempts = sa.table(
        name,
        sa.column("hold_kind", sa.String),
        sa.column("last_reason", sa.String),
        sa.column("quarantined_at", sa.DateTime),
    )
    op.execute(
        attempts.update()
        .where(
            attempts.c.quarantined_at.is_not(None),
            attempts.c.last_reason.startswith(f"{PROVIDER_FAILED}:", autoescape=True),
        )
        .values(hold_kind=PROVIDER_FAILED)
    )


def downgrade(table_prefix: str) -> None:
    with op.batch_alter_table(f"{table_prefix}order_attempts") as batch:
        batch.drop_column("hold_kind")
