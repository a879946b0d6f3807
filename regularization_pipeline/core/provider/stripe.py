"""Stripe: the PaymentIntent, with its latest charge expanded.

Follows https://docs.stripe.com/api/payment_intents/object and
https://docs.stripe.com/api/charges/object. A refunded PaymentIntent keeps its
status ``succeeded``: the refund lives on the charge (``refunded``,
``amount_refunded``), and so does a dispute (``disputed``). ``requires_capture``
is an authorization whose money has not moved. Amounts are integers in the
currency's minor units (https://docs.stripe.com/currencies#zero-decimal);
currencies are lower-case ISO codes.
"""

from __future__ import annotations

from typing import Any

from regularization_pipeline.core.provider.adapter import Request, quoted, reference_of, shown
from regularization_pipeline.core.provider.answers import HoldReason, ProviderAnswer
from regularization_pipeline.core.provider.answers import ProviderStatus as S
from regularization_pipeline.core.provider.money import minor_from_integer
from regularization_pipeline.core.shop.rows import OrderRow, TransactionRow

# The API version every request pins (Stripe-Version header): the shape read below.
STRIPE_API_VERSION = "2024-06-20"

_PENDING = {"requires_confirmation", "requires_action", "processing"}


class StripeAdapter:
    name = "stripe"

    def __init__(self, api_version: str | None = None):
        self.api_version = api_version or STRIPE_API_VERSION

    def headers(self, token: str | None) -> dict[str, str]:
        headers = {"Stripe-Version": self.api_version}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def request(self, order: OrderRow, transaction: TransactionRow) -> Request:
        path = f"/v1/payment_intents/{quoted(reference_of(transaction))}"
        return Request(path, [("expand[]", "latest_charge")])

    def read(self, document: Any) -> ProviderAnswer:
        if not isinstance(document, dict) or document.get("object") != "payment_intent":
            return ProviderAnswer(S.UNKNOWN, "the answer is not a Stripe PaymentIntent")
        status = document.get("status")
        if status == "canceled":
            return ProviderAnswer(S.FAILED, "PaymentIntent canceled", HoldReason.CANCELED)
        if status == "requires_capture":
            return ProviderAnswer(
                S.AUTHORIZED, "PaymentIntent authorized, not captured", HoldReason.AUTHORIZED_ONLY
            )
        if status == "requires_payment_method":
            if document.get("last_payment_error"):
                return ProviderAnswer(S.FAILED, "the payment attempt failed", HoldReason.FAILED)
            return ProviderAnswer(S.PENDING, "PaymentIntent awaits a payment method")
        if status in _PENDING:
            return ProviderAnswer(S.PENDING, f"PaymentIntent status {status}")
        if status != "succeeded":
            return ProviderAnswer(S.UNKNOWN, f"unrecognised PaymentIntent status {shown(status)!r}")
        return _succeeded(document)


def _succeeded(intent: dict) -> ProviderAnswer:
    received = minor_from_integer(intent.get("amount_received"))
    currency = intent.get("currency")
    charge = intent.get("latest_charge")
    if received is None or not isinstance(currency, str):
        return ProviderAnswer(S.UNKNOWN, "PaymentIntent without amount_received or currency")
    if not isinstance(charge, dict):
        # Without the charge a refund or dispute cannot be ruled out: never guess.
        return ProviderAnswer(S.UNKNOWN, "PaymentIntent without its expanded latest_charge")
    refunded = minor_from_integer(charge.get("amount_refunded"))
    if refunded is None:
        return ProviderAnswer(S.UNKNOWN, "charge without amount_refunded")
    if charge.get("disputed") is True:
        return ProviderAnswer(S.DISPUTED, "the charge is disputed", HoldReason.DISPUTED)
    if charge.get("refunded") is True or (refunded and refunded >= received):
        return ProviderAnswer(S.REFUNDED, "the charge is refunded", HoldReason.REFUNDED)
    if refunded > 0:
        return ProviderAnswer(
            S.REFUNDED, "the charge is partly refunded", HoldReason.PARTIALLY_REFUNDED
        )
    if charge.get("captured") is False or charge.get("status") != "succeeded":
        return ProviderAnswer(S.UNKNOWN, "the latest charge is not a captured, succeeded charge")
    return ProviderAnswer(
        S.COMPLETED,
        "PaymentIntent succeeded",
        amount_minor=received,
        currency=currency.upper(),
    )
