"""How a run tells one order's provider error from a provider outage.

A provider error (a timeout, a 5xx, a 429 that outlasted its retries) about one
order is not yet known to be that order's: the next order decides. When the
provider answers a later order, the errors before it were about their orders, and
each is counted as that order's failure (so an order the provider keeps failing on
is quarantined, with its own reason, after ``max_attempts`` runs). When
``outage_after`` orders in a row fail, the provider is down: those orders are left
for the next run uncounted, and the run stops asking. A run that ends with fewer
errors in a row than that counts them too: with a backlog smaller than
``outage_after`` an outage cannot be told from one bad order, and only a run that
keeps failing (``max_attempts`` runs) quarantines it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DEFAULT_OUTAGE_AFTER = 3


@dataclass
class ProviderHealth:
    """One run's view of the provider: has it answered yet, and the errors in a row since."""

    outage_after: int = DEFAULT_OUTAGE_AFTER
    answered: bool = False  # the provider answered a request of this run (credentials accepted)
    streak: list[tuple[Any, Exception]] = field(default_factory=list)

    answered_last: bool = False  # the provider answered about the order just decided

    def note_answer(self) -> None:
        self.answered = self.answered_last = True

    def note_error(self, order_id: Any, exc: Exception) -> None:
        self.streak.append((order_id, exc))

    @property
    def outage(self) -> bool:
        return len(self.streak) >= self.outage_after

    def take_streak(self) -> list[tuple[Any, Exception]]:
        streak, self.streak = self.streak, []
        return streak
