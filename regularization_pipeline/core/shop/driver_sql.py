"""A statement compiled once, sent to the driver as text at every execution.

Executed as a SQLAlchemy construct, a statement costs at every execution its cache key (a
walk of the whole statement), its parameters (every literal it holds) and, with a list
parameter, its text rendered again: for the big statements of one order's decision, about
a quarter of a per-order run's time. :class:`DriverSql` does that work once, for lists of
a fixed length, and each execution only fills in the values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa


class DriverSql:
    """``statement`` compiled for ``dialect``, each parameter named in ``lists`` a list of one value."""

    def __init__(
        self, statement: sa.Executable, dialect: sa.engine.Dialect, lists: Sequence[str] = ()
    ):
        compiled = statement.compile(dialect=dialect)
        required = {bind.key for bind in compiled.binds.values() if bind.required}
        sample: dict[str, Any] = {name: None for name in required}
        sample.update({name: [None] for name in lists})
        self._required = frozenset(required | set(lists))
        state = compiled.construct_expanded_state(sample)
        self.sql = state.statement
        self._escaped = dict(compiled.escaped_bind_names)
        self._lists = frozenset(lists)
        # The literals the statement holds (statuses, event type...): the same at every execution.
        self._fixed = dict(state.parameters)
        self._processors = dict(state.processors)
        # A positional driver (SQLite's qmark) takes the values in the text's order.
        self._positions = tuple(state.positiontup) if compiled.positional else None

    def parameters(self, values: Mapping[str, Any]) -> dict[str, Any] | tuple:
        """The driver's parameters for ``values`` (each list of ``lists`` holding one value)."""
        missing = self._required.difference(values)
        if missing:
            raise KeyError(f"no value for {', '.join(sorted(missing))}")
        params = dict(self._fixed)
        for name, value in values.items():
            if name in self._lists:
                (value,) = value
                name = f"{name}_1"
            name = self._escaped.get(name, name)
            processor = self._processors.get(name)
            params[name] = value if processor is None else processor(value)
        if self._positions is not None:
            return tuple(params[name] for name in self._positions)
        return params

    def execute(self, conn: sa.Connection, values: Mapping[str, Any]) -> sa.CursorResult:
        return conn.exec_driver_sql(self.sql, self.parameters(values))
