"""Each provider's own objects decide the order: captured -> flipped; refunded, partly refunded,
disputed, authorized only, canceled, failed, another amount or currency -> held, never flipped.

The fakes (tests/support/provider_fakes.py) serve the example objects of each provider's API
reference at its own paths; the run asks them through the adapter ``provider:`` names.
"""

from __future__ import annotations

import pytest

from regularization_pipeline.core.provider.gateway import GatewayVerifier
from regularization_pipeline.core.provider.money import exponent, to_minor
from regularization_pipeline.core.provider.settings import GatewaySettings
from regularization_pipeline.core.regularizer import Regularizer, RunOptions
from regularization_pipeline.core.shop.mapping import SchemaMapping
from regularization_pipeline.core.shop.rows import OrderRow, TransactionRow
from regularization_pipeline.core.verdicts import INCONSISTENT, REGULARIZED
from tests.support.databases import migrated_shop
from tests.support.http_stubs import Reply
from tests.support.provider_fakes import (
    ProviderFake,
    mollie_payment,
    paypal_capture,
    paypal_order,
    stripe_charge,
    stripe_payment_intent,
)
from tests.support.rows import OutcomeLog, audit_of, no_sleep, outbox_per_order

TOKEN = "sk_test_adapter_token_never_logged"
FLIPPED, PENDING = "flipped", "left pending"

# case -> (order total, order currency, what the provider holds, expected outcome)
STRIPE = {
    "captured": ("49.90", "EUR", {}, FLIPPED),
    "refunded": ("49.90", "EUR", {"charge": dict(refunded=True, amount_refunded=4990)}, "refunded"),
    "partly refunded": (
        "49.90",
        "EUR",
        {"charge": dict(amount_refunded=1000)},
        "partially_refunded",
    ),
    "disputed": ("49.90", "EUR", {"charge": dict(disputed=True)}, "disputed"),
    "authorized only": (
        "49.90",
        "EUR",
        dict(
            status="requires_capture",
            amount_received=0,
            amount_capturable=4990,
            capture_method="manual",
            charge=dict(captured=False, amount_captured=0),
        ),
        "authorized_only",
    ),
    "canceled": ("49.90", "EUR", dict(status="canceled", amount_received=0), "canceled"),
    "failed": (
        "49.90",
        "EUR",
        dict(
            status="requires_payment_method",
            amount_received=0,
            last_payment_error={"code": "card_declined", "type": "card_error"},
            latest_charge=None,
        ),
        "failed",
    ),
    "processing": ("49.90", "EUR", dict(status="processing", amount_received=0), PENDING),
    "amount different": ("49.90", "EUR", dict(amount_received=4000), "amount_mismatch"),
    "currency different": ("49.90", "EUR", dict(currency="usd"), "currency_mismatch"),
    "JPY (0 decimals)": ("5000", "JPY", {}, FLIPPED),
    "JPY read as cents": ("5000", "JPY", dict(amount_received=500000), "amount_mismatch"),
    # The demo shop's total column has two decimals (NUMERIC(12, 2)):
    # 12.340 BHD is 12340 fils, and Stripe's 1234 would be 1.234 BHD.
    "BHD (3 decimals)": ("12.34", "BHD", {}, FLIPPED),
    "KWD read as cents": ("12.34", "KWD", dict(amount_received=1234), "amount_mismatch"),
}

MOLLIE = {
    "paid": ("49.90", "EUR", {}, FLIPPED),
    "refunded": ("49.90", "EUR", {"amountRefunded": ("49.90", None)}, "refunded"),
    "partly refunded": ("49.90", "EUR", {"amountRefunded": ("10.00", None)}, "partially_refunded"),
    "charged back": ("49.90", "EUR", {"amountChargedBack": ("49.90", None)}, "disputed"),
    "authorized only": ("49.90", "EUR", dict(status="authorized"), "authorized_only"),
    "canceled": ("49.90", "EUR", dict(status="canceled"), "canceled"),
    "failed": ("49.90", "EUR", dict(status="failed"), "failed"),
    "expired": ("49.90", "EUR", dict(status="expired"), "expired"),
    "open": ("49.90", "EUR", dict(status="open"), PENDING),
    "amount different": ("49.90", "EUR", {"amount": ("40.00", None)}, "amount_mismatch"),
    "currency different": ("49.90", "EUR", {"currency": "USD"}, "currency_mismatch"),
    "JPY (0 decimals)": ("5000", "JPY", {"amount": ("5000", None)}, FLIPPED),
    "JPY with decimals": ("5000", "JPY", {"amount": ("50.00", None)}, "amount_mismatch"),
    "BHD (3 decimals)": ("12.34", "BHD", {"amount": ("12.340", None)}, FLIPPED),
}

