"""Microsecond timestamps on MySQL/MariaDB.

MySQL's DATETIME keeps whole seconds by default: leases, backoff times and the
order of audit rows lost up to a second there. PostgreSQL and SQLite already
keep microseconds, so this revision changes nothing on them.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_COLUMNS = {
    "audit": {"transaction_completed_at": True, "created_at": False},
    "outbox": {
        "next_attempt_at": False,
        "lease_expires_at": True,
        "created_at": False,
        "delivered_at": True,
        "updated_at": False,
    },
    "order_attempts": {"quarantined_at": True, "updated_at": False},
    "event_deliveries": {"delivered_at": False},
}


def _alter(table_prefix: str, to: sa.types.TypeEngine, from_: sa.types.TypeEngine) -> None:
    if op.get_bind().dialect.name not in ("mysql", "mariadb"):
        return
    for table, columns in _COLUMNS.items():
        for column, nullable in columns.items():
            op.alter_column(
                f"{table_prefix}{table}",
                column,
                type_=to,
                existing_type=from_,
                existing_nullable=nullable,
            )


def upgrade(table_prefix: str) -> None:
    _alter(table_prefix, mysql.DATETIME(fsp=6), sa.DateTime())


def downgrade(table_prefix: str) -> None:
    _alter(table_prefix, sa.DateTime(), mysql.DATETIME(fsp=6))
