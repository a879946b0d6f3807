"""The demo shop's OrderCompleted handlers: enrollment, notification, subscription activation.

They stand in for the Laravel listeners of the original system. The demo alone
registers them (``DEMO_PUBLISHER_ENV``: the python publisher with these handlers
named in REGULARIZATION_PYTHON_HANDLERS); the production package never does, so a
real shop's events stay in the outbox unless it chooses a publisher. Each writes one row to its own demo table in the database named by
``REGULARIZATION_DATABASE_URL`` (the demo shop when unset), keyed by the
event's idempotency key: delivery is at least once, so a redelivered event
must find its row and do nothing.
"""

from __future__ import annotations

import os
import threading

import sqlalchemy as sa

from regularization_pipeline.core.clock import utcnow
from regularization_pipeline.core.delivery.events import OrderCompleted
from regularization_pipeline.core.shop.engine import DATABASE_URL_ENV, create_app_engine

# Where `make demo` builds the embedded shop (relative to the working directory).
DEMO_DATABASE_URL = "sqlite:///.demo/shop.db"
# What the demo sets for its runs (`make demo`, `make dev` on the demo shop).
DEMO_PUBLISHER_ENV = {
    "REGULARIZATION_PUBLISHERS": "python",
    "REGULARIZATION_PYTHON_HANDLERS": ",".join(
        f"{__name__}:{name}" for name in ("enroll", "notify", "activate_subscription")
    ),
}

metadata = sa.MetaData()


def _effect_table(name: str) -> sa.Table:
    return sa.Table(
        name,
        metadata,
        sa.Column("idempotency_key", sa.String(128), primary_key=True),
        sa.Column("order_id", sa.String(64), nullable=False),
        sa.Column("event_id", sa.String(36), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )


enrollments = _effect_table("demo_enrollments")
notifications = _effect_table("demo_notifications")
subscriptions = _effect_table("demo_subscriptions")

_engines: dict[str, sa.Engine] = {}
_lock = threading.Lock()


def _engine() -> sa.Engine:
    """One engine per database URL, kept for the process."""
    url = os.environ.get(DATABASE_URL_ENV) or DEMO_DATABASE_URL
    with _lock:
        if url not in _engines:
            _engines[url] = create_app_engine(url)
        return _engines[url]


def _record_once(table: sa.Table, event: OrderCompleted) -> bool:
    """Insert the effect unless this event's key already has one; True when this call did it."""
    engine = _engine()
    # Checked on every call, not once per process: the shop may be rebuilt under a long-lived worker.
    table.create(engine, checkfirst=True)
    row = {
        "idempotency_key": event.idempotency_key,
        "order_id": event.order_id,
        "event_id": event.event_id,
        "created_at": utcnow(),
    }
    with engine.begin() as conn:
        if conn.execute(
            sa.select(table.c.idempotency_key).where(
                table.c.idempotency_key == row["idempotency_key"]
            )
        ).first():
            return False
        try:
            conn.execute(table.insert().values(row))
        except sa.exc.IntegrityError:  # a concurrent delivery of the same event got there first
            return False
    return True


def enroll(event: OrderCompleted) -> None:
    """Enroll the customer in what the order bought."""
    _record_once(enrollments, event)


def notify(event: OrderCompleted) -> None:
    """Queue the 'your order is complete' notification (the demo stores no address, only the order id)."""
    _record_once(notifications, event)


def activate_subscription(event: OrderCompleted) -> None:
    """Activate the subscription the order paid for."""
    _record_once(subscriptions, event)


def effect_counts(engine: sa.Engine) -> dict[str, int]:
    """Rows per demo table, for the demo's report and the tests."""
    metadata.create_all(engine)
    with engine.connect() as conn:
        return {
            table.name: conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
            for table in (enrollments, notifications, subscriptions)
        }
