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
    PENDING = "pending"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class ProviderAnswer:
    """The provider's word on one transaction. Anything but completed/failed/refunded leaves the order alone."""

    status: str
    detail: str = ""


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
