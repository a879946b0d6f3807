"""The one redaction of free text: whatever foreign text is still shown (an alert, a receiver's
refusal, an error of ours that names a value) goes through :func:`redact` first, wherever it ends up.

Redaction is the second line of defence, not the first: a database's, a provider's or a
handler's own message is never shown at all (``core.errors.describe_error`` keeps its class
and code only). What remains is text a human needs to act on, and a deny-list of shapes can
still miss one, which is why nothing foreign is passed here when its class and status do.
"""

from __future__ import annotations

import logging
import re

# What a message can quote of the application's data: a duplicate key ("Duplicate entry
# 'jane@example.com'"), a value that did not parse, a trigger's text. PostgreSQL quotes a
# value after a colon (`invalid input syntax for type integer: "x"`) and names (`database
# "shop"`) without one: the names stay, they are what an operator needs.
_QUOTED = re.compile(r"'[^']*'|(?<=: )\"[^\"]*\"")

# Provider secrets by their documented prefixes (Stripe's secret, restricted and publishable
# keys, webhook signing secrets; tokens of the same shape elsewhere), and bearer credentials.
_TOKEN = re.compile(
    r"\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]+|\bwhsec_[A-Za-z0-9+/=_-]+"
    r"|\b(?:Bearer|Basic|Token)\s+[A-Za-z0-9._~+/=-]+",
    re.IGNORECASE,
)

# "Jane Doe <jane@example.com>", "Jane Doe (jane@example.com)", "Jane Doe, jane@example.com":
# the display name next to an address is the customer's name. Up to four capitalised words.
_NAME_BEFORE_EMAIL = re.compile(
    r"(?:\b[A-Z][\w'’.-]*\s+){0,3}[A-Z][\w'’.-]*\s*[,:]?\s*(?=[<(\[]?\s*[^\s@<>()\[\],;:]+@)"
)
_EMAIL = re.compile(r"[<(\[]?[^\s@,;:()<>\[\]]+@[^\s@,;:()<>\[\]]+[>)\]]?")

# IBAN: a country code, two check digits, 11 to 30 letters and digits, in groups of four or not.
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]){11,30}\b")

# Card, account and phone numbers: nine digits or more, in any common spelling (spaces, dots,
# dashes, slashes, a leading +, an area code in parentheses).
_DIGIT_RUN = re.compile(r"\+?\(?\d(?:[ .\-/()]{0,2}\d){8,}\)?")


# What stays as it is: ids and times operators look up (a run's UUID, an ISO timestamp), which
# the digit runs below would otherwise eat.
_KEEP = re.compile(
    r"(\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b"
    r"|\b\d{4}-\d\d-\d\d(?:[ T]\d\d:\d\d(?::\d\d(?:\.\d+)?)?)?(?:Z|[+-]\d\d:?\d\d)?(?!\d))",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """``text`` without quoted values, tokens, names next to e-mails, e-mails, IBANs or long digit runs."""
    parts = _KEEP.split(text)
    # split() with one group: the odd items are the kept ids and times.
    return "".join(part if i % 2 else _redact(part) for i, part in enumerate(parts))


def _redact(text: str) -> str:
    text = _QUOTED.sub("'…'", text)
    text = _TOKEN.sub("<token>", text)
    text = _NAME_BEFORE_EMAIL.sub("", text)
    text = _EMAIL.sub("<e-mail>", text)
    text = _IBAN.sub("<iban>", text)
    return _DIGIT_RUN.sub("#", text)


# HTTP client libraries that log every request's full URL at INFO (httpx) or DEBUG (httpcore):
# webhook, heartbeat and alert URLs carry tokens in their path or query.
HTTP_CLIENT_LOGGERS = ("httpx", "httpcore")


class _WarningsOnly(logging.Filter):
    """On the client's own logger: a request line never passes, whatever level is set later."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


_WARNINGS_ONLY = _WarningsOnly()


def quiet_http_client_loggers() -> None:
    """Keep httpx's and httpcore's request lines (full URLs, tokens in them) out of every log.

    Done at the source: when this module is imported, before any client of ours exists, so
    every process using core is quiet, however it configures logging. The level keeps the
    records from being made; the filter drops them even if a logging setup lowers the level
    again (``logging.getLogger("httpx").setLevel(logging.INFO)``). Warnings and errors pass.
    """
    for name in HTTP_CLIENT_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(logging.WARNING)
        if _WARNINGS_ONLY not in logger.filters:
            logger.addFilter(_WARNINGS_ONLY)


quiet_http_client_loggers()