PAYPAL = {
    "captured": ("49.90", "USD", {}, FLIPPED),
    "refunded": ("49.90", "USD", {"capture": dict(status="REFUNDED")}, "refunded"),
    "partly refunded": (
        "49.90",
        "USD",
        {"capture": dict(status="PARTIALLY_REFUNDED")},
        "partially_refunded",
    ),
    "disputed": (
        "49.90",
        "USD",
        {"capture": dict(status="PENDING", status_details={"reason": "BUYER_COMPLAINT"})},
        "disputed",
    ),
    "authorized only": ("49.90", "USD", {"authorized": True}, "authorized_only"),
    "voided": ("49.90", "USD", {"voided": True}, "canceled"),
    "declined": ("49.90", "USD", {"capture": dict(status="DECLINED")}, "failed"),
    "approved, not captured": ("49.90", "USD", {"approved": True}, PENDING),
    "amount different": ("49.90", "USD", {"value": "40.00"}, "amount_mismatch"),
    "currency different": ("49.90", "USD", {"currency": "EUR"}, "currency_mismatch"),
    "JPY (0 decimals)": ("5000", "JPY", {}, FLIPPED),
    "JPY read as cents": ("5000", "JPY", {"value": "500000"}, "amount_mismatch"),
}


def _stripe_object(ref: str, total: str, currency: str, case: dict) -> tuple[str, dict]:
    case = dict(case)
    amount = to_minor(total, currency)
    charge_changes = case.pop("charge", None)
    currency = case.pop("currency", currency.lower())
    intent = stripe_payment_intent(ref, amount, currency.lower(), **case)
    if charge_changes is not None:
        intent["latest_charge"] = {
            **stripe_charge(amount=amount, currency=currency.lower()),
            **charge_changes,
        }
    return f"/v1/payment_intents/{ref}", intent


def _mollie_object(ref: str, total: str, currency: str, case: dict) -> tuple[str, dict]:
    plain = {k: v for k, v in case.items() if not isinstance(v, tuple) and k != "currency"}
    currency = case.get("currency", currency)  # a payment in another currency is that throughout
    payment = mollie_payment(ref, _decimals(total, currency), currency, **plain)
    for key, (value, other_currency) in ((k, v) for k, v in case.items() if isinstance(v, tuple)):
        payment[key] = {"value": value, "currency": other_currency or currency}
    return f"/v2/payments/{ref}", payment


def _paypal_object(ref: str, total: str, currency: str, case: dict) -> tuple[str, dict]:
    value, code = case.get("value", _decimals(total, currency)), case.get("currency", currency)
    capture = {**paypal_capture(value, code), **case.get("capture", {})}
    order = paypal_order(ref, value, code, captures=[capture])
    if case.get("authorized"):
        order["intent"] = "AUTHORIZE"
        order["purchase_units"][0]["payments"] = {
            "authorizations": [
                {
                    "id": "0VF52814937998046",
                    "status": "CREATED",
                    "amount": {"currency_code": code, "value": value},
                }
            ]
        }
    if case.get("voided"):
        order["status"] = "VOIDED"
        order["purchase_units"][0]["payments"] = {}
    if case.get("approved"):
        order["status"] = "APPROVED"
        del order["purchase_units"][0]["payments"]
    return f"/v2/checkout/orders/{ref}", order


