"""One order's decision in its own transaction: ask the provider, lock, re-read, verify, write.

The per-order mode and the batch's fall-back decide each order here:

1. (with a provider) ask it before any lock is taken, so no row lock waits on the network;
2. lock the order row (``SELECT ... FOR UPDATE SKIP LOCKED``; on SQLite the transaction
   began ``IMMEDIATE``) and re-read it and its payments under the lock;
3. verify (:func:`~regularization_pipeline.core.decisions.verification.verify`, pure) and
   write (:func:`~regularization_pipeline.core.decisions.writes.write_decisions`), then commit.

Any exception rolls the order back whole; it is then counted
(:mod:`~regularization_pipeline.core.decisions.attempts`), never raised, except a provider
that refuses our credentials (every order would fail the same way).

Consecutive orders of a run share one pooled connection (:class:`OrderConnection`): taking
it from the pool for each order cost a pre-ping and a reset, two of the order's round trips.
A connection that died while idle between two orders (killed, or timed out by the server) is
found by the next order's first statement, before that order wrote anything: the order then
starts again on a fresh connection, so the dead session costs it nothing. A connection whose
transaction failed at any later point is dropped and the order fails as it would have.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from regularization_pipeline.core import verdicts
from regularization_pipeline.core.decisions import attempts
from regularization_pipeline.core.decisions.audit import Decision
from regularization_pipeline.core.decisions.context import (
    LOCKED_ELSEWHERE,
    OrderOutcome,
    RunContext,
    same_order_id,
)
from regularization_pipeline.core.decisions.provider_health import ProviderHealth
from regularization_pipeline.core.decisions.verification import (
    Verdict,
    apply_provider_answer,
    provider_hold,
    verify,
)
from regularization_pipeline.core.decisions.writes import write_decisions
from regularization_pipeline.core.errors import describe_error, is_deadlock
from regularization_pipeline.core.provider.answers import (
    HoldReason,
    PaymentVerifier,
    ProviderAnswer,
    ProviderRejectedError,
    ProviderUnavailableError,
)

log = logging.getLogger("regularization_pipeline.regularizer")

DEADLOCK_RETRIES = 2
DEADLOCK_BACKOFF_SECONDS = 0.05
ASKED_ABOUT_ANOTHER = "transaction changed since the provider was asked: left for the next run"

# (transaction id, what the provider said about it), asked before the order's lock is taken.
ProviderWord = tuple[Any, ProviderAnswer]


class StaleConnectionError(Exception):
    """The order's first statement found its reused connection dead: nothing was written."""


class OrderConnection:
    """One pooled connection for the transactions of consecutive orders (see the module)."""

    def __init__(self, engine: sa.Engine):
        self.engine = engine
        self._conn: sa.Connection | None = None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sa.Connection]:
        """A transaction on the shared connection: committed, or rolled back on any exception,
        the connection then dropped so the next order starts on another."""
        if self._conn is None:
            self._conn = self.engine.connect()
        try:
            with self._conn.begin():
                yield self._conn
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()

    def __enter__(self) -> OrderConnection:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()


