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
from functools import lru_cache
from typing import Any

import sqlalchemy as sa

from regularization_pipeline.core.shop.engine import json_rowset
from regularization_pipeline.core.shop.tables import PENDING

EVENT_TYPE = "OrderCompleted"
PAYLOAD_VERSION = 1
SOURCE = "regularization_pipeline"

EVENT_ID_HEADER = "X-Regularization-Event-Id"
EVENT_TYPE_HEADER = "X-Regularization-Event-Type"
IDEMPOTENCY_HEADER = "Idempotency-Key"


IDEMPOTENCY_PREFIX = "order-completed:"


def idempotency_key(order_id: Any) -> str:
    return f"{IDEMPOTENCY_PREFIX}{order_id}"


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
        return payload_of(PythonForm(self))

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


# The payload and the outbox row are defined once, below, over a *form*: the values of one
# event in Python (:class:`PythonForm`, for an order decided on its own), or the columns of a
# batch's rows in SQL (:class:`SqlForm`, the database renders every row of a batch).


def payload_of(form: Any) -> dict[str, Any]:
    """The event's versioned payload, in ``form``'s terms."""
    return {
        "version": form.const(PAYLOAD_VERSION),
        "type": form.const(EVENT_TYPE),
        "event_id": form.field("event_id"),
        "idempotency_key": form.prefixed(IDEMPOTENCY_PREFIX, form.field("order_id")),
        "order_id": form.field("order_id"),
        "transaction_id": form.field("transaction_id"),
        "amount": form.field("amount"),
        "currency": form.field("currency"),
        "occurred_at": form.field("occurred_at"),
        "source": form.const(SOURCE),
        "run_id": form.field("run_id"),
    }


def outbox_fields_of(form: Any) -> dict[str, Any]:
    """The event's outbox row but its times, in ``form``'s terms."""
    return {
        "event_id": form.field("event_id"),
        "event_type": form.const(EVENT_TYPE),
        "idempotency_key": form.prefixed(IDEMPOTENCY_PREFIX, form.field("order_id")),
        "order_id": form.field("order_id"),
        "run_id": form.field("run_id"),
        "payload": form.document(payload_of(form)),
        "state": form.const(PENDING),
        "attempts": form.const(0),
    }


# The fields of OrderCompleted, in the order a batch's rows carry those that vary by order.
EVENT_FIELDS = ("event_id", "order_id", "transaction_id", "amount", "currency")


class PythonForm:
    """One event's values: the payload as Python renders it."""

    def __init__(self, event: OrderCompleted):
        self.event = event

    def field(self, name: str) -> Any:
        return getattr(self.event, name)

    def const(self, value: Any) -> Any:
        return value

    def prefixed(self, prefix: str, value: str) -> str:
        return prefix + value

    def document(self, parts: dict[str, Any]) -> str:
        return json.dumps(parts, sort_keys=True)


class SqlForm:
    """The payload as the database renders it, from SQL expressions of the event's fields.

    Its JSON text is not byte for byte Python's (PostgreSQL writes ``"key" : value``, SQLite
    no spaces): it parses to the same document, which is what every reader does. The bytes
    a webhook signs are rendered from the parsed payload (:func:`webhook_body`), never the
    stored text.
    """

    def __init__(self, dialect: sa.engine.Dialect, fields: dict[str, sa.ColumnElement]):
        self.dialect, self.fields = dialect, fields

    def field(self, name: str) -> sa.ColumnElement:
        return self.fields[name]

    def const(self, value: Any) -> sa.ColumnElement:
        return sa.literal(value)

    def prefixed(self, prefix: str, value: sa.ColumnElement) -> sa.ColumnElement:
        return sa.literal(prefix, sa.String) + sa.type_coerce(value, sa.String)

    def document(self, parts: dict[str, sa.ColumnElement]) -> sa.ColumnElement:
        pairs = [x for key in sorted(parts) for x in (sa.literal(key, sa.String), parts[key])]
        if self.dialect.name == "postgresql":
            return sa.cast(sa.func.json_build_object(*pairs), sa.Text)
        return sa.func.json_object(*pairs, type_=sa.Text)


def outbox_row(event: OrderCompleted, now: dt.datetime) -> dict[str, Any]:
    """The outbox insert for ``event``, due at once."""
    return {**outbox_fields(event), **outbox_times(now)}


def outbox_fields(event: OrderCompleted) -> dict[str, Any]:
    """The outbox insert for ``event`` but its times (:func:`outbox_times`, one for a whole batch)."""
    return outbox_fields_of(PythonForm(event))


def outbox_times(now: dt.datetime) -> dict[str, Any]:
    """An outbox row's times: due at once, created and updated ``now``."""
    return {"next_attempt_at": now, "created_at": now, "updated_at": now}


def occurred_at(now: dt.datetime) -> str:
    """An event's time as its payload gives it (naive UTC ``now``, marked UTC)."""
    return now.replace(tzinfo=dt.UTC).isoformat()


@lru_cache(maxsize=64)
def outbox_insert(
    outbox: sa.Table,
    dialect: sa.engine.Dialect,
    param: str = "p_events",
    where: sa.ColumnElement[bool] | None = None,
) -> sa.Insert:
    """The outbox rows of a batch, rendered by the database from the events in ``param``.

    ``param``: :func:`~regularization_pipeline.core.shop.engine.rows_as_json` of
    :func:`event_values` of each event; ``p_run``, ``p_occurred_at`` and ``p_now`` are
    the batch's run id, event time (:func:`occurred_at`) and naive UTC time. ``where``: a
    condition the rows are written on (the flip's count, in the same statement).
    """
    text = sa.String()
    v = json_rowset(dialect, [(name, text) for name in EVENT_FIELDS], param)
    fields = {name: v.c[name] for name in EVENT_FIELDS}
    fields["run_id"] = sa.bindparam("p_run", type_=text)
    fields["occurred_at"] = sa.bindparam("p_occurred_at", type_=text)
    row = outbox_fields_of(SqlForm(dialect, fields))
    now = sa.bindparam("p_now", type_=outbox.c.created_at.type)
    row.update({name: now for name in outbox_times(dt.datetime.min)})
    select = sa.select(*row.values()).select_from(v)
    return outbox.insert().from_select(list(row), select if where is None else select.where(where))


def event_values(event: OrderCompleted) -> tuple:
    """What a batch's outbox statement needs of ``event``: its fields that vary by order."""
    return tuple(getattr(event, name) for name in EVENT_FIELDS)


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
        occurred_at=occurred_at(now),
        run_id=run_id,
    )


def webhook_body(event: OrderCompleted) -> bytes:
    """The exact bytes POSTed and signed: compact JSON with sorted keys, UTF-8."""
    return json.dumps(
        event.payload(), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")
