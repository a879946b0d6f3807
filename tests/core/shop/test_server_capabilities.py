"""Servers as shops run them: MariaDB created the way Laravel creates it, and servers too old to run us."""

import logging

import pytest
import sqlalchemy as sa

from regularization_pipeline.core.regularizer import Regularizer, RunOptions
from regularization_pipeline.core.shop.engine import (
    require_capabilities,
    skip_locked_refusal,
)
from tests.support.rows import no_sleep, outbox_per_order, quarantine


@pytest.mark.parametrize("db_url", ["mariadb"], indirect=True)
def test_batches_commit_on_a_utf8mb4_unicode_ci_database(shop, caplog):
    with shop.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT @@collation_database")).scalar_one() == (
            "utf8mb4_unicode_ci"
        )
        ours = conn.execute(
            sa.text(
                "SELECT collation_name FROM information_schema.columns WHERE table_schema = "
                "DATABASE() AND table_name = 'regularization_order_attempts' AND column_name = "
                "'order_id'"
            )
        ).scalar_one()
    assert ours == "utf8mb4_unicode_ci"  # our tables follow the database, as Laravel's do
    orphans = [shop.orphan() for _ in range(3)]
    held = shop.orphan()
    quarantine(shop, held)

    with caplog.at_level(logging.INFO, logger="regularization_pipeline.regularizer"):
        summary = Regularizer(shop.engine, shop.schema, sleeper=no_sleep).run(
            RunOptions(sleep=0, mode="batched", batch_size=2)
        )

    assert "falling back" not in caplog.text
    assert "batch of 2" in caplog.text
    assert summary.regularized == 3
    assert set(outbox_per_order(shop)) == {str(i) for i in orphans}
    assert shop.status_of(held) == "pending"


@pytest.mark.parametrize(
    ("version", "refusal"),
    [
        (
            "10.5.23-MariaDB-log",
            "MariaDB 10.5.23 has no SELECT ... FOR UPDATE SKIP LOCKED, which the pipeline needs "
            "to lock orders without waiting on another run or the application: upgrade to "
            "MariaDB 10.6 or later",
        ),
        ("5.5.5-10.4.32-MariaDB", "MariaDB 10.4.32 has no SELECT ... FOR UPDATE SKIP LOCKED"),
        ("5.7.44-log", "MySQL 5.7.44 has no SELECT ... FOR UPDATE SKIP LOCKED"),
        ("8.0.0-dmr", "upgrade to MySQL 8.0.1 or later"),
        ("10.6.0-MariaDB", None),
        ("11.4.2-MariaDB-ubu2404", None),
        ("8.0.1", None),
        ("8.4.3", None),
    ],
)
def test_servers_without_skip_locked_are_refused_naming_version_and_need(version, refusal):
    found = skip_locked_refusal(version)
    if refusal is None:
        assert found is None
    else:
        assert found.startswith(refusal) or refusal in found


def test_the_servers_here_have_what_a_run_needs(engine):
    require_capabilities(engine)  # raises ConfigurationError with the refusal otherwise
