"""Errors the pipeline raises on purpose, and how any error is described where people read it.

Every message names what an operator can act on; :func:`describe_error` is the only
text of an unexpected error that reaches logs, the audit trail and the UI, and it never
carries a database's, a provider's or a handler's own message (docs/reliability.md).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from sqlalchemy import exc as sa_exc

# The exceptions themselves live in the leaf below (the mapping and the config files raise
# them without importing the redaction); they are named here too, where every layer looks.
from regularization_pipeline.core.exceptions import BusyError as BusyError
from regularization_pipeline.core.exceptions import ConfigurationError as ConfigurationError
from regularization_pipeline.core.exceptions import (
    DatabaseUnavailableError as DatabaseUnavailableError,
)
from regularization_pipeline.core.exceptions import (
    MigrationsMissingError as MigrationsMissingError,
)
from regularization_pipeline.core.exceptions import RegularizationError as RegularizationError
from regularization_pipeline.core.exceptions import RunLockLostError as RunLockLostError
from regularization_pipeline.core.exceptions import SchemaMismatchError as SchemaMismatchError
from regularization_pipeline.core.redaction import redact

# --- describing and classifying errors ---------------------------------------------------


_DEADLOCK_SQLSTATES = {"40P01", "40001"}  # PostgreSQL: deadlock_detected, serialization_failure
_DEADLOCK_MYSQL_ERRORS = {1213}  # ER_LOCK_DEADLOCK
_LOCK_UNAVAILABLE_SQLSTATES = {"55P03"}  # PostgreSQL: lock_not_available (NOWAIT, lock_timeout)
# ER_LOCK_WAIT_TIMEOUT (MariaDB's answer to NOWAIT too), ER_LOCK_NOWAIT (MySQL 8)
_LOCK_UNAVAILABLE_MYSQL_ERRORS = {1205, 3572}


# Our own words for a database's error code: what failed, and where an operator looks next.
# The server's own message is never kept (it can quote customer data: a trigger's text, a
# duplicate key), so these words and the code are all a record says.
_TRIGGER = "a trigger or procedure of the shop's database refused it; ask the shop's developers"
_CONSTRAINT = "a constraint of the shop's database refused it"
_VALUE = "a value did not fit its column"
_CONTENTION = "the database broke a deadlock or refused a lock; retried on the next run"
_TIMEOUT = "the database cancelled the statement (a statement timeout)"
_PRIVILEGE = "the database role lacks a grant (docs/sql/grants.postgresql.sql)"
_MISSING = "a table or column of the schema mapping is missing; run `doctor`"
_CONNECTION = "the connection to the database failed or was lost"
_RESOURCES = "the database server is out of resources (connections, memory, disk)"

_POSTGRES_CODES = {
    "P0001": _TRIGGER,  # raise_exception
    "P0004": _TRIGGER,  # assert_failure
    "40P01": _CONTENTION,
    "40001": _CONTENTION,
    "55P03": _CONTENTION,
    "57014": _TIMEOUT,
    "42501": _PRIVILEGE,
    "42P01": _MISSING,
    "42703": _MISSING,
}
_POSTGRES_CLASSES = {  # the first two characters of a SQLSTATE
    "P0": _TRIGGER,
    "23": _CONSTRAINT,
    "22": _VALUE,
    "08": _CONNECTION,
    "57": _CONNECTION,
    "53": _RESOURCES,
}
_MYSQL_CODES = {
    1644: _TRIGGER,  # ER_SIGNAL_EXCEPTION: SIGNAL SQLSTATE '45000' in a trigger or procedure
    **dict.fromkeys((1062, 1048, 1451, 1452, 1364, 3819, 4025), _CONSTRAINT),
    **dict.fromkeys((1264, 1265, 1292, 1366, 1406), _VALUE),
    **dict.fromkeys((1213, 1205, 3572), _CONTENTION),
    **dict.fromkeys((3024, 1969), _TIMEOUT),
    **dict.fromkeys((1142, 1143, 1044, 1045), _PRIVILEGE),
    **dict.fromkeys((1146, 1054), _MISSING),
    **dict.fromkeys((2002, 2003, 2006, 2013, 2055, 4031), _CONNECTION),
    1040: _RESOURCES,
}
_SQLITE_NAMES = {
    "SQLITE_CONSTRAINT_TRIGGER": _TRIGGER,  # RAISE(ABORT, ...) in a trigger
    "SQLITE_BUSY": _CONTENTION,
    "SQLITE_LOCKED": _CONTENTION,
    "SQLITE_CANTOPEN": _CONNECTION,
    "SQLITE_FULL": _RESOURCES,
}
_DEFAULT_WORDS = "the database refused the statement"
_NOT_KEPT = "its own message is not recorded (--debug shows it on the terminal)"

_STATEMENT_TABLE = re.compile(
    r"^\s*(?:(INSERT)\s+(?:IGNORE\s+)?INTO|(UPDATE)|(DELETE)\s+FROM|(SELECT)\b.*?\bFROM)\s+((?:{name})(?:\.(?:{name}))?)".format(
        name=r"\"[^\"]+\"|`[^`]+`|\[[^\]]+\]|[\w$]+"
    ),
    re.IGNORECASE | re.DOTALL,
)
_STATEMENT_KIND = re.compile(r"^\s*(\w+)")
# The writes of a data-modifying WITH (PostgreSQL's flip and its writes are one statement).
_WITH_WRITE = re.compile(
    r"\b(?:(INSERT)\s+INTO|(UPDATE)|(DELETE)\s+FROM)\s+((?:{name})(?:\.(?:{name}))?)".format(
        name=r"\"[^\"]+\"|`[^`]+`|[\w$]+"
    ),
    re.IGNORECASE,
)
_IDENTIFIER = re.compile(r"[A-Za-z_][\w$]{0,63}(?:\.[A-Za-z_][\w$]{0,63})?")


# What a database driver raises, through SQLAlchemy: for layers that do not import SQLAlchemy.
DATABASE_ERRORS: tuple[type[BaseException], ...] = (sa_exc.DBAPIError,)


class _Debug:
    """Where ``--debug`` sends a database's own message: the terminal, never a log or a table."""

    show: Callable[[str], None] | None = None


