"""Migration 0001 split into helpers (a function under 60 lines) creates the schema it always did.

``MIGRATION_0001.json`` was written from the migration as it stood before the split, on each
backend, by :func:`schema_of` below; the split migration must reflect to the same.
"""

import json
from pathlib import Path

import sqlalchemy as sa

from regularization_pipeline.core.shop import migrations

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
