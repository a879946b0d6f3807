"""OrderCompleted: the event, its outbox row, and its signed wire form.

The outbox row is inserted in the same database transaction as the order's
flip (``core/decisions/writes.py``), so an event exists if and only if the flip
committed; ``core/delivery/outbox.py`` delivers it after commit, through the publishers
of ``core/delivery/publishers.py``. Every consumer receives the idempotency key
``order-completed:<order id>``; webhooks carry an HMAC-SHA256 signature
(docs/events.md shows how a receiver checks it).
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from regularization_pipeline.core.shop.tables import PENDING

EVENT_TYPE = "OrderCompleted"
PAYLOAD_VERSION = 1
SOURCE = "regularization_pipeline"

EVENT_ID_HEADER = "X-Regularization-Event-Id"
EVENT_TYPE_HEADER = "X-Regularization-Event-Type"
IDEMPOTENCY_HEADER = "Idempotency-Key"


def idempotency_key(order_id: Any) -> str:
    return f"order-completed:{order_id}"


@dataclass(frozen=True)
class OrderCompleted:
    """The event every consumer receives; ``payload()`` is its versioned JSON form."""

    event_id: str
    order_id: str
    transaction_id: str | None
    amount: str | None
    currency: str | None
    occurred_at: str
    run_id: str

    @property
    def idempotency_key(self) -> str:
        return idempotency_key(self.order_id)

    def payload(self) -> dict[str, Any]:
        return {
            "version": PAYLOAD_VERSION,
            "type": EVENT_TYPE,
            "event_id": self.event_id,
            "idempotency_key": self.idempotency_key,
            "order_id": self.order_id,
            "transaction_id": self.transaction_id,
            "amount": self.amount,
            "currency": self.currency,
            "occurred_at": self.occurred_at,
            "source": SOURCE,
            "run_id": self.run_id,
        }

    @classmethod
    def from_payload(cls, data: Mapping[str, Any]) -> OrderCompleted:
        return cls(
            **{
                k: data.get(k)
                for k in (
                    "event_id",
                    "order_id",
                    "transaction_id",
                    "amount",
                    "currency",
                    "occurred_at",
                    "run_id",
                )
            }
        )

    @classmethod
    def from_json(cls, text: Any) -> OrderCompleted:
        """The event an outbox row's payload holds; ValueError (in our words) when it holds none."""
        try:
            data = json.loads(text)
        except (TypeError, ValueError):
            raise ValueError("the outbox row's payload is not JSON") from None
        if not isinstance(data, dict) or not all(
            isinstance(data.get(key), str) and data.get(key) for key in ("event_id", "order_id")
        ):
            raise ValueError("the outbox row's payload is not an OrderCompleted event")
        return cls.from_payload(data)


def outbox_row(event: OrderCompleted, now: dt.datetime) -> dict[str, Any]:
    """The outbox insert for ``event``, due at once."""
    return {**outbox_fields(event), **outbox_times(now)}


def outbox_fields(event: OrderCompleted) -> dict[str, Any]:
    """The outbox insert for ``event`` but its times (:func:`outbox_times`, one for a whole batch)."""
    return {
        "event_id": event.event_id,
        "event_type": EVENT_TYPE,
        "idempotency_key": event.idempotency_key,
        "order_id": event.order_id,
        "run_id": event.run_id,
        "payload": json.dumps(event.payload(), sort_keys=True),
        "state": PENDING,
        "attempts": 0,
    }


def outbox_times(now: dt.datetime) -> dict[str, Any]:
    """An outbox row's times: due at once, created and updated ``now``."""
    return {"next_attempt_at": now, "created_at": now, "updated_at": now}


def new_event(
    order_id: Any,
    transaction_id: Any,
    amount: Any,
    currency: str | None,
    run_id: str,
    now: dt.datetime,
) -> OrderCompleted:
    return OrderCompleted(
        event_id=str(uuid.uuid4()),
        order_id=str(order_id),
        transaction_id=None if transaction_id is None else str(transaction_id),
        amount=None if amount is None else str(amount),
        currency=currency,
        occurred_at=now.replace(tzinfo=dt.UTC).isoformat(),
        run_id=run_id,
    )


def webhook_body(event: OrderCompleted) -> bytes:
    """The exact bytes POSTed and signed: compact JSON with sorted keys, UTF-8."""
    return json.dumps(
        event.payload(), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")
