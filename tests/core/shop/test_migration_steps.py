"""Migrations that change our tables: 0001 split into helpers creates the schema it always did;
0004 back-fills the hold kind, 0005 the audit rows' inconsistency kind.

``MIGRATION_0001.json`` was written from the migration as it stood before the split, on each
backend, by :func:`schema_of` below; the split migration must reflect to the same.
"""

import json
from pathlib import Path

import sqlalchemy as sa

from regularization_pipeline.core.shop import migrations
from regularization_pipeline.core.shop.tables import owned_tables

EXPECTED = Path(__file__).with_name("MIGRATION_0001.json")
TABLES = ("audit", "outbox", "order_attempts", "event_deliveries")


def schema_of(engine: sa.Engine, prefix: str) -> dict:
    """Every column (type as the server reports it, nullability), key, index and unique."""
    inspector, out = sa.inspect(engine), {}
    for name in TABLES:
        table = f"{prefix}{name}"
        out[name] = {
            "columns": [
                [c["name"], str(c["type"]), bool(c["nullable"])]
                for c in inspector.get_columns(table)
            ],
            "primary_key": inspector.get_pk_constraint(table)["constrained_columns"],
            "indexes": sorted(
                [i["name"], i["column_names"], bool(i["unique"])]
                for i in inspector.get_indexes(table)
            ),
            "uniques": sorted(
                sorted(u["column_names"]) for u in inspector.get_unique_constraints(table)
            ),
        }
    return out


def test_the_split_first_migration_creates_the_same_schema(engine):
    assert migrations.upgrade(engine, "regularization_", "0001") == "0001"
    assert (
        schema_of(engine, "regularization_")
        == json.loads(EXPECTED.read_text())[engine.dialect.name]
    )


def test_0004_back_fills_hold_kind_from_the_reason_prefix(engine):
    """Rows held before the column existed keep their hold: provider_failed from the prefix;
    a failure quarantine, a released order and an order never held get none."""
    assert migrations.upgrade(engine, "regularization_", "0003") == "0003"
    rows = {
        "1": ("provider_failed: the provider says refunded (refunded)", True),
        "2": ("failed: database error", True),
        "3": ("provider_failed: the provider says failed (failed)", False),
        "4": ("provider_failed%: not this one", False),
        "5": ("completed transaction verified", False),
    }
    table = sa.table(
        "regularization_order_attempts",
        *(sa.column(c) for c in ("order_id", "failures", "total_attempts", "last_outcome")),
        *(sa.column(c) for c in ("last_reason", "quarantined_at", "updated_at")),
    )
    with engine.begin() as conn:
        for key, (reason, held) in rows.items():
            conn.execute(
                table.insert().values(
                    order_id=key,
                    failures=0,
                    total_attempts=1,
                    last_outcome="inconsistent",
                    last_reason=reason,
                    quarantined_at=sa.func.now() if held else None,
                    updated_at=sa.func.now(),
                )
            )

    assert migrations.upgrade(engine, "regularization_") == migrations.head_revision()

    attempts = owned_tables("regularization_").attempts
    with engine.connect() as conn:
        kinds = dict(conn.execute(sa.select(attempts.c.order_id, attempts.c.hold_kind)).all())
    assert kinds == {"1": "provider_failed", "2": None, "3": None, "4": None, "5": None}


def _downgrade(engine: sa.Engine, prefix: str, revision: str) -> None:
    from alembic import command

    cfg = migrations._config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        cfg.attributes["table_prefix"] = prefix
        command.downgrade(cfg, revision)


def test_0005_back_fills_the_audit_kind_from_the_reason_prefix_and_goes_back(engine):
    """Inconsistent rows written before the column keep their kind, read off the prefix; no
    other action gets one, nor a reason that only looks like a kind. Downgrade drops it."""
    assert migrations.upgrade(engine, "regularization_", "0004_hold_kind") == "0004_hold_kind"
    rows = {
        "1": ("inconsistent", "double_charge: reported, not fixed (transactions 7, 8)"),
        "2": ("inconsistent", "amount_mismatch: transaction amount 12 differs from order total 10"),
        "3": ("inconsistent", "provider_failed: provider reports the payment refunded (refunded)"),
        "4": ("failed", "double_charge: an action that is no inconsistency"),
        "5": ("inconsistent", "double_charge%: not a kind"),
        "6": ("regularized", "completed transaction verified"),
    }
    table = sa.table(
        "regularization_audit",
        *(sa.column(c) for c in ("run_id", "order_id", "action", "reason", "attempt")),
        sa.column("created_at"),
    )
    with engine.begin() as conn:
        for key, (action, reason) in rows.items():
            conn.execute(
                table.insert().values(
                    run_id="before-0005",
                    order_id=key,
                    action=action,
                    reason=reason,
                    attempt=0,
                    created_at=sa.func.now(),
                )
            )

    assert migrations.upgrade(engine, "regularization_") == migrations.head_revision()

    audit = owned_tables("regularization_").audit
    with engine.connect() as conn:
        kinds = dict(conn.execute(sa.select(audit.c.order_id, audit.c.kind)).all())
    assert kinds == {
        "1": "double_charge",
        "2": "amount_mismatch",
        "3": "provider_failed",
        "4": None,
        "5": None,
        "6": None,
    }

    _downgrade(engine, "regularization_", "0004_hold_kind")
    assert migrations.current_revision(engine, "regularization_") == "0004_hold_kind"
    columns = {c["name"] for c in sa.inspect(engine).get_columns("regularization_audit")}
    assert "kind" not in columns and "reason" in columns
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(table)).scalar() == len(rows)
