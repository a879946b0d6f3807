"""What every step of a decision shares: the run context, and the fault points the crash
tests use (an order's outcome, ``verdicts.OrderOutcome``, is named here too)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from regularization_pipeline.core.decisions.orders import OrderStatements
from regularization_pipeline.core.delivery.laravel_queue import TransactionalDelivery
from regularization_pipeline.core.detection.window import ScanWindow
from regularization_pipeline.core.shop import tables as tb
from regularization_pipeline.core.shop.binding import AppSchema

# An order's outcome is a word of the run's count, defined with the others; named here too.
from regularization_pipeline.core.verdicts import LOCKED_ELSEWHERE as LOCKED_ELSEWHERE
from regularization_pipeline.core.verdicts import PROVIDER_UNAVAILABLE as PROVIDER_UNAVAILABLE
from regularization_pipeline.core.verdicts import OrderOutcome as OrderOutcome


class Fault(Exception):
    """Raised by test fault hooks; never by production code."""


# Called with (point, order id) at the points a crash would hurt most; tests raise from
# it to prove a crash anywhere leaves nothing behind, and pick one order by its id.
FaultHook = Callable[[str, Any], None]


def no_fault(_point: str, _order_id: Any) -> None:
    return None


@dataclass(frozen=True)
class RunContext:
    """What every step of a run needs, passed as one: where it writes, when, and on what terms."""

    engine: sa.Engine
    schema: AppSchema
    tables: tb.OwnedTables
    statements: OrderStatements
    clock: Callable[[], dt.datetime]
    fault: FaultHook
    run_id: str
    window: ScanWindow
    dry_run: bool = False
    max_attempts: int = 5
    # Publishers that enqueue in the flip's own transaction (Laravel's database queue).
    transactional: TransactionalDelivery = TransactionalDelivery()

    def fault_each(self, point: str, order_ids: list) -> None:
        """The fault point, once per order: every crash test holds for batches too."""
        for order_id in order_ids:
            self.fault(point, order_id)
