"""Table and column names as a mapping may give them.

Identifiers end up quoted by SQLAlchemy, but a mapping is operator input: keep it to what real
schemas use so a stray quote or semicolon is refused early.
"""

from __future__ import annotations

import re

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")


def check_identifier(value: str | None) -> str | None:
    """``value`` when it is a plain table or column name (or None); else a ValueError naming it."""
    # fullmatch: match() and $ let a trailing newline by.
    if value is not None and not _IDENTIFIER.fullmatch(value):
        raise ValueError(f"{value!r} is not a valid table or column name")
    return value
