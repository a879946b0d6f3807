"""Mollie: the payment object of the Payments API v2.

Follows https://docs.mollie.com/reference/get-payment and
https://docs.mollie.com/reference/status-changes. ``paid`` is the only status
whose money moved; a refund or chargeback leaves it ``paid`` and shows in
``amountRefunded`` / ``amountChargedBack``. ``authorized`` (pay-later methods)
is not captured. Amounts are ``{"currency": "EUR", "value": "10.00"}``, the value
a string with exactly the currency's number of decimals.
"""

from __future__ import annotations

from typing import Any

from regularization_pipeline.core.provider.adapter import Request, quoted, reference_of, shown
from regularization_pipeline.core.provider.answers import HoldReason, ProviderAnswer
from regularization_pipeline.core.provider.answers import ProviderStatus as S
from regularization_pipeline.core.provider.money import minor_from_string
from regularization_pipeline.core.shop.rows import OrderRow, TransactionRow

_FAILED = {
    "canceled": HoldReason.CANCELED,
    "expired": HoldReason.EXPIRED,
    "failed": HoldReason.FAILED,
}


class MollieAdapter:
    name = "mollie"
    api_version = "v2"  # in the path; Mollie has no version header

    def __init__(self, api_version: str | None = None):
        if api_version not in (None, "v2"):
            raise ValueError("Mollie's Payments API is v2")

    def headers(self, token: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"} if token else {}

    def request(self, order: OrderRow, transaction: TransactionRow) -> Request:
        return Request(f"/v2/payments/{quoted(reference_of(transaction))}")

    def read(self, document: Any) -> ProviderAnswer:
        if not isinstance(document, dict) or document.get("resource") != "payment":
            return ProviderAnswer(S.UNKNOWN, "the answer is not a Mollie payment")
        status = document.get("status")
        if status in _FAILED:
            return ProviderAnswer(S.FAILED, f"Mollie payment {status}", _FAILED[status])
        if status == "authorized":
            return ProviderAnswer(
                S.AUTHORIZED, "Mollie payment authorized, not captured", HoldReason.AUTHORIZED_ONLY
            )
        if status in ("open", "pending"):
            return ProviderAnswer(S.PENDING, f"Mollie payment {status}")
        if status != "paid":
            return ProviderAnswer(S.UNKNOWN, f"unrecognised Mollie status {shown(status)!r}")
        return _paid(document)


def _money(document: dict, key: str, currency: str) -> int | None:
    """Minor units of an amount field; 0 when Mollie leaves it out (nothing refunded)."""
    amount = document.get(key)
    if amount is None:
        return 0
    if not isinstance(amount, dict) or amount.get("currency") != currency:
        return None
    return minor_from_string(amount.get("value"), currency)


def _paid(document: dict) -> ProviderAnswer:
    amount = document.get("amount")
    currency = amount.get("currency") if isinstance(amount, dict) else None
    if not isinstance(currency, str):
        return ProviderAnswer(S.UNKNOWN, "Mollie payment without an amount")
    paid = minor_from_string(amount.get("value"), currency)
    refunded = _money(document, "amountRefunded", currency)
    charged_back = _money(document, "amountChargedBack", currency)
    if paid is None or refunded is None or charged_back is None:
        return ProviderAnswer(S.UNKNOWN, "Mollie amounts that do not fit the currency")
    if charged_back > 0:
        return ProviderAnswer(S.DISPUTED, "Mollie payment charged back", HoldReason.DISPUTED)
    if refunded >= paid > 0:
        return ProviderAnswer(S.REFUNDED, "Mollie payment refunded", HoldReason.REFUNDED)
    if refunded > 0:
        return ProviderAnswer(
            S.REFUNDED, "Mollie payment partly refunded", HoldReason.PARTIALLY_REFUNDED
        )
    return ProviderAnswer(
        S.COMPLETED, "Mollie payment paid", amount_minor=paid, currency=currency.upper()
    )
