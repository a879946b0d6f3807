"""Delivery of the outbox after commit: leases, retries with backoff, a dead letter.

Delivery happens outside any row lock: the dispatcher *claims* due rows with a
lease (``lease_owner``, ``lease_expires_at``) in a short transaction, delivers
them to every publisher, then records the outcome with a compare-and-set on its
own lease. A crashed dispatcher's claim expires and another one takes the rows
over. Delivery is at least once; each publisher's success is recorded in
``event_deliveries`` so a retry never re-runs a publisher that already succeeded.

A call has a time budget: it starts no delivery that could end past it, hands the
leases of the rows it has not reached back at once, and leaves them to the next run.
A slow or silent receiver thus never makes a run outlive its own limit.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from regularization_pipeline.core.clock import utcnow
from regularization_pipeline.core.delivery.events import OrderCompleted
from regularization_pipeline.core.delivery.outcomes import PermanentDeliveryError
from regularization_pipeline.core.delivery.publishers import expand_publishers
from regularization_pipeline.core.errors import ConfigurationError, describe_error
from regularization_pipeline.core.shop.engine import supports_skip_locked
from regularization_pipeline.core.shop.tables import DEAD, DELIVERED, PENDING, OwnedTables

log = logging.getLogger("regularization_pipeline.events")

# A Retry-After longer than this is treated as this: a misconfigured receiver
# must not park an event for months.
MAX_RETRY_AFTER_SECONDS = 86_400.0
# A run's delivery step stops after this long by default, well inside the job's 900 s limit.
DEFAULT_BUDGET_SECONDS = 300.0


class CorruptPayloadError(PermanentDeliveryError):
    """The outbox row's payload is not an OrderCompleted event: dead-lettered, never retried."""


def due_conditions(ob: sa.Table, now: dt.datetime) -> list:
    """An outbox row that is due: pending, its next attempt reached, no live lease on it."""
    return [
        ob.c.state == PENDING,
        ob.c.next_attempt_at <= now,
        sa.or_(ob.c.lease_expires_at.is_(None), ob.c.lease_expires_at < now),
    ]


def count_due(engine: sa.Engine, tables: OwnedTables, now: dt.datetime | None = None) -> int:
    """How many events a dispatcher would claim now (whatever run or operator wrote them)."""
    ob = tables.outbox
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count())
                .select_from(ob)
                .where(*due_conditions(ob, now or utcnow()))
            ).scalar_one()
        )


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
    stopped_by_budget: bool = False
    left_for_next_run: int = 0  # claimed, then handed back unattempted when the budget ran out


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
        budget_seconds: float | None = DEFAULT_BUDGET_SECONDS,
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
        worst = sum(float(getattr(p, "max_seconds", 0.0)) for p in self.publishers)
        if lease_seconds <= worst:
            # A lease that can expire mid-delivery lets a second dispatcher deliver the same attempt.
            raise ConfigurationError(
                f"lease_seconds ({lease_seconds:g}) must exceed the publishers' worst-case delivery time ({worst:g}s)"
            )
        if budget_seconds is not None and budget_seconds <= worst:
            raise ConfigurationError(
                f"delivery budget ({budget_seconds:g}s) must exceed the publishers' worst-case delivery time ({worst:g}s)"
            )
        self.worst_case_seconds = worst
        self.budget_seconds = budget_seconds
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
        due = [*due_conditions(ob, now), ob.c.id > after_id]
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
        began = time.monotonic()
        batches, after_id = 0, 0
        while max_batches is None or batches < max_batches:
            if self._out_of_budget(began):
                summary.stopped_by_budget = True
                break
            rows = self.claim(batch_size, event_ids, after_id=after_id)
            if not rows:
                break
            batches += 1
            after_id = max(row.id for row in rows)
            for i, row in enumerate(rows):
                if self._out_of_budget(began):
                    summary.stopped_by_budget = True
                    summary.left_for_next_run = self._hand_back(rows[i:])
                    break
                if self._renew_lease(row):
                    self._deliver(row, summary)
            if summary.stopped_by_budget:
                break
        if summary.stopped_by_budget:
            log.info(
                "delivery stopped after its %gs budget: %d delivered, the rest left for the next run",
                self.budget_seconds,
                summary.delivered,
            )
        return summary

    def _out_of_budget(self, began: float) -> bool:
        """Whether one more delivery, at its worst, could end past the budget."""
        if self.budget_seconds is None:
            return False
        return time.monotonic() - began + self.worst_case_seconds >= self.budget_seconds

    def _hand_back(self, rows: Sequence[sa.Row]) -> int:
        """Release the leases of rows not attempted, so the next run takes them at once."""
        ob = self.tables.outbox
        with self.engine.begin() as conn:
            return conn.execute(
                ob.update()
                .where(
                    ob.c.id.in_([row.id for row in rows]),
                    ob.c.lease_owner == self.owner,
                    ob.c.state == PENDING,
                )
                .values(lease_owner=None, lease_expires_at=None, updated_at=self.clock())
            ).rowcount

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
        try:
            event = OrderCompleted.from_json(row.payload)
        except ValueError as exc:
            # No publisher could ever deliver it: dead-lettered alone, the rows after it go on.
            self._settle(row, CorruptPayloadError(str(exc)), summary)
            return
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
            # The receiver's Retry-After, but never longer than the configured maximum delay:
            # 'Retry-After: 99999' must not park an event for a day.
            delay = (
                min(retry_after, MAX_RETRY_AFTER_SECONDS, self.retry.max_delay_seconds)
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
    # A handler's exception message (and a database error raised inside one) is foreign text:
    # describe_error keeps its class and code; our publishers' own errors keep their words.
    return describe_error(error)[:1000]
