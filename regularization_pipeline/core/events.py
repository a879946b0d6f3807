"""OrderCompleted events: the outbox row written with the flip, and its delivery after commit.

The outbox row is inserted in the same database transaction as the order's
flip, so an event exists if and only if the flip committed. Delivery happens
later, outside any row lock: the dispatcher *claims* due rows with a lease
(``lease_owner``, ``lease_expires_at``) in a short transaction, delivers them,
then records the outcome with a compare-and-set on its own lease. A crashed
dispatcher's claim expires and another one takes the rows over.

Delivery is at least once. Every publisher receives the idempotency key
``order-completed:<order id>``, and each publisher's success is recorded in
``event_deliveries`` so a retry never re-runs a publisher that already
succeeded.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import random
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Literal, Protocol

import httpx
import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from regularization_pipeline.core.db import supports_skip_locked
from regularization_pipeline.core.detection import utcnow
from regularization_pipeline.core.errors import ConfigurationError
from regularization_pipeline.core.ratelimit import parse_retry_after
from regularization_pipeline.core.schema import validate_or_explain
from regularization_pipeline.core.tables import DEAD, DELIVERED, PENDING, OwnedTables

log = logging.getLogger("regularization_pipeline.events")

EVENT_TYPE = "OrderCompleted"
PAYLOAD_VERSION = 1
SOURCE = "regularization_pipeline"
HANDLER_ENTRY_POINT_GROUP = "regularization_pipeline.order_completed"

# Webhook headers (docs/events.md shows how a receiver checks them).
SIGNATURE_HEADER = "X-Regularization-Signature"
EVENT_ID_HEADER = "X-Regularization-Event-Id"
EVENT_TYPE_HEADER = "X-Regularization-Event-Type"
IDEMPOTENCY_HEADER = "Idempotency-Key"
# A Retry-After longer than this is treated as this: a misconfigured receiver
# must not park an event for months.
MAX_RETRY_AFTER_SECONDS = 86_400.0


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


def outbox_row(event: OrderCompleted, now: dt.datetime) -> dict[str, Any]:
    """The outbox insert for ``event``, due at once."""
    return {
        "event_id": event.event_id,
        "event_type": EVENT_TYPE,
        "idempotency_key": event.idempotency_key,
        "order_id": event.order_id,
        "run_id": event.run_id,
        "payload": json.dumps(event.payload(), sort_keys=True),
        "state": PENDING,
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
        "updated_at": now,
    }


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


# --- publishers --------------------------------------------------------------------


class PermanentDeliveryError(Exception):
    """The consumer refused the event for good (e.g. HTTP 400): dead-letter it, do not retry."""


class RetryableDeliveryError(Exception):
    """A transient failure; ``retry_after`` (seconds) overrides the backoff when the consumer asked."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class Publisher(Protocol):
    name: str

    def publish(self, event: OrderCompleted) -> None: ...


@dataclass
class PythonHandlersPublisher:
    """Calls in-process handlers, each recorded separately so a retry skips those that succeeded."""

    handlers: Mapping[str, Callable[[OrderCompleted], None]]
    name: str = "python"

    def sub_publishers(self) -> list[Publisher]:
        return [_HandlerPublisher(f"python:{key}", fn) for key, fn in sorted(self.handlers.items())]

    def publish(
        self, event: OrderCompleted
    ) -> None:  # pragma: no cover - expanded by the dispatcher
        for pub in self.sub_publishers():
            pub.publish(event)


@dataclass
class _HandlerPublisher:
    name: str
    fn: Callable[[OrderCompleted], None]

    def publish(self, event: OrderCompleted) -> None:
        self.fn(event)


def load_entry_point_handlers(
    group: str = HANDLER_ENTRY_POINT_GROUP,
) -> dict[str, Callable[[OrderCompleted], None]]:
    """Handlers installed under the entry-point group, by entry-point name."""
    return {ep.name: ep.load() for ep in entry_points(group=group)}


class OutboxOnlyPublisher:
    """Delivers nothing: the application consumes the outbox table itself (docs/events.md).

    A dispatcher whose only publisher is this one claims nothing, so every row
    stays ``pending`` until the application marks it ``delivered``.
    """

    name = "outbox"
    consumes_outbox = True

    def publish(self, event: OrderCompleted) -> None:
        return None


