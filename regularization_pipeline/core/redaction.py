"""The one redaction of free text: whatever foreign text is still shown (an error line, an alert)
goes through :func:`redact` first, wherever it ends up."""

from __future__ import annotations

import re

# What a database's own message can quote of the application's data: a duplicate key
# ("Duplicate entry 'jane@example.com'"), a value that did not parse, a trigger's text.
# PostgreSQL quotes a value after a colon (`invalid input syntax for type integer: "x"`) and
# names (`database "shop"`) without one: the names stay, they are what an operator needs.


# What a database's own message can quote of the application's data: a duplicate key
# ("Duplicate entry 'jane@example.com'"), a value that did not parse, a trigger's text.
# PostgreSQL quotes a value after a colon (`invalid input syntax for type integer: "x"`) and
# names (`database "shop"`) without one: the names stay, they are what an operator needs.
_QUOTED = re.compile(r"'[^']*'|(?<=: )\"[^\"]*\"")


_EMAIL = re.compile(r"[^\s@,;:()]+@[^\s@,;:()]+")


_DIGIT_RUN = re.compile(r"\d(?:[ -]?\d){8,}")  # card and account numbers, phone numbers


def redact(text: str) -> str:
    """``text`` without quoted values, e-mail addresses or long digit runs."""
    return _DIGIT_RUN.sub("#", _EMAIL.sub("<e-mail>", _QUOTED.sub("'…'", text)))
