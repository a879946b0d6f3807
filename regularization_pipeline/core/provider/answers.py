"""The verifier contract: what a payment provider can say about a transaction, and the errors
when it cannot say anything. Adapters map their provider's own objects onto these."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from regularization_pipeline.core.shop.rows import OrderRow, TransactionRow


class ProviderStatus(StrEnum):
    """The provider's word on a payment, in our terms (not an inconsistency kind: a provider
    that says ``failed`` makes the order held as ``provider_failed``)."""

    COMPLETED = "completed"
    FAILED = "failed"
    REFUNDED = "refunded"
    DISPUTED = "disputed"
    AUTHORIZED = "authorized"  # authorized, not captured: no money moved yet
    PENDING = "pending"
    UNKNOWN = "unknown"


# The provider's words that hold the order (never flipped, a human decides).
HOLDING_STATUSES = frozenset(
    {
        ProviderStatus.FAILED,
        ProviderStatus.REFUNDED,
        ProviderStatus.DISPUTED,
        ProviderStatus.AUTHORIZED,
    }
)


class HoldReason(StrEnum):
    """Why the provider's answer holds an order: the machine-readable field of a
    ``provider_failed`` outcome (the audit reason text is for people)."""

    FAILED = "failed"
    CANCELED = "canceled"
    EXPIRED = "expired"
    REFUNDED = "refunded"
    PARTIALLY_REFUNDED = "partially_refunded"
    DISPUTED = "disputed"
    AUTHORIZED_ONLY = "authorized_only"
    AMOUNT_MISMATCH = "amount_mismatch"
    CURRENCY_MISMATCH = "currency_mismatch"
    REQUEST_REFUSED = "request_refused"  # 401/403 about one transaction, after others were answered


@dataclass(frozen=True)
class ProviderAnswer:
    """The provider's word on one transaction.

    ``reason`` says why a holding status holds (a :class:`HoldReason`). ``amount_minor`` and
    ``currency`` are what the provider captured, when its answer carries them: a completed
    answer whose amount or currency differs from the order's holds the order.
    """

    status: str
    detail: str = ""
    reason: str | None = None
    amount_minor: int | None = None
    currency: str | None = None

    @property
    def holds(self) -> bool:
        return self.status in HOLDING_STATUSES


class ProviderError(Exception):
    """The provider could not give an answer about a transaction."""


class ProviderUnavailableError(ProviderError):
    """Transport errors, timeouts, 5xx or rate limiting that outlasted the retries.

    Not the order's fault: the order is left for the next run without counting a
    failure (an outage must not quarantine good orders), and the run stops asking.
    """


class ProviderRejectedError(ProviderError):
    """The provider refused our credentials (401, 403): a configuration problem that stops the run."""


class PaymentVerifier(Protocol):
    """Asks the payment provider about a transaction; raises a :class:`ProviderError` when it cannot answer."""

    def check(self, order: OrderRow, transaction: TransactionRow) -> ProviderAnswer: ...
