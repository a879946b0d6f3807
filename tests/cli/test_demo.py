"""`make demo`'s command in a scratch directory: its report and what it did to the shop and the instance."""

from __future__ import annotations

import os

import dagster as dg
import sqlalchemy as sa

from regularization_pipeline.core.shop import tables as tb
from regularization_pipeline.core.shop.engine import create_app_engine
from regularization_pipeline.defs.jobs import JOB_NAME
from regularization_pipeline.demo.handlers import effect_counts
from tests.support.processes import run_demo


def test_demo_builds_the_shop_runs_the_job_and_reports(tmp_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DAGSTER_HOME", "REGULARIZATION_DATABASE_URL")
    }
    env["REGULARIZATION_DATABASE_URL"] = f"sqlite:///{tmp_path / 'must_not_be_touched.db'}"

    done = run_demo(tmp_path, env)

    out = done.stdout
    assert (
        "Demo shop .demo/shop.db: 295 orders (200 healthy, 40 orphaned, 12 paid within the grace period"
        in out
    )
    assert "regularized: 40 of 40 orphans the job could fix" in out
    assert "held for a human, never fixed: 13 order(s)" in out
    assert (
        "inconsistent, reported and not fixed: amount_mismatch 4, currency_mismatch 3, double_charge 3, "
        "paid_but_cancelled 3" in out
    )
    assert "OrderCompleted events delivered: 40 (retried 0, dead 0)" in out
    assert "handlers: demo_enrollments 40, demo_notifications 40, demo_subscriptions 40" in out
    assert "make dev" in out and "http://127.0.0.1:3000" in out
    assert "note: REGULARIZATION_DATABASE_URL is ignored by the demo" in out
    assert "40/50 regularized order" in done.stderr  # per-order progress in the run's log

    assert not (tmp_path / "must_not_be_touched.db").exists()
    engine = create_app_engine(f"sqlite:///{tmp_path / '.demo' / 'shop.db'}")
    try:
        with engine.connect() as conn:
            by_status = dict(
                conn.execute(sa.text("SELECT status, count(*) FROM orders GROUP BY status")).all()
            )
            outbox = dict(
                conn.execute(
                    sa.select(tb.owned_tables().outbox.c.state, sa.func.count()).group_by(
                        tb.owned_tables().outbox.c.state
                    )
                ).all()
            )
        assert by_status == {"completed": 240, "pending": 42, "cancelled": 3, "failed": 10}
        assert outbox == {tb.DELIVERED: 40}
        assert effect_counts(engine) == {
            "demo_enrollments": 40,
            "demo_notifications": 40,
            "demo_subscriptions": 40,
        }
    finally:
        engine.dispose()

    home = tmp_path / ".dagster_home"
    assert (home / "dagster.yaml").exists()
    with dg.DagsterInstance.from_config(str(home)) as instance:
        (run,) = instance.get_runs(filters=dg.RunsFilter(job_name=JOB_NAME))
        assert run.status == dg.DagsterRunStatus.SUCCESS
        assert run.run_id in out
        materialized = instance.fetch_materializations(
            dg.AssetKey("regularization_audit"), limit=1
        ).records
        assert materialized[0].run_id == run.run_id


def test_demo_reset_puts_the_seeded_orphans_back_without_running_the_job(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME",)}
    env["DAGSTER_HOME"] = str(tmp_path / "home")
    shop = tmp_path / ".demo" / "shop.db"
    shop.parent.mkdir()
    shop.write_text("a shop a user has played with")  # replaced, whatever it holds

    done = run_demo(tmp_path, env, "--reset")

    assert "The job was not run: 40 orphans wait" in done.stdout
    assert "docs/launching.md" in done.stdout
    engine = create_app_engine(f"sqlite:///{shop}")
    try:
        with engine.connect() as conn:
            pending = conn.execute(
                sa.text("SELECT count(*) FROM orders WHERE status = 'pending'")
            ).scalar_one()
            audited = conn.execute(
                sa.text("SELECT count(*) FROM regularization_audit")
            ).scalar_one()
    finally:
        engine.dispose()
    # 40 orphans, 12 within the grace period, 10 inconsistent, 5 soft-deleted, 15 unpaid.
    assert (pending, audited) == (82, 0)
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        assert instance.get_runs(dg.RunsFilter(job_name=JOB_NAME)) == []