def _decimals(total: str, currency: str) -> str:
    return f"{to_minor(total, currency) / 10 ** exponent(currency):.{exponent(currency)}f}"


PROVIDERS = {
    "stripe": (STRIPE, _stripe_object, "pi_3MtwBwLkdIwHu7ix"),
    "mollie": (MOLLIE, _mollie_object, "tr_5B8cwPMGnU"),
    "paypal": (PAYPAL, _paypal_object, "5O190127TN36"),
}


def shop_with_references(engine):
    return migrated_shop(engine, SchemaMapping.parse({"transactions": {"reference": "reference"}}))


def set_reference(shop, order_id, reference: str) -> None:
    t = shop.mapping.transactions
    table = shop.tables.transactions
    with shop.engine.begin() as conn:
        conn.execute(
            table.update().where(table.c[t.order_id] == order_id).values({t.reference: reference})
        )


def verifier_for(provider: str, fake: ProviderFake, **kw) -> GatewayVerifier:
    settings = GatewaySettings(
        provider=provider,
        base_url=fake.url,
        max_requests_per_second=1000,
        burst=50,
        retry_delay_seconds=0.01,
        connect_timeout_seconds=2,  # a shared test machine can be slow; no test waits on them
        read_timeout_seconds=2,
        **kw,
    )
    token = "client-id:client-secret" if provider == "paypal" else TOKEN
    return GatewayVerifier(settings, token)


def fake_for(provider: str) -> ProviderFake:
    oauth = ("client-id", "client-secret") if provider == "paypal" else None
    return ProviderFake(TOKEN, oauth_client=oauth)


def measure(engine, provider: str) -> tuple[dict[str, str], dict]:
    """Run once over one orphan per case; the outcome of each case as the run left it."""
    cases, build, prefix = PROVIDERS[provider]
    shop = shop_with_references(engine)
    fake = fake_for(provider)
    order_of = {}
    for n, (case, (total, currency, changes, _expected)) in enumerate(cases.items()):
        order_id = shop.orphan(amount=total, currency=currency)
        reference = f"{prefix}{n:04d}"
        set_reference(shop, order_id, reference)
        fake.put(*build(reference, total, currency, changes))
        order_of[case] = order_id
    outcomes = OutcomeLog()
    with fake, verifier_for(provider, fake) as verifier:
        Regularizer(engine, shop.schema, sleeper=no_sleep, verifier=verifier).run(
            RunOptions(sleep=0, limit=100), progress=outcomes
        )
        seen = fake.snapshot()
    by_order = {str(o.order_id): o for o in outcomes}
    measured = {}
    for case, order_id in order_of.items():
        outcome = by_order[str(order_id)]
        status = shop.status_of(order_id)
        if status == "completed":
            assert outcome.action == REGULARIZED
            measured[case] = FLIPPED
        elif outcome.action == INCONSISTENT:
            assert status == "pending" and outcome.kind == "provider_failed"
            measured[case] = outcome.hold_reason
        else:
            measured[case] = PENDING
    return measured, {"shop": shop, "order_of": order_of, "requests": seen}


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_each_provider_answer_flips_only_a_capture_of_the_right_amount_and_currency(
    engine, provider
):
    cases = PROVIDERS[provider][0]
    measured, seen = measure(engine, provider)
    assert measured == {case: expected for case, (*_rest, expected) in cases.items()}
    shop, order_of = seen["shop"], seen["order_of"]
    flipped = {str(order_of[c]) for c, v in measured.items() if v == FLIPPED}
    assert outbox_per_order(shop) == dict.fromkeys(flipped, 1)  # one event per flip, none else
    # A held order is quarantined as the provider's hold: a later run does not ask again.
    held = [order_of[c] for c, v in measured.items() if v not in (FLIPPED, PENDING)]
    assert all("provider_failed:" in audit_of(shop, i)[-1].reason for i in held)
    assert all(TOKEN not in r.path for r in seen["requests"])


