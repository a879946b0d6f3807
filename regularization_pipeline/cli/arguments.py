"""The CLI's contract: exit codes, --debug, the flag types, and the run options read from flags
(validated by the job's own config, a bad one named by its flag).

Parsing loads nothing heavy: pydantic, SQLAlchemy and the core modules are imported by the
function that needs them, so a usage error answers before any of them is loaded."""

from __future__ import annotations

import argparse
import datetime as dt
import math
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_BUSY = 0, 1, 2, 3


# CLI flag -> regularized_orders config field.
RUN_FLAGS = {
    "limit": "--limit",
    "sleep": "--sleep",
    "lookback_hours": "--hours",
    "min_age_minutes": "--min-age",
    "dry_run": "--dry-run",
    "batch_size": "--batch-size",
    "max_attempts": "--max-attempts",
    "since": "--since",
    "until": "--until",
    "max_runtime_seconds": "--max-runtime",
    "mode": "--mode",
}


class _Debug:
    """Whether --debug was given: tracebacks and Dagster's own log lines reach the terminal."""

    on = False


DEBUG = _Debug()


def whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def utc_time(text: str) -> dt.datetime:
    from regularization_pipeline.core.operations import operator_tools

    try:
        return operator_tools.parse_utc_time(text)
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time (e.g. 2024-05-01 or 2024-05-01T13:30:00+02:00; UTC without offset)"
        ) from None


def order_id(text: str) -> str:
    # Not stripped: ' 1' is not order 1 (the id is taken exactly, see AppSchema.parse_order_id).
    if not text.strip():
        raise argparse.ArgumentTypeError("an order id is required")
    return text


def add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--limit", type=whole_number, help="most orders to act on in this run (default 50)"
    )
    parser.add_argument("--sleep", type=number, help="seconds between two orders (default 2)")
    parser.add_argument(
        "--hours", type=number, help="only payments completed within the last H hours"
    )
    parser.add_argument(
        "--min-age",
        type=number,
        metavar="MINUTES",
        help="grace period: leave payments younger than this to their webhook (default 10)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", default=None, help="decide and audit, change nothing"
    )
    parser.add_argument(
        "--batch-size", type=whole_number, help="candidate ids read per page (default 50)"
    )
    parser.add_argument(
        "--max-attempts",
        type=whole_number,
        help="failures before an order is quarantined (default 5)",
    )
    parser.add_argument(
        "--since", metavar="ISO_TIME", help="only payments completed at or after this UTC time"
    )
    parser.add_argument(
        "--until", metavar="ISO_TIME", help="only payments completed at or before this UTC time"
    )
    parser.add_argument(
        "--max-runtime",
        type=number,
        metavar="SECONDS",
        help="stop taking new orders after this long (default 240)",
    )
    parser.add_argument(
        "--mode",
        choices=["auto", "per_order", "batched"],
        help="per_order: one transaction per order; batched: batch_size orders per transaction; "
        "auto (default): batched when --sleep is 0 and no provider verification is configured",
    )


def add_time_filter(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--hours", type=number, help=f"only {what} within the last H hours")
    parser.add_argument(
        "--since",
        type=utc_time,
        metavar="ISO_TIME",
        help=f"only {what} at or after this time (UTC)",
    )
    parser.add_argument(
        "--until",
        type=utc_time,
        metavar="ISO_TIME",
        help=f"only {what} at or before this time (UTC)",
    )


def add_format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--format", choices=["table", "csv"], default="table", help="output format (default table)"
    )


def run_config_from_args(
    args: argparse.Namespace, parser: argparse.ArgumentParser
) -> dict[str, Any]:
    """The options given, validated by the job's own config; a bad one is a usage error naming its flag."""
    from regularization_pipeline.core.errors import ConfigurationError
    from regularization_pipeline.defs.config import RegularizeConfig

    attrs = {field: flag.lstrip("-").replace("-", "_") for field, flag in RUN_FLAGS.items()}
    values = {
        field: getattr(args, attr)
        for field, attr in attrs.items()
        if getattr(args, attr) is not None
    }
    try:
        RegularizeConfig(**values).to_run_options()
    except ConfigurationError as exc:
        parser.error(_name_flags(exc))
    return values


def _name_flags(exc: Exception) -> str:
    from pydantic import ValidationError

    cause = exc.__cause__
    if not isinstance(cause, ValidationError):
        return str(exc)
    parts = []
    for err in cause.errors():
        field = ".".join(str(p) for p in err["loc"])
        flag = RUN_FLAGS.get(field)
        parts.append(
            f"{flag} ({field}): {err['msg']}" if flag else f"{field or 'options'}: {err['msg']}"
        )
    return "invalid run options: " + "; ".join(parts)
