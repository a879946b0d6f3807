"""The operator commands: the read-only lists and ``doctor``, and the tools that act on one order
or event (``regularize-order``, ``release``, ``redeliver``, ``prune``), each calling ``core``
with the same checks as the UI's operator jobs."""

from __future__ import annotations

import argparse
import csv
import sys
import uuid
from collections.abc import Sequence
from typing import Any

from regularization_pipeline.cli.arguments import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from regularization_pipeline.cli.environment import (
    SELECTED,
    open_database,
    payment_verifier,
    read_only,
    select_shop,
)
from regularization_pipeline.cli.launching import format_table
from regularization_pipeline.core.clock import utcnow
from regularization_pipeline.core.detection import orphans as d
from regularization_pipeline.core.errors import ConfigurationError, RegularizationError
from regularization_pipeline.core.operations import operator_tools, retention
from regularization_pipeline.core.run import RunOptions
from regularization_pipeline.core.shop.shops import shops_from_env


def _window(
    args: argparse.Namespace, parser: argparse.ArgumentParser, min_age: float | None
) -> d.ScanWindow:
    try:
        options = RunOptions.parse(
            min_age_minutes=d.DEFAULT_MIN_AGE_MINUTES if min_age is None else min_age,
            lookback_hours=args.hours,
            since=args.since,
            until=args.until,
        )
    except ConfigurationError as exc:
        parser.error(
            str(exc).replace("lookback_hours", "--hours").replace("min_age_minutes", "--min-age")
        )
    return options.window(utcnow())


def print_rows(columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str, out=None) -> None:
    out = out or sys.stdout
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)
        return
    cells = [[str(v) for v in row] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip(), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip(), file=out)


def _print_listing(
    columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str, what: str
) -> int:
    print_rows(columns, rows, fmt)
    if fmt == "table":  # on stderr, so that piping the table keeps only the rows
        print(f"{len(rows)} {what}", file=sys.stderr)
    return EXIT_OK


