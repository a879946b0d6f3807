"""What the audit and the attempts rows need of a run: where they are written, under which run
id, at what time, on what terms. ``context.RunContext`` is one; the modules writing those rows
ask for no more, so they sit below the run context and its statements.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Protocol

import sqlalchemy as sa

from regularization_pipeline.core.shop import tables as tb


class RunStamp(Protocol):
    """A run as the rows it writes see it (read-only: a run's terms do not change under it)."""

    @property
    def engine(self) -> sa.Engine: ...

    @property
    def tables(self) -> tb.OwnedTables: ...

    @property
    def run_id(self) -> str: ...

    @property
    def clock(self) -> Callable[[], dt.datetime]: ...

    @property
    def max_attempts(self) -> int: ...

    @property
    def skip_locked(self) -> bool:
        """Whether the shop's database takes ``FOR UPDATE SKIP LOCKED``."""
        ...