def expand_publishers(publishers: Sequence[Any]) -> list[Publisher]:
    expanded: list[Publisher] = []
    for pub in publishers:
        expanded.extend(pub.sub_publishers() if hasattr(pub, "sub_publishers") else [pub])
    names = [p.name for p in expanded]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        # Outcomes are recorded by name: two publishers sharing one would skip each other.
        raise ConfigurationError(f"publishers: duplicate publisher name(s) {duplicates}")
    return expanded


def webhook_body(event: OrderCompleted) -> bytes:
    """The exact bytes POSTed and signed: compact JSON with sorted keys, UTF-8."""
    return json.dumps(
        event.payload(), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")


def sign(secret: str | bytes, timestamp: int, body: bytes) -> str:
    """HMAC-SHA256 hex over ``f"{timestamp}.{body}"``; the header is ``t=<timestamp>,v1=<hex>``."""
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    return hmac.new(key, str(timestamp).encode("ascii") + b"." + body, hashlib.sha256).hexdigest()


def verify_signature(
    secret: str | bytes,
    header: str | None,
    body: bytes,
    *,
    now: float | None = None,
    tolerance_seconds: float = 300.0,
) -> bool:
    """What a Python receiver runs: constant-time compare, and a timestamp no older than the tolerance."""
    if not header:
        return False
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        parts.setdefault(key, []).append(value)
    try:
        timestamp = int(parts.get("t", [""])[0])
    except ValueError:
        return False
    now = time.time() if now is None else now
    if abs(now - timestamp) > tolerance_seconds:
        return False
    expected = sign(secret, timestamp, body)
    return any(hmac.compare_digest(expected, candidate) for candidate in parts.get("v1", []))


def _snippet(text: str, limit: int = 200) -> str:
    """A response body fit for ``last_error``: one line, bounded, no control characters."""
    flat = " ".join(text.split())
    return flat[:limit] + ("..." if len(flat) > limit else "")


class WebhookPublisher:
    """POSTs the signed OrderCompleted payload to the application's webhook URL.

    Outcomes: 2xx delivered; 409 delivered as well (the receiver says it
    already processed this idempotency key, which is what a duplicate
    delivery should get); 408, 429, 5xx, timeouts and connection errors are
    retried, honouring ``Retry-After``; any other status (3xx included:
    a signed body is never sent on to a redirect target) is permanent and
    dead-letters the event with the status and the start of the response.
    """

    def __init__(
        self,
        url: str,
        secret: str,
        *,
        connect_timeout_seconds: float = 3.0,
        read_timeout_seconds: float = 10.0,
        name: str = "webhook",
        client: httpx.Client | None = None,
        clock: Callable[[], float] = time.time,
    ):
        if not url.startswith(("http://", "https://")):
            raise ConfigurationError("webhook_url must be an http:// or https:// URL")
        if not secret:
            raise ConfigurationError("webhook_secret is empty: deliveries must be signed")
        self.url = url
        self.name = name
        self._secret = secret.encode("utf-8")
        self.clock = clock
        self.timeout = httpx.Timeout(
            connect=connect_timeout_seconds,
            read=read_timeout_seconds,
            write=read_timeout_seconds,
            pool=connect_timeout_seconds,
        )
        self._owns_client = client is None
        self.client = client or httpx.Client(
            timeout=self.timeout,
            follow_redirects=False,
            headers={"User-Agent": f"{SOURCE}/webhook"},
        )

    @property
    def max_seconds(self) -> float:
        """An upper bound of one delivery on a well-behaved socket: the dispatcher's lease must outlast it."""
        t = self.timeout
        return float((t.connect or 0) + (t.pool or 0) + (t.write or 0) + (t.read or 0))

    def headers(self, event: OrderCompleted, body: bytes) -> dict[str, str]:
        timestamp = int(self.clock())
        return {
            "Content-Type": "application/json",
            IDEMPOTENCY_HEADER: event.idempotency_key,
            EVENT_ID_HEADER: event.event_id,
            EVENT_TYPE_HEADER: EVENT_TYPE,
            SIGNATURE_HEADER: f"t={timestamp},v1={sign(self._secret, timestamp, body)}",
        }

    def publish(self, event: OrderCompleted) -> None:
        body = webhook_body(event)
        try:
            response = self.client.post(
                self.url, content=body, headers=self.headers(event, body), timeout=self.timeout
            )
        except httpx.TimeoutException as exc:
            raise RetryableDeliveryError(f"webhook timed out ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            # The exception text is the socket error; the URL stays out of last_error and logs.
            raise RetryableDeliveryError(f"webhook unreachable ({type(exc).__name__})") from exc
        status = response.status_code
        if 200 <= status < 300 or status == 409:
            return
        detail = f"webhook answered HTTP {status}: {_snippet(response.text)}"
        if status in (408, 429) or status >= 500:
            raise RetryableDeliveryError(
                detail, retry_after=parse_retry_after(response.headers.get("Retry-After"))
            )
        raise PermanentDeliveryError(detail)

    def close(self) -> None:
        if self._owns_client:
            self.client.close()


# --- publishers from settings ------------------------------------------------------------

PublisherKind = Literal["webhook", "python", "outbox"]


class PublisherSettings(BaseModel):
    """Who receives each OrderCompleted event; the Dagster resource builds these from its config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kinds: list[PublisherKind] = Field(
        default_factory=lambda: ["python"],
        min_length=1,
        description="'webhook' (signed HTTP POST), 'python' (handlers under the entry-point group), "
        "'outbox' (the application reads the outbox table itself; cannot be combined with the others).",
    )
    webhook_url: str | None = Field(
        None, description="Where OrderCompleted is POSTed (http:// or https://)."
    )
    webhook_secret: SecretStr | None = Field(
        None, description="HMAC-SHA256 signing secret shared with the receiver."
    )
    connect_timeout_seconds: float = Field(3.0, gt=0, le=60, description="Webhook connect timeout.")
    read_timeout_seconds: float = Field(
        10.0, gt=0, le=300, description="Webhook read timeout (per read)."
    )
    handler_entry_point_group: str = Field(
        HANDLER_ENTRY_POINT_GROUP, description="Entry-point group of the python handlers."
    )

    @model_validator(mode="after")
    def _coherent(self) -> PublisherSettings:
        if len(set(self.kinds)) != len(self.kinds):
            raise ValueError("kinds: each publisher kind may appear once")
        if "outbox" in self.kinds and len(self.kinds) > 1:
            raise ValueError(
                "kinds: 'outbox' means the application consumes the table itself; it cannot be combined"
            )
        if "webhook" in self.kinds:
            if not self.webhook_url or not self.webhook_url.startswith(("http://", "https://")):
                raise ValueError(
                    "webhook_url: required for the webhook publisher, as an http:// or https:// URL"
                )
            if self.webhook_secret is None or len(self.webhook_secret.get_secret_value()) < 16:
                raise ValueError(
                    "webhook_secret: required for the webhook publisher, at least 16 characters"
                )
        return self

    @classmethod
    def parse(cls, **values: Any) -> PublisherSettings:
        """Validate, naming every offending field (never its value) in one ConfigurationError."""
        return validate_or_explain(cls, values, "publisher settings")


def build_publishers(
    settings: PublisherSettings,
    handlers: Mapping[str, Callable[[OrderCompleted], None]] | None = None,
) -> list[Any]:
    """The publishers ``settings`` names, in order. ``handlers`` replaces the entry-point lookup (tests)."""
    built: list[Any] = []
    for kind in settings.kinds:
        if kind == "webhook":
            built.append(
                WebhookPublisher(
                    settings.webhook_url or "",
                    settings.webhook_secret.get_secret_value() if settings.webhook_secret else "",
                    connect_timeout_seconds=settings.connect_timeout_seconds,
                    read_timeout_seconds=settings.read_timeout_seconds,
                )
            )
        elif kind == "python":
            found = (
                handlers
                if handlers is not None
                else load_entry_point_handlers(settings.handler_entry_point_group)
            )
            built.append(PythonHandlersPublisher(dict(found)))
        else:
            built.append(OutboxOnlyPublisher())
    return built


def close_publishers(publishers: Sequence[Any]) -> None:
    """Release the connection pools of publishers that hold one."""
    for pub in publishers:
        close = getattr(pub, "close", None)
        if callable(close):
            close()


# --- dispatcher --------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 8
    base_delay_seconds: float = 30.0
    max_delay_seconds: float = 3600.0
    jitter: float = 0.2  # +/- 20 % so a burst of failures does not retry in lockstep

    def delay(self, attempts: int, rng: random.Random) -> float:
        raw = min(self.base_delay_seconds * (2 ** max(attempts - 1, 0)), self.max_delay_seconds)
        return raw * (1 + rng.uniform(-self.jitter, self.jitter))


@dataclass
class DispatchSummary:
    delivered: int = 0
    retried: int = 0
    dead: int = 0
    lag_seconds: list[float] = field(default_factory=list)

    def merge(self, other: DispatchSummary) -> None:
        self.delivered += other.delivered
        self.retried += other.retried
        self.dead += other.dead
        self.lag_seconds.extend(other.lag_seconds)


class OutboxDispatcher:
    """Delivers due outbox rows to every publisher, with leases, backoff and a dead letter."""

    def __init__(
        self,
        engine: sa.Engine,
        tables: OwnedTables,
        publishers: Sequence[Any],
        *,
        retry: RetryPolicy | None = None,
        lease_seconds: float = 120.0,
        owner: str | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
        rng: random.Random | None = None,
    ):
        self.engine = engine
        self.tables = tables
        self.publishers = expand_publishers(publishers)
        # Outbox mode: the application consumes and marks the rows itself.
        self.consumes_outbox = bool(self.publishers) and all(
            getattr(p, "consumes_outbox", False) for p in self.publishers
        )
        self.retry = retry or RetryPolicy()
        budget = sum(float(getattr(p, "max_seconds", 0.0)) for p in self.publishers)
        if lease_seconds <= budget:
            # A lease that can expire mid-delivery lets a second dispatcher deliver the same attempt.
            raise ConfigurationError(
                f"lease_seconds ({lease_seconds:g}) must exceed the publishers' worst-case delivery time ({budget:g}s)"
            )
        self.lease = dt.timedelta(seconds=lease_seconds)
        self.owner = owner or f"dispatcher-{uuid.uuid4()}"
        self.clock = clock
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not security

    def claim(
        self, batch_size: int, event_ids: Sequence[str] | None = None, after_id: int = 0
    ) -> list[sa.Row]:
        """Lease up to ``batch_size`` due events with an id above ``after_id``, in one short transaction."""
        ob = self.tables.outbox
        now = self.clock()
        due = [
            ob.c.state == PENDING,
            ob.c.id > after_id,
            ob.c.next_attempt_at <= now,
            sa.or_(ob.c.lease_expires_at.is_(None), ob.c.lease_expires_at < now),
        ]
        if event_ids is not None:
            due.append(ob.c.event_id.in_(list(event_ids)))
        with self.engine.begin() as conn:
            pick = sa.select(ob.c.id).where(*due).order_by(ob.c.id).limit(batch_size)
            if supports_skip_locked(conn):
                pick = pick.with_for_update(skip_locked=True)
            ids = list(conn.execute(pick).scalars())
            if not ids:
                return []
            # The conditions are repeated so that, without row locks (SQLite), the
            # update is still a compare-and-set: a row leased meanwhile is not taken.
            conn.execute(
                ob.update()
                .where(ob.c.id.in_(ids), *due)
                .values(lease_owner=self.owner, lease_expires_at=now + self.lease, updated_at=now)
            )
            return list(
                conn.execute(
                    sa.select(ob).where(ob.c.id.in_(ids), ob.c.lease_owner == self.owner)
                ).all()
            )

    def dispatch(
        self,
        batch_size: int = 100,
        max_batches: int | None = None,
        event_ids: Sequence[str] | None = None,
    ) -> DispatchSummary:
        """Deliver due events, each at most once per call.

        The claims walk the outbox by id, so an event rescheduled during the
        call waits for the next one: a short retry delay never becomes a hot
        loop (a time cutoff would not do: MySQL's DATETIME drops the fraction
        of a second). In outbox mode nothing is claimed.
        """
        summary = DispatchSummary()
        if self.consumes_outbox:
            return summary
        batches, after_id = 0, 0
        while max_batches is None or batches < max_batches:
            rows = self.claim(batch_size, event_ids, after_id=after_id)
            if not rows:
                break
            batches += 1
            after_id = max(row.id for row in rows)
            for row in rows:
                if self._renew_lease(row):
                    self._deliver(row, summary)
        return summary

    def _renew_lease(self, row: sa.Row) -> bool:
        """Extend the lease before going on the network; False when another dispatcher took the row over.

        Claiming a batch leases every row at once, while delivery is one row
        after another: without renewing, the last rows of a slow batch could
        expire and be delivered twice in the same attempt.
        """
        ob = self.tables.outbox
        now = self.clock()
        with self.engine.begin() as conn:
            kept = conn.execute(
                ob.update()
                .where(ob.c.id == row.id, ob.c.lease_owner == self.owner, ob.c.state == PENDING)
                .values(lease_expires_at=now + self.lease, updated_at=now)
            ).rowcount
        if not kept:
            log.warning(
                "event %s: lease lost before delivery, left to the dispatcher that took it over",
                row.event_id,
            )
        return bool(kept)

    def _done_publishers(self, event_id: str) -> set[str]:
        dl = self.tables.deliveries
        with self.engine.connect() as conn:
            return set(
                conn.execute(sa.select(dl.c.publisher).where(dl.c.event_id == event_id)).scalars()
            )

    def _deliver(self, row: sa.Row, summary: DispatchSummary) -> None:
        event = OrderCompleted.from_payload(json.loads(row.payload))
        done = self._done_publishers(row.event_id)
        error: Exception | None = None
        renewed = time.monotonic()  # dispatch() renewed the lease just before this call
        for pub in self.publishers:
            if pub.name in done:
                continue
            # Python handlers declare no worst-case time: a slow one eats into the lease, so
            # no publisher starts with less than three quarters of it left. A lease lost
            # meanwhile leaves the rest to the dispatcher that took the event over.
            if time.monotonic() - renewed > self.lease.total_seconds() / 4:
                if not self._renew_lease(row):
                    return
                renewed = time.monotonic()
            try:
                pub.publish(event)
            except Exception as exc:  # isolate: one failing publisher never stops the others
                error = exc if error is None or isinstance(exc, PermanentDeliveryError) else error
                log.warning(
                    "event %s for order %s: publisher %s failed: %s",
                    row.event_id,
                    row.order_id,
                    pub.name,
                    type(exc).__name__,
                )
                continue
            self._mark_publisher_done(row.event_id, pub.name)
        self._settle(row, error, summary)

    def _mark_publisher_done(self, event_id: str, publisher: str) -> None:
        dl = self.tables.deliveries
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    dl.insert().values(
                        event_id=event_id, publisher=publisher, delivered_at=self.clock()
                    )
                )
        except sa.exc.IntegrityError:
            pass  # another dispatcher that took over an expired lease recorded it first

    def _settle(self, row: sa.Row, error: Exception | None, summary: DispatchSummary) -> None:
        ob = self.tables.outbox
        now = self.clock()
        attempts = row.attempts + 1
        values: dict[str, Any] = {
            "attempts": attempts,
            "lease_owner": None,
            "lease_expires_at": None,
            "updated_at": now,
        }
        if error is None:
            values.update(state=DELIVERED, delivered_at=now, last_error=None)
        elif isinstance(error, PermanentDeliveryError) or attempts >= self.retry.max_attempts:
            values.update(state=DEAD, last_error=_describe(error))
        else:
            retry_after = getattr(error, "retry_after", None)
            delay = (
                min(retry_after, MAX_RETRY_AFTER_SECONDS)
                if retry_after is not None
                else self.retry.delay(attempts, self.rng)
            )
            values.update(
                next_attempt_at=now + dt.timedelta(seconds=delay), last_error=_describe(error)
            )
        with self.engine.begin() as conn:
            # Only the lease holder settles: a dispatcher whose lease expired and
            # was taken over must not overwrite the newer holder's outcome.
            settled = conn.execute(
                ob.update()
                .where(ob.c.id == row.id, ob.c.lease_owner == self.owner)
                .values(**values)
            ).rowcount
        if not settled:
            return
        if error is None:
            summary.delivered += 1
            summary.lag_seconds.append(max((now - row.created_at).total_seconds(), 0.0))
        elif values.get("state") == DEAD:
            summary.dead += 1
            log.error(
                "event %s for order %s is dead after %d attempt(s)",
                row.event_id,
                row.order_id,
                attempts,
            )
        else:
            summary.retried += 1

    def redeliver(self, event_ids: Sequence[str] | None = None, all_dead: bool = False) -> int:
        """Put dead events back to pending, due now, with a fresh attempt count. Returns how many."""
        if not event_ids and not all_dead:
            raise ValueError("give event ids or all_dead=True")
        ob = self.tables.outbox
        cond = [ob.c.state == DEAD]
        if event_ids:
            cond.append(ob.c.event_id.in_(list(event_ids)))
        now = self.clock()
        with self.engine.begin() as conn:
            return conn.execute(
                ob.update()
                .where(*cond)
                .values(
                    state=PENDING,
                    attempts=0,
                    next_attempt_at=now,
                    updated_at=now,
                    lease_owner=None,
                    lease_expires_at=None,
                )
            ).rowcount


def _describe(error: Exception) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}"[:1000] if text else type(error).__name__
