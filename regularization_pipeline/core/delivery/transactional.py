"""Which publishers enqueue in the flip's own transaction: the value a run carries to its
write step (the enqueueing itself is ``laravel_queue.write_in_transaction``).

Apart from the publishers so that the run context names it without importing a queue client.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TransactionalDelivery:
    """The publishers that write in the flip's own transaction, and whether they are all there are."""

    publishers: tuple[Any, ...] = ()
    completes_delivery: bool = False

    @classmethod
    def of(cls, publishers: Sequence[Any]) -> TransactionalDelivery:
        inside = tuple(p for p in publishers if getattr(p, "in_transaction", False))
        return cls(inside, bool(inside) and len(inside) == len(publishers))
