"""The words of a decision: what the audit trail records for an order and what a run counts,
and the kinds of inconsistency it reports (``audit.kind``).

One definition each; the audit table stores them, the UI and the CLI show them, the held
counts and the metadata keys are built from them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# One audit row per decision the pipeline takes on an order.
REGULARIZED = "regularized"
SKIPPED = "skipped"
FAILED = "failed"
QUARANTINED = "quarantined"
INCONSISTENT = "inconsistent"
DRY_RUN = "dry-run"
RELEASED = "released"
AUDIT_ACTIONS = (REGULARIZED, SKIPPED, FAILED, QUARANTINED, INCONSISTENT, DRY_RUN, RELEASED)

# Kinds of inconsistency, each a stable key for metadata, alerts and the audit row's kind.
AMOUNT_MISMATCH = "amount_mismatch"
CURRENCY_MISMATCH = "currency_mismatch"
INVALID_AMOUNT = "invalid_amount"
DOUBLE_CHARGE = "double_charge"
PAID_BUT_CLOSED = "paid_but_cancelled"
MISSING_ORDER = "missing_order"
UNDATED_PAYMENT = "undated_payment"  # completed, but no completion time: no grace period can apply
PROVIDER_FAILED = "provider_failed"  # only known by asking the provider, never by SQL
INCONSISTENCY_KINDS = (
    AMOUNT_MISMATCH,
    CURRENCY_MISMATCH,
    INVALID_AMOUNT,
    DOUBLE_CHARGE,
    PAID_BUT_CLOSED,
    MISSING_ORDER,
    UNDATED_PAYMENT,
    PROVIDER_FAILED,
)

# Why a pending, paid order is held for a human (``detection.held``): an inconsistency, or a
# quarantine after repeated failures.
HELD_REASONS = (*INCONSISTENCY_KINDS, QUARANTINED)


def held_metadata(held: dict[str, int]) -> dict[str, int]:
    """``held_orders`` (all reasons) and ``held_orders_<reason>``: stable keys for metadata."""
    return {"held_orders": sum(held.values())} | {
        f"held_orders_{reason}": held.get(reason, 0) for reason in HELD_REASONS
    }


# Two reasons the run's count reads (a lock held elsewhere does not count against the limit).
LOCKED_ELSEWHERE = "order is locked by another worker"
PROVIDER_UNAVAILABLE = "provider unavailable: left for the next run"


@dataclass(frozen=True)
class OrderOutcome:
    """What a run did to one order, as it counts it: the action, its reason and its fields."""

    order_id: Any
    action: str
    reason: str
    transaction_id: Any = None
    attempt: int = 0
    kind: str | None = None  # the inconsistency kind of an INCONSISTENT outcome, when known
    hold_reason: str | None = None  # why the provider's answer holds the order (HoldReason)

    @property
    def acted(self) -> bool:
        """Whether this outcome counts against the run's limit (a lock held elsewhere does not)."""
        return not (self.action == SKIPPED and self.reason == LOCKED_ELSEWHERE)