def test_stripe_pins_its_api_version_and_expands_the_charge(engine):
    shop = shop_with_references(engine)
    order_id = shop.orphan()
    set_reference(shop, order_id, "pi_pinned")
    fake = fake_for("stripe")
    fake.put(*_stripe_object("pi_pinned", "49.90", "EUR", {}))
    with fake, verifier_for("stripe", fake, api_version="2024-06-20") as verifier:
        Regularizer(engine, shop.schema, sleeper=no_sleep, verifier=verifier).run(
            RunOptions(sleep=0)
        )
        (request,) = fake.snapshot()
    assert request.headers["stripe-version"] == "2024-06-20"
    assert request.path == "/v1/payment_intents/pi_pinned?expand%5B%5D=latest_charge"
    assert shop.status_of(order_id) == "completed"


def test_a_stripe_answer_without_its_charge_never_flips(engine):
    shop = shop_with_references(engine)
    order_id = shop.orphan()
    set_reference(shop, order_id, "pi_bare")
    fake = fake_for("stripe")
    fake.put(*_stripe_object("pi_bare", "49.90", "EUR", dict(latest_charge="ch_not_expanded")))
    with fake, verifier_for("stripe", fake) as verifier:
        summary = Regularizer(engine, shop.schema, sleeper=no_sleep, verifier=verifier).run(
            RunOptions(sleep=0)
        )
    assert (summary.regularized, shop.status_of(order_id)) == (0, "pending")


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_429_with_retry_after_is_honoured_before_the_provider_is_asked_again(provider):
    cases, build, prefix = PROVIDERS[provider]
    fake = fake_for(provider)
    fake.script.append(Reply(429, b"{}", {"Retry-After": "1"}))
    fake.put(*build(prefix + "r", "49.90", "EUR", {}))
    order = OrderRow(id=1, status="pending", total="49.90", currency="EUR")
    tx = TransactionRow(
        id=7, status="completed", amount="49.90", currency="EUR", reference=prefix + "r"
    )
    with fake, verifier_for(provider, fake) as verifier:
        answer = verifier.check(order, tx)
        asked = [r for r in fake.snapshot() if "oauth2" not in r.path]
    assert (answer.status, answer.amount_minor, answer.currency) == ("completed", 4990, "EUR")
    assert verifier.rate_limited_responses == 1
    assert [r.status for r in asked] == [429, 200]
    assert asked[1].at - asked[0].at >= 1.0  # nothing asked before Retry-After: 1 ran out


@pytest.mark.parametrize(
    ("unit", "amount", "currency", "expected"),
    [
        ("major", "49.90", "EUR", ("completed", None)),
        ("major", "40.00", "EUR", ("failed", "amount_mismatch")),
        ("major", "49.90", "USD", ("failed", "currency_mismatch")),
        ("minor", 4990, "EUR", ("completed", None)),
        ("minor", 49, "EUR", ("failed", "amount_mismatch")),
        ("minor", "4990", "EUR", ("unknown", None)),  # not an integer: never guessed
        ("major", None, "EUR", ("unknown", None)),
    ],
)
def test_generic_settings_compare_the_amount_and_currency_when_the_answer_carries_them(
    unit, amount, currency, expected
):
    from regularization_pipeline.core.decisions.verification import Verdict, apply_provider_answer

    fake = ProviderFake(TOKEN)
    body = {"data": {"status": "succeeded", "currency": currency}}
    if amount is not None:
        body["data"]["amount"] = amount
    fake.put("/payments/ref1", body)
    order = OrderRow(id=1, status="pending", total="49.90", currency="EUR")
    tx = TransactionRow(id=7, status="completed", amount="49.90", currency="EUR", reference="ref1")
    with (
        fake,
        verifier_for(
            "generic",
            fake,
            status_path="data.status",
            amount_path="data.amount",
            currency_path="data.currency",
            amount_unit=unit,
        ) as verifier,
    ):
        answer = verifier.check(order, tx)
    verdict = apply_provider_answer(
        Verdict(REGULARIZED, "completed transaction verified", tx), answer, order
    )
    outcome = {REGULARIZED: "completed", INCONSISTENT: "failed"}.get(verdict.action, "unknown")
    assert (outcome, verdict.hold_reason) == expected
