"""The scan window: which payments a scan or a run considers, by when they completed.

Apart from the orphan queries so that the run's options, the run context and the pure
verification rules can name it without importing the queries.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from regularization_pipeline.core.clock import as_naive_utc

DEFAULT_MIN_AGE_MINUTES = 10


@dataclass(frozen=True)
class ScanWindow:
    """Which payments a scan considers, by when they completed.

    ``not_after`` is the grace cutoff (``now - min_age_minutes``, or ``until``
    when earlier); ``not_before`` is ``now - lookback_hours`` or ``since``,
    whichever is later, or unbounded. The values come validated from
    :class:`~regularization_pipeline.core.run.RunOptions`.
    """

    now: dt.datetime
    min_age_minutes: float = DEFAULT_MIN_AGE_MINUTES
    lookback_hours: float | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None

    @property
    def not_after(self) -> dt.datetime:
        cutoff = self.now - dt.timedelta(minutes=self.min_age_minutes)
        return min(cutoff, as_naive_utc(self.until)) if self.until else cutoff

    @property
    def not_before(self) -> dt.datetime | None:
        bounds = []
        if self.lookback_hours is not None:
            bounds.append(self.now - dt.timedelta(hours=self.lookback_hours))
        if self.since:
            bounds.append(as_naive_utc(self.since))
        return max(bounds) if bounds else None
