"""Helpers shared by the reliability scenarios (tests/test_reliability_*.py); holds no test itself.

Every scenario prints its figures as one ``[reliability]`` line (``pytest -s``), and appends
them as JSON to ``$RELIABILITY_FIGURES`` when set, which is how docs/reliability.md is filled.
"""

from __future__ import annotations

import json
import os

import sqlalchemy as sa

from regularization_pipeline.core.db import create_app_engine
from regularization_pipeline.core.tables import owned_tables


def figures(scenario: str, **values) -> None:
    print(f"\n[reliability] {scenario}: " + ", ".join(f"{k}={v}" for k, v in values.items()))
    target = os.environ.get("RELIABILITY_FIGURES")
    if target:
        with open(target, "a", encoding="utf-8") as out:
            out.write(json.dumps({"scenario": scenario, **values}, default=str) + "\n")


def url_of(engine: sa.Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def second_engine(engine: sa.Engine, **kw) -> sa.Engine:
    """Another engine on the same database: the application, an operator or an admin, not the run."""
    return create_app_engine(url_of(engine), **kw)


def completed_ids(shop) -> set[int]:
    orders = shop.tables.orders
    with shop.engine.connect() as conn:
        return set(
            conn.execute(sa.select(orders.c.id).where(orders.c.status == "completed")).scalars()
        )


def outbox_counts(engine: sa.Engine) -> dict[int, int]:
    ob = owned_tables().outbox
    with engine.connect() as conn:
        rows = conn.execute(sa.select(ob.c.order_id, sa.func.count()).group_by(ob.c.order_id)).all()
    return {int(order_id): n for order_id, n in rows}


def audit_rows(engine: sa.Engine) -> list:
    au = owned_tables().audit
    with engine.connect() as conn:
        return conn.execute(sa.select(au).order_by(au.c.id)).all()


def assert_flip_iff_event(shop) -> None:
    """Never half-written: an order is completed by us exactly when it has one outbox row."""
    events = outbox_counts(shop.engine)
    assert set(events.values()) <= {1}, "an order has two OrderCompleted events"
    done = completed_ids(shop)
    assert done - set(events) == set(), "completed without an event"
    assert set(events) - done == set(), "an event for an order that is not completed"


def kill_other_sessions(admin: sa.Engine) -> int:
    """Kill every other connection to this database, from the admin's own; returns how many."""
    with admin.connect() as conn:
        if admin.dialect.name == "postgresql":
            killed = (
                conn.execute(
                    sa.text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                )
                .scalars()
                .all()
            )
            return sum(bool(k) for k in killed)
        ids = (
            conn.execute(
                sa.text(
                    "SELECT id FROM information_schema.processlist WHERE db = DATABASE() AND id <> CONNECTION_ID()"
                )
            )
            .scalars()
            .all()
        )
        for session in ids:
            try:
                conn.execute(sa.text(f"KILL {int(session)}"))
            except sa.exc.OperationalError:  # it ended on its own meanwhile
                pass
        return len(ids)