DEBUG_TERMINAL = _Debug()


def error_code(exc: BaseException) -> str | None:
    """The server's code for ``exc``: PostgreSQL's SQLSTATE, MariaDB's error number, SQLite's error name."""
    orig = getattr(exc, "orig", None)
    pgcode = getattr(orig, "pgcode", None)
    if pgcode:
        return f"SQLSTATE {pgcode}"
    args = getattr(orig, "args", ())
    if len(args) >= 1 and isinstance(args[0], int) and type(orig).__module__.startswith("pymysql"):
        return f"MariaDB error {args[0]}"
    name = getattr(orig, "sqlite_errorname", None)
    if name:
        return name
    return None


def _our_words(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    pgcode = getattr(orig, "pgcode", None)
    if pgcode:
        return _POSTGRES_CODES.get(pgcode) or _POSTGRES_CLASSES.get(pgcode[:2], _DEFAULT_WORDS)
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int) and type(orig).__module__.startswith("pymysql"):
        return _MYSQL_CODES.get(args[0], _DEFAULT_WORDS)
    name = getattr(orig, "sqlite_errorname", None) or ""
    for prefix, words in _SQLITE_NAMES.items():
        if name.startswith(prefix):
            return words
    if name.startswith("SQLITE_CONSTRAINT"):
        return _CONSTRAINT
    return _CONNECTION if isinstance(exc, sa_exc.OperationalError) and not name else _DEFAULT_WORDS


def statement_summary(statement: str | None) -> str | None:
    """``UPDATE orders``: the kind of statement and its table, from our own SQL (never its values)."""
    if not statement:
        return None
    if _STATEMENT_KIND.match(statement).group(1).upper() == "WITH":
        writes = []
        for found in _WITH_WRITE.finditer(statement):
            kind = next(g for g in found.groups()[:3] if g).upper()
            table = re.sub(r'[`"]', "", found.group(4))
            if _IDENTIFIER.fullmatch(table) and table.upper() != "SET":
                writes.append(f"{kind} {table}")
        if writes:  # UPDATE orders, INSERT regularization_outbox, ...
            return ", ".join(writes)
    found = _STATEMENT_TABLE.match(statement)
    if found:
        kind = next(g for g in found.groups()[:4] if g).upper()
        table = re.sub(r'[`"\[\]]', "", found.group(5))
        return f"{kind} {table}" if _IDENTIFIER.fullmatch(table) else kind
    kind = _STATEMENT_KIND.match(statement)
    return kind.group(1).upper() if kind else None


def raw_error_text(exc: BaseException) -> str:
    """The server's (or a handler's) own message: for ``--debug`` on a terminal, never stored."""
    orig = getattr(exc, "orig", None)
    return str(orig if orig is not None else exc)


