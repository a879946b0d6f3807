"""Open inconsistencies and the scan that keeps them current.

The ``transactions_consistent`` check and every run used to scan the whole
payment history for inconsistencies (about a second per million orders, twice a
run). These tables let them re-examine only the orders whose payments completed
since the last scan, plus the inconsistencies still open, with a full scan once
a day (see ``core/decisions/tracker.py``).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_TZ = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
SCAN_NAME = "inconsistencies"


def upgrade(table_prefix: str) -> None:
    p = table_prefix
    op.create_table(
        f"{p}inconsistencies",
        sa.Column("order_id", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(32), primary_key=True),
        sa.Column("first_seen_at", _TZ, nullable=False),
    )
    state = op.create_table(
        f"{p}scan_state",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("scanned_at", _TZ),
        sa.Column("full_scan_at", _TZ),
    )
    # The row exists from the start so that scans serialize on it (SELECT ... FOR UPDATE).
    op.bulk_insert(state, [{"name": SCAN_NAME, "scanned_at": None, "full_scan_at": None}])


def downgrade(table_prefix: str) -> None:
    op.drop_table(f"{table_prefix}scan_state")
    op.drop_table(f"{table_prefix}inconsistencies")
