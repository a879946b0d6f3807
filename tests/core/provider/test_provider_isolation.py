"""A provider error about one order never blocks the others; an outage stops the run without
blaming the orders; a refusal about one transaction holds only that one."""

from __future__ import annotations

import pytest

from regularization_pipeline.core.provider.answers import ProviderRejectedError
from regularization_pipeline.core.provider.gateway import GatewayVerifier
from regularization_pipeline.core.provider.settings import GatewaySettings
from regularization_pipeline.core.regularizer import Regularizer, RunOptions
from regularization_pipeline.core.shop.mapping import SchemaMapping
from regularization_pipeline.core.verdicts import INCONSISTENT, QUARANTINED, SKIPPED
from tests.support.databases import migrated_shop
from tests.support.provider_fakes import ProviderFake, stripe_payment_intent
from tests.support.rows import OutcomeLog, audit_of, no_sleep, outbox_per_order

TOKEN = "sk_test_isolation_token"


def stripe_shop(engine, count: int):
    """``count`` orphans whose Stripe PaymentIntents ``pi_<order id>`` succeeded for 49.90 EUR."""
    shop = migrated_shop(engine, SchemaMapping.parse({"transactions": {"reference": "reference"}}))
    ids = shop.orphans(count)
    t, table = shop.mapping.transactions, shop.tables.transactions
    fake = ProviderFake(TOKEN)
    with engine.begin() as conn:
        for order_id in ids:
            conn.execute(
                table.update()
                .where(table.c[t.order_id] == order_id)
                .values({t.reference: f"pi_{order_id}"})
            )
            fake.put(
                f"/v1/payment_intents/pi_{order_id}",
                stripe_payment_intent(f"pi_{order_id}", 4990, "eur"),
            )
    return shop, ids, fake


def run(shop, fake, **options):
    settings = GatewaySettings(
        provider="stripe",
        base_url=fake.url,
        max_requests_per_second=1000,
        burst=50,
        max_retries=1,
        retry_delay_seconds=0.0,
        connect_timeout_seconds=2,
        read_timeout_seconds=2,
    )
    outcomes = OutcomeLog()
    with GatewayVerifier(settings, TOKEN) as verifier:
        summary = Regularizer(shop.engine, shop.schema, sleeper=no_sleep, verifier=verifier).run(
            RunOptions(sleep=0, **options), progress=outcomes
        )
    return summary, outcomes


def test_a_provider_failing_for_one_order_only_never_stalls_the_others_and_holds_that_one(engine):
    shop, ids, fake = stripe_shop(engine, 4)
    bad = ids[0]  # first in id order: the one every run used to stop at
    fake.fail_paths.add(f"/v1/payment_intents/pi_{bad}")
    with fake:
        first, _ = run(shop, fake, max_attempts=3)
        assert [shop.status_of(i) for i in ids] == [
            "pending",
            "completed",
            "completed",
            "completed",
        ]
        assert not first.stopped_by_provider and (first.regularized, first.failed) == (3, 1)
        runs = [run(shop, fake, max_attempts=3)[0] for _ in range(3)]
    assert [(s.failed, s.quarantined) for s in runs] == [(1, 0), (0, 1), (0, 0)]
    # Held with its own reason, and asked about no more.
    last = audit_of(shop, bad)[-1]
    assert last.action == QUARANTINED and "HTTP 500" in last.reason
    asked_about_bad = [
        r for r in fake.snapshot() if r.path.startswith(f"/v1/payment_intents/pi_{bad}?")
    ]
    assert len(asked_about_bad) == 3 * 2  # three runs, each one try and one retry; none after
    assert shop.status_of(bad) == "pending"
    assert outbox_per_order(shop) == {str(i): 1 for i in ids[1:]}


def test_an_outage_stops_the_run_after_a_few_orders_in_a_row_without_blaming_them(engine):
    shop, ids, fake = stripe_shop(engine, 6)
    fake.fail_paths.update(f"/v1/payment_intents/pi_{i}" for i in ids)
    with fake:
        summary, outcomes = run(shop, fake, max_attempts=1)
        assert summary.stopped_by_provider
        assert [o.action for o in outcomes] == [SKIPPED] * 3  # three in a row, then no more asking
        assert {p.path.split("?")[0] for p in fake.snapshot()} == {
            f"/v1/payment_intents/pi_{i}" for i in ids[:3]
        }
        # Nothing counted: even with max_attempts=1 the provider's return regularizes all.
        fake.fail_paths.clear()
        assert run(shop, fake, max_attempts=1)[0].regularized == 6


def test_a_refusal_on_the_first_request_stops_the_run(engine):
    shop, ids, fake = stripe_shop(engine, 3)
    fake.refuse_paths.add(f"/v1/payment_intents/pi_{ids[0]}")
    with fake, pytest.raises(ProviderRejectedError, match="HTTP 403"):
        run(shop, fake)
    assert [shop.status_of(i) for i in ids] == ["pending"] * 3


def test_a_refusal_about_one_transaction_after_others_holds_only_that_one(engine):
    shop, ids, fake = stripe_shop(engine, 3)
    refused = ids[1]
    fake.refuse_paths.add(f"/v1/payment_intents/pi_{refused}")
    with fake:
        summary, outcomes = run(shop, fake)
        again, _ = run(shop, fake)
    assert [shop.status_of(i) for i in ids] == ["completed", "pending", "completed"]
    (held,) = [o for o in outcomes if o.order_id == refused]
    assert (held.action, held.kind, held.hold_reason) == (
        INCONSISTENT,
        "provider_failed",
        "request_refused",
    )
    assert again.processed == 0  # held: not asked about again


def test_a_bad_token_after_provider_errors_stops_the_run_without_counting_them(engine):
    shop, ids, fake = stripe_shop(engine, 3)
    fake.fail_paths.add(f"/v1/payment_intents/pi_{ids[0]}")
    fake.refuse_paths.add(f"/v1/payment_intents/pi_{ids[1]}")  # 403 before any answer: the token
    with fake, pytest.raises(ProviderRejectedError):
        run(shop, fake, max_attempts=1)
    assert [shop.status_of(i) for i in ids] == ["pending"] * 3
    assert all(audit_of(shop, i) == [] for i in ids)  # nothing counted, nothing quarantined
