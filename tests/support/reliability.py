"""Helpers of the reliability scenarios (tests/reliability/): figures, a second engine, killed sessions.

Every scenario prints its figures as one ``[reliability]`` line (``pytest -s``), and appends
them as JSON to ``$RELIABILITY_FIGURES`` when set, which is how docs/dev/reliability.md is filled.
"""

from __future__ import annotations

import json
import os

import sqlalchemy as sa

from regularization_pipeline.core.shop.engine import create_app_engine


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


def kill_other_sessions(admin: sa.Engine) -> int:
    """Kill every other connection to this database, from the admin's own; returns how many.

    The session holding the shop's run lock is spared: a run whose lock is lost stops (see
    tests/core/shop/test_run_lock.py); what is tested here is the pool's recovery."""
    from regularization_pipeline.core.shop import run_lock

    with admin.connect() as conn:
        if admin.dialect.name == "postgresql":
            killed = (
                conn.execute(
                    sa.text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                        "AND application_name NOT LIKE 'regularization %'"
                    )
                )
                .scalars()
                .all()
            )
            return sum(bool(k) for k in killed)
        ids = (
            conn.execute(
                sa.text(
                    "SELECT id FROM information_schema.processlist WHERE db = DATABASE() "
                    "AND id <> CONNECTION_ID() AND id <> COALESCE(IS_USED_LOCK(:n), 0)"
                ),
                {"n": run_lock._mysql_name(admin, "regularization_")},
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
