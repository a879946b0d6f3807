"""PayPal: an order of the Orders API v2 and its captures.

Follows https://developer.paypal.com/docs/api/orders/v2/#orders_get and the
capture object of https://developer.paypal.com/docs/api/payments/v2/. An order is
paid when its captures (``purchase_units[].payments.captures[]``) are
``COMPLETED``; ``REFUNDED`` and ``PARTIALLY_REFUNDED`` captures are money given
back, a ``PENDING`` capture held for ``BUYER_COMPLAINT`` or ``CHARGEBACK`` is a
dispute, and an order with authorizations but no capture is authorized only.
Amounts are ``{"currency_code": "USD", "value": "10.00"}``. PayPal authenticates
with OAuth client credentials: the token setting is ``client_id:client_secret``,
exchanged once per run at ``/v1/oauth2/token``.
"""

from __future__ import annotations

from typing import Any

from regularization_pipeline.core.provider.adapter import Request, quoted, reference_of, shown
from regularization_pipeline.core.provider.answers import HoldReason, ProviderAnswer
from regularization_pipeline.core.provider.answers import ProviderStatus as S
from regularization_pipeline.core.provider.money import minor_from_string
from regularization_pipeline.core.shop.rows import OrderRow, TransactionRow

TOKEN_PATH = "/v1/oauth2/token"  # noqa: S105 - a path, not a secret
_DISPUTE_REASONS = {"BUYER_COMPLAINT", "CHARGEBACK"}


class PayPalAdapter:
    name = "paypal"
    api_version = "v2"  # in the path

    def __init__(self, api_version: str | None = None):
        if api_version not in (None, "v2"):
            raise ValueError("PayPal's Orders API is v2")

    def headers(self, token: str | None) -> dict[str, str]:
        # The bearer token is the OAuth access token the verifier obtained (see oauth_token).
        return {"Authorization": f"Bearer {token}"} if token else {}

    def request(self, order: OrderRow, transaction: TransactionRow) -> Request:
        return Request(f"/v2/checkout/orders/{quoted(reference_of(transaction))}")

    def read(self, document: Any) -> ProviderAnswer:
        if not isinstance(document, dict) or not isinstance(document.get("purchase_units"), list):
            return ProviderAnswer(S.UNKNOWN, "the answer is not a PayPal order")
        status = document.get("status")
        if status == "VOIDED":
            return ProviderAnswer(S.FAILED, "PayPal order voided", HoldReason.CANCELED)
        payments = [
            (unit.get("payments") or {})
            for unit in document["purchase_units"]
            if isinstance(unit, dict)
        ]
        captures = [c for p in payments for c in (p.get("captures") or [])]
        authorizations = [a for p in payments for a in (p.get("authorizations") or [])]
        if not captures:
            if authorizations:
                return ProviderAnswer(
                    S.AUTHORIZED,
                    "PayPal order authorized, not captured",
                    HoldReason.AUTHORIZED_ONLY,
                )
            if status in ("CREATED", "SAVED", "APPROVED", "PAYER_ACTION_REQUIRED"):
                return ProviderAnswer(S.PENDING, f"PayPal order {status}")
            return ProviderAnswer(S.UNKNOWN, f"PayPal order {shown(status)!r} without captures")
        return _captured(captures)


def _captured(captures: list) -> ProviderAnswer:
    statuses = [c.get("status") if isinstance(c, dict) else None for c in captures]
    if "REFUNDED" in statuses:
        return ProviderAnswer(S.REFUNDED, "PayPal capture refunded", HoldReason.REFUNDED)
    if "PARTIALLY_REFUNDED" in statuses:
        return ProviderAnswer(
            S.REFUNDED, "PayPal capture partly refunded", HoldReason.PARTIALLY_REFUNDED
        )
    if "DECLINED" in statuses or "FAILED" in statuses:
        return ProviderAnswer(S.FAILED, "PayPal capture declined or failed", HoldReason.FAILED)
    for capture in captures:
        reason = (capture.get("status_details") or {}).get("reason")
        if capture.get("status") == "PENDING" and reason in _DISPUTE_REASONS:
            return ProviderAnswer(S.DISPUTED, "PayPal capture disputed", HoldReason.DISPUTED)
    if any(s != "COMPLETED" for s in statuses):
        return ProviderAnswer(S.PENDING, "PayPal capture not completed yet")
    currencies = {(c.get("amount") or {}).get("currency_code") for c in captures}
    if len(currencies) != 1 or not isinstance(next(iter(currencies)), str):
        return ProviderAnswer(S.UNKNOWN, "PayPal captures without one currency")
    currency = next(iter(currencies))
    amounts = [minor_from_string((c.get("amount") or {}).get("value"), currency) for c in captures]
    if any(a is None for a in amounts):
        return ProviderAnswer(S.UNKNOWN, "PayPal capture amounts that do not fit the currency")
    return ProviderAnswer(
        S.COMPLETED,
        "PayPal capture completed",
        amount_minor=sum(amounts),
        currency=currency.upper(),
    )
