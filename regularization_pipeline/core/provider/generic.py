"""Any other provider: a path template, a status path and lists of status values.

The answer's amount and currency are compared with the order's too, when
``amount_path`` and ``currency_path`` say where they are (``amount_unit`` says
whether the amount is in minor units, as Stripe and Adyen give it, or a decimal in
major units, as Mollie and PayPal give it).
"""

from __future__ import annotations

from typing import Any

from regularization_pipeline.core.provider.adapter import (
    MISSING,
    Request,
    dig,
    quoted,
    reference_of,
    shown,
)
from regularization_pipeline.core.provider.answers import HoldReason, ProviderAnswer
from regularization_pipeline.core.provider.answers import ProviderStatus as S
from regularization_pipeline.core.provider.money import minor_from_integer, to_minor
from regularization_pipeline.core.shop.rows import OrderRow, TransactionRow

_HOLD_REASONS = {S.FAILED: HoldReason.FAILED, S.REFUNDED: HoldReason.REFUNDED}


class GenericAdapter:
    name = "generic"

    def __init__(self, settings: Any):  # GatewaySettings (gateway.py imports this module)
        self.settings = settings
        self.api_version = settings.api_version

    def headers(self, token: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"} if token else {}

    def request(self, order: OrderRow, transaction: TransactionRow) -> Request:
        path = self.settings.path_template.format(
            reference=quoted(reference_of(transaction)),
            transaction_id=quoted(transaction.id),
            order_id=quoted(order.id),
        )
        return Request(path)

    def read(self, document: Any) -> ProviderAnswer:
        s = self.settings
        value = dig(document, s.status_path)
        if value is MISSING:
            return ProviderAnswer(
                S.UNKNOWN, f"no status at {s.status_path!r} in the provider's answer"
            )
        mapped = s.classify(value)
        if mapped == S.UNKNOWN:
            return ProviderAnswer(S.UNKNOWN, f"unrecognised provider status {shown(value)!r}")
        detail = f"provider status {shown(value)!r}"
        if mapped != S.COMPLETED:
            return ProviderAnswer(mapped, detail, _HOLD_REASONS.get(mapped))
        if s.amount_path is None:
            return ProviderAnswer(S.COMPLETED, detail)
        return self._with_amount(document, detail)

    def _with_amount(self, document: Any, detail: str) -> ProviderAnswer:
        s = self.settings
        currency = dig(document, s.currency_path) if s.currency_path else MISSING
        amount = dig(document, s.amount_path)
        if not isinstance(currency, str) or amount is MISSING:
            # Configured to carry them, the answer does not: never guess.
            return ProviderAnswer(S.UNKNOWN, "the provider's answer lacks its amount or currency")
        if s.amount_unit == "minor":
            minor = minor_from_integer(amount)
        else:
            minor = to_minor(amount, currency) if isinstance(amount, (str, int, float)) else None
        if minor is None:
            return ProviderAnswer(S.UNKNOWN, "the provider's amount does not fit its currency")
        return ProviderAnswer(S.COMPLETED, detail, amount_minor=minor, currency=currency.upper())