def cmd_list_orphans(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    window = _window(args, parser, args.min_age)
    rows = read_only(parser, lambda conn, schema: operator_tools.orphan_rows(conn, schema, window))
    return _print_listing(
        operator_tools.OrphanRow.COLUMNS,
        [r.values() for r in rows],
        args.format,
        "orphaned order(s)",
    )


def cmd_list_inconsistencies(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    bounded = args.hours is not None or args.since is not None or args.until is not None
    # Without bounds every payment counts, however recent: an inconsistency has no grace period.
    window = _window(args, parser, 0) if bounded else None
    rows = read_only(
        parser, lambda conn, schema: operator_tools.inconsistency_rows(conn, schema, window)
    )
    return _print_listing(
        operator_tools.INCONSISTENCY_COLUMNS, rows, args.format, "inconsistency(ies)"
    )


def cmd_doctor(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """One shop's full report; with a shops file and no --shop, every shop's verdict in one table."""
    shops = shops_from_env()
    if shops is not None and SELECTED.shop is None:
        return _doctor_every_shop(parser, list(shops))
    report = _diagnose(parser)
    for line in report.lines():
        print(line)
    if report.acts_wrongly:
        print(f"error: {report.verdict}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def _diagnose(parser: argparse.ArgumentParser):
    from regularization_pipeline.core.operations.doctor import diagnose
    from regularization_pipeline.core.operations.provider_check import check_provider

    try:
        verifier = payment_verifier()
    except ConfigurationError as exc:
        parser.exit(EXIT_USAGE, f"error: {exc}\n")

    def diagnose_all(conn, schema):
        report = diagnose(conn, schema)
        if verifier is not None:
            check_provider(report, conn, schema, verifier)
        return report

    try:
        return read_only(parser, diagnose_all, checked=False)
    finally:
        if verifier is not None:
            verifier.close()


def _doctor_every_shop(parser: argparse.ArgumentParser, names: list[str]) -> int:
    """Each shop diagnosed in turn; one that cannot be reached or read says why in its row."""
    rows, refused = [], 0
    for name in names:
        select_shop(name)
        try:
            report = _diagnose(parser)
            verdict = report.verdict.removeprefix("verdict: ")
            refused += report.acts_wrongly
        except (RegularizationError, SystemExit) as exc:
            verdict = f"error: {exc}" if isinstance(exc, RegularizationError) else "error"
            refused += 1
        rows.append((name, verdict))
    select_shop(None)
    print(format_table(rows, headers=("shop", "verdict")))
    if refused:
        print(
            f"error: {refused} of {len(names)} shop(s) not ready: `doctor --shop NAME` says why",
            file=sys.stderr,
        )
        return EXIT_USAGE
    return EXIT_OK


def cmd_regularize_order(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from regularization_pipeline.core.regularizer import Regularizer, RunOptions

    try:
        options = RunOptions.parse(
            **{
                k: v
                for k, v in {
                    "min_age_minutes": args.min_age,
                    "dry_run": args.dry_run,
                    "max_attempts": args.max_attempts,
                }.items()
                if v is not None
            }
        )
    except ConfigurationError as exc:
        parser.error(
            str(exc)
            .replace("min_age_minutes", "--min-age")
            .replace("max_attempts", "--max-attempts")
        )
    db = open_database(parser, migrated=True)
    verifier = None
    try:
        verifier = payment_verifier()
        regularizer = Regularizer(db.engine, db.schema, verifier=verifier)
        outcome = operator_tools.regularize_order(
            regularizer, args.order_id, options, f"operator-{uuid.uuid4()}"
        )
    finally:
        if verifier is not None:
            verifier.close()
        db.engine.dispose()
    print(f"order {outcome.order_id}: {outcome.action} ({outcome.reason})")
    if outcome.action == "regularized":
        print(
            "its OrderCompleted event is in the outbox: the delivery job delivers it within a "
            "minute, `deliver` at once"
        )
    return EXIT_OK if outcome.action in ("regularized", "dry-run") else EXIT_FAILED


def cmd_release(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from regularization_pipeline.core.regularizer import Regularizer

    db = open_database(parser, migrated=True)
    try:
        with db.engine.connect() as conn:
            order_id = operator_tools.existing_order_id(conn, db.schema, args.order_id)
        Regularizer(db.engine, db.schema).release(order_id)
    finally:
        db.engine.dispose()
    print(f"order {order_id}: released from quarantine; the next run retries it")
    return EXIT_OK


def cmd_redeliver(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if (args.since or args.until) and not args.all_dead:
        parser.error("--since/--until select dead events with --all-dead")
    publisher = _event_publisher()
    db = open_database(parser, migrated=True)
    try:
        count = operator_tools.redeliver_dead_events(
            db.engine,
            db.tables(),
            event_ids=args.event_id or (),
            all_dead=args.all_dead,
            since=args.since,
            until=args.until,
        )
    except ConfigurationError as exc:
        db.engine.dispose()
        parser.error(str(exc).replace("all_dead", "--all-dead"))
    try:
        print(f"{count} dead event(s) back in the queue; delivering the outbox now")
        return _deliver(db, publisher) if count else EXIT_OK
    finally:
        db.engine.dispose()


def cmd_deliver(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    publisher = _event_publisher()
    db = open_database(parser, migrated=True)
    try:
        return _deliver(db, publisher)
    finally:
        db.engine.dispose()


def _event_publisher():
    """The publishers' settings the jobs use, checked: a bad one is refused before anything changes."""
    from regularization_pipeline.defs.resources import EventPublisherResource

    publisher = EventPublisherResource.from_env().process_config_and_initialize()
    publisher.settings()
    return publisher


def _deliver(db, publisher) -> int:
    """Deliver every event due in the outbox now, as the delivery job does; 1 when all failed."""
    from regularization_pipeline.core.delivery.outbox import count_due
    from regularization_pipeline.core.delivery.publishers import delivery_line
    from regularization_pipeline.defs.assets import deliver_due

    summary, destination = deliver_due(
        db.engine, db.tables(), publisher, owner=f"operator-{uuid.uuid4()}"
    )
    print(f"events: {delivery_line(destination, summary.delivered, summary.retried, summary.dead)}")
    left = count_due(db.engine, db.tables())
    if summary.stopped_by_budget or left:
        print(f"{left} event(s) still due: `deliver` again, or the delivery job takes them")
    attempted = summary.delivered + summary.retried + summary.dead
    return EXIT_FAILED if attempted and not summary.delivered else EXIT_OK


def cmd_prune(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    db = open_database(parser, migrated=True)
    try:
        summary = retention.prune_history(
            db.engine, db.tables(), args.older_than_days, dry_run=args.dry_run
        )
    except ConfigurationError as exc:
        parser.error(str(exc).replace("older_than_days", "--older-than-days"))
    finally:
        db.engine.dispose()
    verb = "would prune" if summary.dry_run else "pruned"
    print(f"{verb} history before {summary.cutoff.isoformat(sep=' ', timespec='seconds')} UTC:")
    print(format_table(list(summary.as_metrics().items())))
    return EXIT_OK


def cmd_send_test_alert(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from regularization_pipeline.core.alerting.routes import NO_CHANNEL, report_test_alert
    from regularization_pipeline.defs.resources import AlertResource

    # The resource the sensors use, its EnvVar fields resolved as a tick resolves them.
    alerts = AlertResource.from_env().process_config_and_initialize()
    for warning in alerts.warnings():
        print(f"warning: alert setting: {warning}", file=sys.stderr)
    lines, ok = report_test_alert(alerts.channels(), args.severity)
    if lines == [NO_CHANNEL]:
        parser.exit(EXIT_USAGE, f"error: {NO_CHANNEL}\n")
    for line in lines:
        print(line)
    return EXIT_OK if ok else EXIT_FAILED


def cmd_explain(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        options = RunOptions.parse(
            **({} if args.min_age is None else {"min_age_minutes": args.min_age})
        )
    except ConfigurationError as exc:
        parser.error(str(exc).replace("min_age_minutes", "--min-age"))
    window = options.window(utcnow())
    found = read_only(
        parser,
        lambda conn, schema: operator_tools.explain_order(conn, schema, args.order_id, window),
    )
    verifier = payment_verifier()
    if verifier is not None:
        verifier.close()
    for line in found.lines(asks_provider=verifier is not None):
        print(line)
    return EXIT_OK
