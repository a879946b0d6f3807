"""Payments the shop still has as pending (a wholly lost webhook), asked at the provider: a
capture of the right amount completes the payment and its order in one transaction; anything
else leaves both alone."""

from __future__ import annotations

import sqlalchemy as sa

from regularization_pipeline.core.provider.gateway import GatewayVerifier
from regularization_pipeline.core.provider.settings import GatewaySettings
from regularization_pipeline.core.regularizer import Regularizer, RunOptions
from regularization_pipeline.core.shop.mapping import SchemaMapping
from tests.support.databases import migrated_shop
from tests.support.provider_fakes import ProviderFake, stripe_charge, stripe_payment_intent
from tests.support.rows import audit_of, no_sleep, outbox_per_order

TOKEN = "sk_test_pending_payments"


def pending_shop(engine, fake, cases: dict[str, dict | None], paid_minutes_ago: float = 60):
    """One pending order per case, its only payment pending with reference pi_<order id>."""
    shop = migrated_shop(engine, SchemaMapping.parse({"transactions": {"reference": "reference"}}))
    t, table = shop.mapping.transactions, shop.tables.transactions
    ids = {}
    for case, changes in cases.items():
        order_id = shop.order(age_minutes=paid_minutes_ago)
        tx_id = shop.payment(order_id, status="pending", completed_minutes_ago=paid_minutes_ago)
        with engine.begin() as conn:
            conn.execute(
                table.update()
                .where(table.c[t.id] == tx_id)
                .values({t.reference: f"pi_{order_id}", t.completed_at: None})
            )
        if changes is not None:
            intent = stripe_payment_intent(f"pi_{order_id}", 4990, "eur")
            charge = changes.pop("charge", None)
            intent.update(changes)
            if charge:
                intent["latest_charge"] = {**stripe_charge(amount=4990, currency="eur"), **charge}
            fake.put(f"/v1/payment_intents/pi_{order_id}", intent)
        ids[case] = (order_id, tx_id)
    return shop, ids


def run(shop, fake, pending_payments=None):
    settings = GatewaySettings(
        provider="stripe",
        base_url=fake.url,
        max_requests_per_second=1000,
        burst=50,
        retry_delay_seconds=0,
        pending_payments=pending_payments,
    )
    with GatewayVerifier(settings, TOKEN) as verifier:
        return Regularizer(shop.engine, shop.schema, sleeper=no_sleep, verifier=verifier).run(
            RunOptions(sleep=0)
        )


def tx_status(shop, tx_id):
    t, table = shop.mapping.transactions, shop.tables.transactions
    with shop.engine.connect() as conn:
        return conn.execute(
            sa.select(table.c[t.status], table.c[t.completed_at]).where(table.c[t.id] == tx_id)
        ).one()


def test_a_captured_pending_payment_completes_the_payment_and_its_order_once(engine):
    cases = {
        "captured": {},
        "refunded": {"charge": dict(refunded=True, amount_refunded=4990)},
        "amount different": dict(amount_received=4000),
        "processing": dict(status="processing", amount_received=0),
        "unknown at the provider": None,
    }
    with ProviderFake(TOKEN) as fake:
        shop, ids = pending_shop(engine, fake, cases)
        summary = run(shop, fake, {"statuses": ["pending"]})
        again = run(shop, fake, {"statuses": ["pending"]})
    order_id, tx_id = ids["captured"]
    status, completed_at = tx_status(shop, tx_id)
    assert (shop.status_of(order_id), status) == (
        "completed",
        "completed",
    ) and completed_at is not None
    assert outbox_per_order(shop) == {str(order_id): 1}
    assert summary.regularized == 1 and again.regularized == 0
    for case in ("refunded", "amount different", "processing", "unknown at the provider"):
        other_order, other_tx = ids[case]
        assert (shop.status_of(other_order), tx_status(shop, other_tx)[0]) == (
            "pending",
            "pending",
        ), case
        assert "pending payment" in audit_of(shop, other_order)[-1].reason


def test_pending_payments_are_not_asked_about_unless_opted_in_or_within_the_grace_period(engine):
    with ProviderFake(TOKEN) as fake:
        shop, ids = pending_shop(engine, fake, {"old": {}})
        fresh = shop.order(age_minutes=1)
        shop.payment(fresh, status="pending", completed_minutes_ago=1)  # its webhook may still come
        run(shop, fake)  # not opted in
        assert fake.snapshot() == []
        run(shop, fake, {"statuses": ["pending"]})
        asked = [r.path.split("?")[0] for r in fake.snapshot()]
    assert asked == [f"/v1/payment_intents/pi_{ids['old'][0]}"]
    assert (shop.status_of(ids["old"][0]), shop.status_of(fresh)) == ("completed", "pending")


def test_a_generic_answer_without_an_amount_completes_no_pending_payment(engine):
    with ProviderFake(TOKEN) as fake:
        shop, ids = pending_shop(engine, fake, {"no amount": None})
        order_id, tx_id = ids["no amount"]
        fake.put(f"/payments/pi_{order_id}", {"status": "succeeded"})
        settings = GatewaySettings(
            base_url=fake.url,
            status_path="status",
            max_requests_per_second=1000,
            burst=50,
            pending_payments={"statuses": ["pending"]},
        )
        with GatewayVerifier(settings, TOKEN) as verifier:
            Regularizer(engine, shop.schema, sleeper=no_sleep, verifier=verifier).run(
                RunOptions(sleep=0)
            )
        assert len(fake.snapshot()) == 1  # it was asked
    assert (shop.status_of(order_id), tx_status(shop, tx_id)[0]) == ("pending", "pending")
    assert "carries no amount" in audit_of(shop, order_id)[-1].reason
