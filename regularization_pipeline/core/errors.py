"""Errors the pipeline raises on purpose, and how any error is described where people read it.

Every message names what an operator can act on; :func:`describe_error` is the only
text of an unexpected error that reaches logs, the audit trail and the UI.
"""

from __future__ import annotations

from regularization_pipeline.core.redaction import redact


class RegularizationError(Exception):
    """Base class for errors that stop a run before it changes anything."""


class ConfigurationError(RegularizationError, ValueError):
    """Invalid run options or schema mapping; names the offending field."""


class SchemaMismatchError(RegularizationError):
    """The schema mapping names a table or column the database does not have."""


class MigrationsMissingError(RegularizationError):
    """This project's own tables are absent or behind; run `regularize-completed-orders migrate`."""


class DatabaseUnavailableError(RegularizationError):
    """The application database cannot be reached."""


class BusyError(RegularizationError):
    """Another run holds this shop's run lock, or is queued or in progress: nothing was changed."""


class RunLockLostError(BusyError):
    """The run's lock went away under it (the server dropped its session): the run stopped before
    deciding another order, since another run may now be deciding them."""


# --- describing and classifying errors ---------------------------------------------------


_DEADLOCK_SQLSTATES = {"40P01", "40001"}  # PostgreSQL: deadlock_detected, serialization_failure
_DEADLOCK_MYSQL_ERRORS = {1213}  # ER_LOCK_DEADLOCK
_LOCK_UNAVAILABLE_SQLSTATES = {"55P03"}  # PostgreSQL: lock_not_available (NOWAIT, lock_timeout)
# ER_LOCK_WAIT_TIMEOUT (MariaDB's answer to NOWAIT too), ER_LOCK_NOWAIT (MySQL 8)
_LOCK_UNAVAILABLE_MYSQL_ERRORS = {1205, 3572}


def describe_error(exc: BaseException) -> str:
    """The error class, the database's error code, and the first line of its message, redacted.

    Engines hide bound parameters, but a database's message can still quote the
    data it choked on; this text goes to logs, the audit trail and the UI.
    """
    orig = getattr(exc, "orig", None)
    name = type(exc).__name__
    if orig is not None:
        name += f" ({type(orig).__module__}.{type(orig).__name__})"
    args = getattr(orig, "args", ())
    # PyMySQL: (errno, message)
    mysql_code = args[0] if len(args) == 2 and isinstance(args[0], int) else None
    code = getattr(orig, "pgcode", None) or mysql_code
    if code is not None:
        name += f" [{code}]"
    if mysql_code is not None:
        text = str(args[1]).strip()
    else:
        text = str(orig if orig is not None else exc).strip()
    first = redact(text.splitlines()[0]) if text else ""
    return f"{name}: {first}"[:480] if first else name


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
