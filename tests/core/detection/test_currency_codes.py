"""One reading of a currency code for the check's SQL, the run's decision and regularize-order,
on SQLite, PostgreSQL and MariaDB: surrounding spaces are padding, case does not matter.

Before, the SQL compared ``upper(code)`` and the decision ``strip().upper()``: an orphan paid
in ``"EUR "`` was a mismatch to the check (on PostgreSQL), left by the run, and flipped by
``regularize-order``.
"""

from __future__ import annotations

from regularization_pipeline.core.clock import utcnow
from regularization_pipeline.core.detection.scans import inconsistency_report
from regularization_pipeline.core.operations.operator_tools import explain_order
from regularization_pipeline.core.regularizer import Regularizer, RunOptions


def _widen_payment_currency(shop) -> None:
    """The application's column is 8 characters wide here (a padded code fits)."""
    alter = {
        "postgresql": "ALTER TABLE transactions ALTER COLUMN currency TYPE VARCHAR(8)",
        "mysql": "ALTER TABLE transactions MODIFY currency VARCHAR(8)",
        "mariadb": "ALTER TABLE transactions MODIFY currency VARCHAR(8)",
    }.get(shop.engine.dialect.name)
    if alter:
        with shop.engine.begin() as conn:
            conn.exec_driver_sql(alter)


def test_a_padded_code_is_the_same_currency_everywhere_and_another_one_is_held_everywhere(shop):
    _widen_payment_currency(shop)
    padded = shop.order(currency="EUR")
    shop.payment(padded, currency="eur ")
    other = shop.order(currency="EUR")
    shop.payment(other, currency=" USD")
    window = RunOptions().window(utcnow())

    with shop.engine.connect() as conn:
        report = inconsistency_report(conn, shop.schema, None, sample_size=None)
        assert report.order_ids["currency_mismatch"] == [other]
        assert explain_order(conn, shop.schema, str(padded), window).would_regularize
        held = explain_order(conn, shop.schema, str(other), window)
        assert not held.would_regularize
        assert held.verdict.reason.startswith("currency_mismatch:")

    Regularizer(shop.engine, shop.schema).run(RunOptions(sleep=0), run_id="r1")
    assert (shop.status_of(padded), shop.status_of(other)) == ("completed", "pending")