@dataclass
class OneOrder:
    """Decides one order at a time for a run (``verifier``: the provider, when configured)."""

    verifier: PaymentVerifier | None
    sleeper: Callable[[float], None]

    def regularize(
        self,
        ctx: RunContext,
        order_id: Any,
        health: ProviderHealth | None = None,
        shared: OrderConnection | None = None,
    ) -> OrderOutcome | None:
        """The order's outcome; None when ``health`` is given and the provider could not answer
        (the run decides, with the next orders, whether that was this order's failure)."""
        try:
            # Outside any transaction: a test can play the late webhook here, between the scan and the claim.
            ctx.fault("before_claim", order_id)
            if health is not None:
                health.answered_last = False
            answer = self._ask_provider(ctx, order_id, health) if self.verifier else None
            outcome = self._decide_retrying_deadlocks(ctx, order_id, answer, shared)
        except ProviderRejectedError as exc:
            if health is None or not health.answered:
                raise  # a bad token or URL: every order would fail the same way, so the run stops
            # Our credentials work (the provider answered this run): refused about this one.
            words = "provider refused the request about this transaction, having answered others"
            hold = provider_hold(
                Verdict(verdicts.SKIPPED, words), HoldReason.REQUEST_REFUSED, words
            )
            log.info("order %s: %s", order_id, describe_error(exc))
            return attempts.hold_for_provider(ctx, order_id, hold)
        except ProviderUnavailableError as exc:
            if health is None:
                return attempts.left_for_next_run(ctx, order_id, exc)
            log.warning("order %s: provider error: %s", order_id, describe_error(exc))
            health.note_error(order_id, exc)
            return None
        except sa.exc.DataError as exc:
            if _is_order_key(ctx, order_id):
                return attempts.record_failure(ctx, order_id, exc)
            # Not even a value of the orders' key ("abc" for an integer id, PostgreSQL): no such
            # order, as SQLite and MariaDB answer; not a failure to count, nor to quarantine.
            with ctx.engine.begin() as conn:
                not_found = Decision(order_id, Verdict(verdicts.SKIPPED, "order not found"))
                return write_decisions(ctx, conn, [not_found])[0]
        except Exception as exc:  # one bad order never stops the run
            return attempts.record_failure(ctx, order_id, exc)
        if outcome.reason != LOCKED_ELSEWHERE:
            log.info("order %s: %s (%s)", order_id, outcome.action, outcome.reason)
        return outcome

    def _decide_retrying_deadlocks(
        self,
        ctx: RunContext,
        order_id: Any,
        answer: ProviderWord | None,
        shared: OrderConnection | None = None,
    ) -> OrderOutcome:
        """The order's transaction, tried again when the database chose it as a deadlock victim,
        or found its connection dead at the first statement (:class:`OrderConnection`).

        A deadlock (or serialization failure) rolled the whole transaction back, so trying
        again is safe, and the other side (often the application's own webhook) has moved on.
        A lock wait timeout is not retried: someone holds the row, and waiting again would
        only hold up the run.
        """
        stale_retried = False
        attempt = 0
        while True:
            try:
                with shared.transaction() if shared else ctx.engine.begin() as conn:
                    return self._decide(ctx, conn, order_id, answer)
            except StaleConnectionError as stale:
                if stale_retried:
                    raise stale.__cause__ from None
                stale_retried = True  # nothing was written: start again on a fresh connection
            except sa.exc.DBAPIError as exc:
                if attempt == DEADLOCK_RETRIES or not is_deadlock(exc):
                    raise
                attempt += 1
                log.info(
                    "order %s: deadlock victim, trying again (%d/%d)",
                    order_id,
                    attempt,
                    DEADLOCK_RETRIES,
                )
                self.sleeper(DEADLOCK_BACKOFF_SECONDS * 2 ** (attempt - 1))

    def _decide(
        self, ctx: RunContext, conn: sa.Connection, order_id: Any, answer: ProviderWord | None
    ) -> OrderOutcome:
        """Lock, re-read and verify one order, then write the decision, in ``conn``'s transaction."""
        statements = ctx.statements
        try:
            order, payments, attempts_row = statements.load_locked(conn, order_id)
        except sa.exc.DBAPIError as exc:
            if exc.connection_invalidated:  # dead before this order sent anything
                raise StaleConnectionError() from exc
            raise
        if order is None:
            found = conn.execute(statements.exists, {"p_order": order_id}).first()
            if found is not None and same_order_id(found[0], order_id):
                return OrderOutcome(order_id, verdicts.SKIPPED, LOCKED_ELSEWHERE)
            not_found = Decision(order_id, Verdict(verdicts.SKIPPED, "order not found"))
            return write_decisions(ctx, conn, [not_found])[0]
        ctx.fault("after_lock", order_id)
        verdict = verify(order, payments, ctx.schema.statuses, ctx.window)
        if verdict.action == verdicts.REGULARIZED and self.verifier is not None:
            if answer is None or answer[0] != verdict.transaction.id:
                verdict = Verdict(verdicts.SKIPPED, ASKED_ABOUT_ANOTHER)
            else:
                verdict = apply_provider_answer(verdict, answer[1], order)
        decision = Decision(order_id, verdict, order, attempts_row=attempts_row)
        return write_decisions(ctx, conn, [decision])[0]

    def _ask_provider(
        self, ctx: RunContext, order_id: Any, health: ProviderHealth | None = None
    ) -> ProviderWord | None:
        """Ask the provider before taking the row lock, so no lock waits on the network.

        Returns (transaction id, answer) when the database alone would
        regularize the order; the locked decision then checks that the same
        transaction is still the completed one.
        """
        with ctx.engine.connect() as conn:
            order = ctx.statements.load_order(conn, order_id, lock=False)
            if order is None:
                return None
            payments = ctx.statements.payments(conn, order_id)
        verdict = verify(order, payments, ctx.schema.statuses, ctx.window)
        if verdict.action != verdicts.REGULARIZED:
            return None
        answer = self.verifier.check(order, verdict.transaction)
        if health is not None:
            health.note_answer()
        return verdict.transaction.id, answer


def _is_order_key(ctx: RunContext, order_id: Any) -> bool:
    """Whether the database takes ``order_id`` as a value of the orders' key at all."""
    try:
        with ctx.engine.connect() as conn:
            conn.execute(ctx.statements.exists, {"p_order": order_id})
    except sa.exc.DataError:
        return False
    return True
