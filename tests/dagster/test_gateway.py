"""Provider verification wired into the job: the PaymentGatewayResource against a real provider stub."""

import dagster as dg
import pytest
import sqlalchemy as sa

from regularization_pipeline.defs.resources import PaymentGatewayResource
from tests.support.dagster import materialization_metadata, materialize_all, step_failure_message
from tests.support.databases import migrated_shop
from tests.support.http_stubs import ProviderStub
from tests.support.rows import audit_of

TOKEN = "sk_test_gateway_token_never_logged"


@pytest.fixture
def settings_file(tmp_path):
    path = tmp_path / "provider.yaml"
    path.write_text("status_path: data.status\nmax_requests_per_second: 1000\nburst: 10\n")
    return str(path)


def payment_of(shop, order_id) -> int:
    transactions = shop.tables.transactions
    with shop.engine.connect() as conn:
        return conn.execute(
            sa.select(transactions.c.id).where(transactions.c.order_id == order_id)
        ).scalar_one()


def test_the_provider_decides_which_orphans_the_job_regularizes(
    engine, db_url, settings_file, caplog
):
    # The default mapping has no reference column: the provider is asked by transaction id.
    shop = migrated_shop(engine)
    paid, refunded = shop.orphans(2)
    answers = {
        str(payment_of(shop, paid)): "completed",
        str(payment_of(shop, refunded)): "refunded",
    }
    with ProviderStub(TOKEN, statuses=answers, default_status="pending") as provider:
        gateway = PaymentGatewayResource(
            base_url=provider.url + "/v1", token=TOKEN, settings_file=settings_file
        )
        with dg.instance_for_test() as instance:
            result = materialize_all(db_url, instance, gateway=gateway)
        assert len(provider.snapshot()) == 2
    assert (shop.status_of(paid), shop.status_of(refunded)) == ("completed", "pending")
    assert audit_of(shop, refunded)[-1].reason.startswith(
        "provider_failed: provider reports the payment refunded"
    )
    metadata = materialization_metadata(result, "regularized_orders")
    assert (
        metadata["regularized"],
        metadata["provider_requests"],
        metadata["inconsistent_provider_failed"],
    ) == (1, 2, 1)
    assert TOKEN not in caplog.text


def test_verification_on_without_a_token_fails_the_run_before_any_change(
    engine, db_url, settings_file
):
    shop = migrated_shop(engine)
    (order_id,) = shop.orphans(1)
    gateway = PaymentGatewayResource(base_url="http://127.0.0.1:9/v1", settings_file=settings_file)
    with dg.instance_for_test() as instance:
        result = materialize_all(db_url, instance, gateway=gateway, raise_on_error=False)
    assert not result.success
    assert "REGULARIZATION_PROVIDER_TOKEN is not" in step_failure_message(
        result, "regularized_orders"
    )
    assert shop.status_of(order_id) == "pending" and audit_of(shop, order_id) == []


def test_a_payment_the_provider_calls_refunded_is_held_reported_and_asked_again_only_after_release(
    engine, db_url, settings_file
):
    from regularization_pipeline.core.operations.operator_tools import inconsistency_rows
    from regularization_pipeline.core.regularizer import Regularizer
    from tests.support.dagster import check_evaluation

    shop = migrated_shop(engine)
    (refunded,) = shop.orphans(1)
    answers = {str(payment_of(shop, refunded)): "refunded"}
    with ProviderStub(TOKEN, statuses=answers) as provider:
        gateway = PaymentGatewayResource(
            base_url=provider.url + "/v1", token=TOKEN, settings_file=settings_file
        )
        with dg.instance_for_test() as instance:
            materialize_all(db_url, instance, gateway=gateway)
            asked_first = len(provider.snapshot())
            again = materialize_all(db_url, instance, gateway=gateway)  # five minutes later
            asked_again = len(provider.snapshot()) - asked_first
            check = check_evaluation(again, "transactions_consistent")
            Regularizer(engine, shop.schema).release(refunded)
            materialize_all(db_url, instance, gateway=gateway)
            asked_after_release = len(provider.snapshot()) - asked_first - asked_again
    assert (asked_first, asked_again, asked_after_release) == (1, 0, 1)
    assert not check.passed and check.metadata["inconsistent_provider_failed"].value == 1
    with engine.connect() as conn:
        rows = inconsistency_rows(conn, shop.schema, None)
        assert ("provider_failed", refunded) in [row[:2] for row in rows]
    assert shop.status_of(refunded) == "pending"
    reasons = [row.reason for row in audit_of(shop, refunded) if row.action == "inconsistent"]
    assert len(reasons) == 2 and all(
        r.startswith("provider_failed:") for r in reasons
    )  # one per asking, not per run