def _is_ours(exc: BaseException) -> bool:
    """Whether the message was written by this package's core, in our words (no foreign text)."""
    return type(exc).__module__.startswith("regularization_pipeline.core")


def describe_error(exc: BaseException) -> str:
    """What failed, in what an operator can act on and nothing more.

    A database error becomes its class, the server's code (SQLSTATE, MariaDB error number,
    SQLite error name), the statement's kind and table, and our own words for the code. Its
    message is never kept: a trigger's text, a duplicate key or a value the server quotes can
    be a customer's name, card or phone number. Any other exception of foreign code (a
    handler's, a library's) is described by its class only; ours keep their words, redacted.
    This text goes to logs, the audit trail, the attempts table, the outbox and the UI.
    """
    name = type(exc).__name__
    if isinstance(exc, sa_exc.DBAPIError) or getattr(exc, "orig", None) is not None:
        orig = exc.orig
        if orig is not None:
            name += f" ({type(orig).__module__}.{type(orig).__name__})"
        code = error_code(exc)
        if code:
            name += f" [{code}]"
        statement = statement_summary(getattr(exc, "statement", None))
        if statement:
            name += f" on {statement}"
        if DEBUG_TERMINAL.show is not None:
            DEBUG_TERMINAL.show(f"{name}: the database said: {raw_error_text(exc)}")
        return f"{name}: {_our_words(exc)}; {_NOT_KEPT}"[:400]
    if isinstance(exc, sa_exc.StatementError):  # a value SQLAlchemy itself could not bind
        statement = statement_summary(exc.statement)
        return f"{name}{f' on {statement}' if statement else ''}: a value could not be sent"
    if _is_ours(exc):
        text = str(exc).strip()
        first = redact(text.splitlines()[0]) if text else ""
        return f"{name}: {first}"[:400] if first else name
    if DEBUG_TERMINAL.show is not None:
        DEBUG_TERMINAL.show(f"{name}: {raw_error_text(exc)}")
    module = type(exc).__module__
    where = "" if module == "builtins" else f" ({module}.{name})"
    return f"{name}{where}: its message is not recorded (--debug shows it on the terminal)"


# A refused connection in our words: libpq and PyMySQL explain it in text that names hosts
# and users; what an operator acts on is which of these it was.
_CONNECTION_PROBLEMS = (
    (re.compile(r"connection refused|can't connect|could not connect", re.I), "connection refused"),
    (re.compile(r"timeout|timed out", re.I), "the connection timed out"),
    (
        re.compile(r"could not translate host name|name or service not known|unknown .*host", re.I),
        "the host name is not known",
    ),
    (
        re.compile(
            r"password authentication|access denied|no pg_hba.conf entry|authentication", re.I
        ),
        "the server refused the login",
    ),
    (re.compile(r"database .* does not exist|unknown database", re.I), "no such database"),
    (re.compile(r"too many (connections|clients)", re.I), "the server has no connection left"),
    (re.compile(r"unable to open database file", re.I), "the database file cannot be opened"),
)


def describe_connection_failure(exc: BaseException) -> str:
    """Why a connection failed (refused, timed out, login refused...), with the driver's class and code."""
    orig = getattr(exc, "orig", None) or exc
    name = f"{type(orig).__module__}.{type(orig).__name__}"
    code = error_code(exc)
    raw = raw_error_text(exc)
    if DEBUG_TERMINAL.show is not None:
        DEBUG_TERMINAL.show(f"{name}: the database said: {raw}")
    words = next((w for pattern, w in _CONNECTION_PROBLEMS if pattern.search(raw)), "no detail")
    return f"{name}{f' [{code}]' if code else ''}: {words}"


def is_deadlock(exc: BaseException) -> bool:
    """Whether the database rolled the transaction back to break a deadlock (safe to try again)."""
    orig = getattr(exc, "orig", None)
    if getattr(orig, "pgcode", None) in _DEADLOCK_SQLSTATES:
        return True
    args = getattr(orig, "args", ())
    return bool(args) and args[0] in _DEADLOCK_MYSQL_ERRORS


def is_lock_unavailable(exc: BaseException) -> bool:
    """Whether a lock was refused (NOWAIT) or waited out: someone else holds it, nothing was done."""
    orig = getattr(exc, "orig", None)
    if getattr(orig, "pgcode", None) in _LOCK_UNAVAILABLE_SQLSTATES:
        return True
    args = getattr(orig, "args", ())
    if args and args[0] in _LOCK_UNAVAILABLE_MYSQL_ERRORS:
        return True
    return type(orig).__module__ == "sqlite3" and "database is locked" in str(orig)
