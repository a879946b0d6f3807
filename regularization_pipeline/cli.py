"""``regularize-completed-orders``: the operator CLI, mirroring the original artisan command.

    regularize-completed-orders [run] --limit 50 --sleep 2 --hours H --dry-run --mode auto
    regularize-completed-orders migrate
    regularize-completed-orders regularize-order --order-id N [--dry-run]
    regularize-completed-orders release --order-id N
    regularize-completed-orders list-orphans [--hours H | --since T --until T] [--format table|csv]
    regularize-completed-orders list-inconsistencies [--hours H | --since T --until T] [--format table|csv]
    regularize-completed-orders redeliver --event-id ID [ID ...] | --all-dead [--since T --until T]
    regularize-completed-orders prune --older-than-days 90 [--dry-run]
    regularize-completed-orders doctor

``run`` (the default command) runs the Dagster job once against the instance in
``$DAGSTER_HOME``, so the run, its logs and its metadata show up in the UI like
a scheduled one. It refuses to start while another run of the job is queued or
in progress. Exit codes: 0 done, 1 some orders failed or the run failed,
2 bad input, 3 another run is in flight.

Each command is a function registered in ``build_parser`` with the subparser
that reads its options. The operator tools call ``core`` directly against
REGULARIZATION_DATABASE_URL (the same checks as the UI's ops jobs, in
``core.operator_tools`` and ``core.retention``); the lists are read-only.
A malformed time or an unknown id is a usage error (2) that changes nothing.
Dagster and the definitions are imported inside the commands that need them,
so a usage error answers at once.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import fcntl
import io
import math
import os
import re
import socket
import sys
import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from regularization_pipeline.core.clock import utcnow
from regularization_pipeline.core.detection import orphans as d
from regularization_pipeline.core.errors import (
    BusyError,
    ConfigurationError,
    RegularizationError,
    describe_error,
)
from regularization_pipeline.core.operations import operator_tools, retention
from regularization_pipeline.core.run import RunOptions
from regularization_pipeline.core.shop import migrations, run_lock
from regularization_pipeline.core.shop.engine import (
    check_reachable,
    create_app_engine,
    database_url_from_env,
)
from regularization_pipeline.core.shop.mapping import AppSchema, bind_schema, load_mapping

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


# --- running the job ------------------------------------------------------------------


@dataclass
class JobReport:
    """What a run did, read back from its Dagster events."""

    run_id: str
    success: bool
    metrics: dict[str, float | int]
    events: dict[str, float | int]
    failures: list[str]
    checks: dict[str, tuple[bool, str]]  # check name -> (passed, severity)
    delivered_to: str = ""

    @property
    def orders_failed(self) -> int:
        return int(self.metrics.get("failed", 0)) + int(self.metrics.get("quarantined", 0))


# A CLI run's process, so the next one can tell a run record its dead process left behind.
LAUNCHED_BY, HOST_TAG, PID_TAG = (
    "regularization/launched_by",
    "regularization/host",
    "regularization/pid",
)
INSTANCE_LOCK_FILE = ".regularization-instance.lock"


def launch_job(
    instance,
    config: Mapping[str, Any],
    tags: Mapping[str, str] | None = None,
    log_level: str = "INFO",
    run_id: str | None = None,
) -> JobReport:
    """Run the job once in this process against ``instance``, after making sure none is in flight.

    Called holding the shop's run lock, which the run's own ``Regularizer.run`` takes again.
    ``log_level`` is the console's. Without --debug, an error line keeps its first line
    only: the operator reads what failed, and the report below says the rest.
    """
    from regularization_pipeline.definitions import defs
    from regularization_pipeline.defs.jobs import JOB_NAME, in_flight_run

    fail_abandoned_cli_runs(instance)
    running = in_flight_run(instance)
    if running is not None:
        run = running.dagster_run
        raise BusyError(
            f"busy: run {run.run_id} of {JOB_NAME} is {run.status.value} since "
            f"{_utc_text(running.start_time or running.create_timestamp)}: not starting another"
        )
    job = defs.resolve_job_def(JOB_NAME)
    if DEBUG.on:
        return _report(_execute(job, instance, config, tags, log_level, run_id))
    stderr, sys.stderr = sys.stderr, _ErrorsInOneLine(sys.stderr)
    try:
        return _report(_execute(job, instance, config, tags, log_level, run_id))
    finally:
        sys.stderr = stderr


class _ErrorsInOneLine(io.TextIOBase):
    """stderr for Dagster's console while a job runs: an error record keeps its first line.

    Dagster prints a failed step with its whole stack trace; the operator needs what
    failed (the report below says the rest, and --debug shows everything).
    """

    RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4} - \S+ - (\w+) - ")

    def __init__(self, target):
        self.target = target
        self.dropping = False
        self.pending = ""

    def write(self, text: str) -> int:
        self.pending += text
        while "\n" in self.pending:
            line, self.pending = self.pending.split("\n", 1)
            record = self.RECORD.match(line)
            if record:
                self.dropping = record.group(1) in ("ERROR", "CRITICAL")
                self.target.write(line + "\n")
            elif not self.dropping:
                self.target.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.target.flush()


def _execute(job, instance, config: Mapping[str, Any], tags, log_level: str, run_id=None):
    return job.execute_in_process(
        instance=instance,
        run_config={
            "ops": {"regularized_orders": {"config": dict(config)}},
            "loggers": {"console": {"config": {"log_level": log_level}}},
        },
        tags={
            LAUNCHED_BY: "cli",
            HOST_TAG: socket.gethostname(),
            PID_TAG: str(os.getpid()),
            **(tags or {}),
        },
        run_id=run_id,
        raise_on_error=False,
    )


def _utc_text(moment: float | dt.datetime | None) -> str:
    if moment is None:
        return "an unknown time"
    if isinstance(moment, float | int):
        moment = dt.datetime.fromtimestamp(moment, dt.UTC)
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def fail_abandoned_cli_runs(instance) -> list[str]:
    """Mark failed the CLI runs of the job this host's instance shows in flight, whose process is gone.

    Nothing monitors a CLI run: killed (SIGKILL, an OOM kill, a deploy), it stays STARTED in
    the instance for good and would block every later run. Its shop lock died with it; the
    record is what is left, and it is failed here, with the reason, by the next start.
    """
    import dagster as dg

    from regularization_pipeline.defs.jobs import IN_FLIGHT_STATUSES, JOB_NAME

    host, failed = socket.gethostname(), []
    records = instance.get_run_records(
        filters=dg.RunsFilter(
            job_name=JOB_NAME, statuses=IN_FLIGHT_STATUSES, tags={LAUNCHED_BY: "cli"}
        )
    )
    for record in records:
        run = record.dagster_run
        pid = run.tags.get(PID_TAG, "")
        if run.tags.get(HOST_TAG) != host or not pid.isdigit() or _process_alive(int(pid)):
            continue
        instance.report_run_failed(
            run,
            message=f"abandoned: its CLI process {pid} on {host} ended without finishing "
            "(killed?); marked failed by the next CLI run",
        )
        failed.append(run.run_id)
    return failed


@contextlib.contextmanager
def dagster_instance(home: str):
    """The instance in ``home``, its storage created or migrated by one process at a time.

    Two first starts at once on a fresh DAGSTER_HOME both created its SQLite storage and
    left two Alembic heads behind; an OS lock in the directory serializes start-up.
    """
    import dagster as dg

    with open(os.path.join(home, INSTANCE_LOCK_FILE), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            instance = dg.DagsterInstance.get()
            # Touch every storage while serialized: each creates or migrates its tables on first use.
            instance.get_run_records(limit=1)
            instance.event_log_storage.get_maximum_record_id()
            instance.schedule_storage  # noqa: B018 - created on first access
        except BaseException:
            fcntl.flock(lock, fcntl.LOCK_UN)
            raise
        fcntl.flock(lock, fcntl.LOCK_UN)
    with instance:
        yield instance


def _metadata_of(result, asset: str) -> dict[str, float | int]:
    for event in result.get_asset_materialization_events():
        if event.asset_key.to_user_string() == asset:
            return {
                k: v.value
                for k, v in event.materialization.metadata.items()
                if isinstance(v.value, int | float)
            }
    return {}


def _report(result) -> JobReport:
    failures = []
    for event in result.get_step_failure_events():
        data = event.step_failure_data
        message = data.user_failure_data.description if data.user_failure_data else None
        failures.append(
            f"{event.step_key}: {message or (data.error.message.strip() if data.error else 'failed')}"
        )
    checks = {
        e.check_name: (e.passed, e.severity.value) for e in result.get_asset_check_evaluations()
    }
    return JobReport(
        result.run_id,
        result.success,
        _metadata_of(result, "regularized_orders"),
        _metadata_of(result, "order_completed_events"),
        failures,
        checks,
        _text_of(result, "order_completed_events", "delivered_to"),
    )


def _text_of(result, asset: str, key: str) -> str:
    for event in result.get_asset_materialization_events():
        if event.asset_key.to_user_string() == asset and key in event.materialization.metadata:
            return str(event.materialization.metadata[key].value)
    return ""


def format_table(
    rows: Sequence[tuple[str, Any]], headers: tuple[str, str] = ("metric", "value")
) -> str:
    width = max(len(headers[0]), *(len(name) for name, _ in rows)) if rows else len(headers[0])
    lines = [
        f"{headers[0]:<{width}}  {headers[1]}",
        f"{'-' * width}  {'-' * max(len(headers[1]), 5)}",
    ]
    lines += [f"{name:<{width}}  {value}" for name, value in rows]
    return "\n".join(lines)


def print_report(report: JobReport, out=sys.stdout) -> None:
    print(f"run {report.run_id}: {'SUCCESS' if report.success else 'FAILURE'}", file=out)
    if report.metrics:
        print(format_table(list(report.metrics.items())), file=out)
    if report.events:
        print(format_table([(f"events_{k}", v) for k, v in report.events.items()]), file=out)
    if report.delivered_to:
        print(f"events: {report.delivered_to}", file=out)
    for name, (passed, severity) in sorted(report.checks.items()):
        print(f"check {name}: {'passed' if passed else f'FAILED ({severity})'}", file=out)
    for failure in report.failures:
        print(f"error: {failure}", file=out)


# --- commands -------------------------------------------------------------------------


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--limit", type=_whole_number, help="most orders to act on in this run (default 50)"
    )
    parser.add_argument("--sleep", type=_number, help="seconds between two orders (default 2)")
    parser.add_argument(
        "--hours", type=_number, help="only payments completed within the last H hours"
    )
    parser.add_argument(
        "--min-age",
        type=_number,
        metavar="MINUTES",
        help="grace period: leave payments younger than this to their webhook (default 10)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", default=None, help="decide and audit, change nothing"
    )
    parser.add_argument(
        "--batch-size", type=_whole_number, help="candidate ids read per page (default 50)"
    )
    parser.add_argument(
        "--max-attempts",
        type=_whole_number,
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
        type=_number,
        metavar="SECONDS",
        help="stop taking new orders after this long (default 240)",
    )
    parser.add_argument(
        "--mode",
        choices=["auto", "per_order", "batched"],
        help="per_order: one transaction per order; batched: batch_size orders per transaction; "
        "auto (default): batched when --sleep is 0 and no provider verification is configured",
    )


def run_config_from_args(
    args: argparse.Namespace, parser: argparse.ArgumentParser
) -> dict[str, Any]:
    """The options given, validated by the job's own config; a bad one is a usage error naming its flag."""
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


def _name_flags(exc: ConfigurationError) -> str:
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


def cmd_run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:

    config = run_config_from_args(args, parser)
    if not os.environ.get("DAGSTER_HOME"):
        raise ConfigurationError(
            "DAGSTER_HOME is not set: point it at the Dagster instance directory "
            "(`make dev` uses .dagster_home)"
        )
    # What the job would refuse under a stack trace, refused here in one line and before
    # anything runs: the URL (the code location's own default is the demo shop, so a run
    # from the command line must name it), the mapping, the server, our tables, the
    # publishers and the provider settings.
    db = _open_database(parser, migrated=True)
    run_id = str(uuid.uuid4())
    try:
        _check_delivery_settings()
        _payment_verifier_or_none()
        # The shop's lock first: a second run answers busy without touching anything.
        with (
            run_lock.hold(db.engine, db.prefix, run_id),
            dagster_instance(os.environ["DAGSTER_HOME"]) as instance,
        ):
            log_level = "DEBUG" if DEBUG.on else "INFO"
            report = launch_job(instance, config, log_level=log_level, run_id=run_id)
    finally:
        db.engine.dispose()
    print_report(report)
    if not report.success:
        return EXIT_FAILED
    if report.events.get("all_deliveries_failed"):
        print("error: every OrderCompleted delivery of this run failed", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_FAILED if report.orders_failed else EXIT_OK


def _check_delivery_settings() -> None:
    """The publishers the job would build, built and closed: a bad choice is refused now."""
    from regularization_pipeline.core.delivery.publishers import close_publishers
    from regularization_pipeline.defs.resources import EventPublisherResource

    resource = EventPublisherResource.from_env().process_config_and_initialize()
    close_publishers(resource.build_publishers())


def cmd_migrate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    engine = create_app_engine(database_url_from_env())
    prefix = load_mapping().table_prefix
    try:
        check_reachable(engine)
        revision = migrations.upgrade(engine, prefix)
    finally:
        engine.dispose()
    print(
        f"migrated {engine.url.render_as_string(hide_password=True)} (tables {prefix}*) to revision {revision}"
    )
    return EXIT_OK


# --- operator tools -------------------------------------------------------------------


def _utc_time(text: str) -> dt.datetime:
    try:
        return operator_tools.parse_utc_time(text)
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time (e.g. 2024-05-01 or 2024-05-01T13:30:00+02:00; UTC without offset)"
        ) from None


def _order_id(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("an order id is required")
    return text.strip()


def _add_time_filter(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--hours", type=_number, help=f"only {what} within the last H hours")
    parser.add_argument(
        "--since",
        type=_utc_time,
        metavar="ISO_TIME",
        help=f"only {what} at or after this time (UTC)",
    )
    parser.add_argument(
        "--until",
        type=_utc_time,
        metavar="ISO_TIME",
        help=f"only {what} at or before this time (UTC)",
    )


def _add_format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--format", choices=["table", "csv"], default="table", help="output format (default table)"
    )


@dataclass
class OpenDatabase:
    engine: Any
    schema: AppSchema
    prefix: str

    def tables(self):
        from regularization_pipeline.core.shop.tables import owned_tables

        return owned_tables(self.prefix)


def _open_database(parser: argparse.ArgumentParser, *, migrated: bool = False) -> OpenDatabase:
    """The application database with its mapping checked (and our tables, when ``migrated``).

    Raises the RegularizationError that names what is wrong (main() makes it exit 2).
    """
    engine = create_app_engine(database_url_from_env())
    try:
        mapping = load_mapping()
        check_reachable(engine)
        schema = bind_schema(engine, mapping)
        if migrated:
            migrations.require_migrated(engine, mapping.table_prefix)
    except BaseException:
        engine.dispose()
        raise
    return OpenDatabase(engine, schema, mapping.table_prefix)


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


def _read_only(parser: argparse.ArgumentParser, query: Callable[[Any, AppSchema], list]) -> list:
    db = _open_database(parser)
    try:
        with db.engine.connect() as conn:
            return query(conn, db.schema)
    finally:
        db.engine.dispose()


def _print_listing(
    columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str, what: str
) -> int:
    print_rows(columns, rows, fmt)
    if fmt == "table":  # on stderr, so that piping the table keeps only the rows
        print(f"{len(rows)} {what}", file=sys.stderr)
    return EXIT_OK


def cmd_list_orphans(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    window = _window(args, parser, args.min_age)
    rows = _read_only(parser, lambda conn, schema: operator_tools.orphan_rows(conn, schema, window))
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
    rows = _read_only(
        parser, lambda conn, schema: operator_tools.inconsistency_rows(conn, schema, window)
    )
    return _print_listing(
        operator_tools.INCONSISTENCY_COLUMNS, rows, args.format, "inconsistency(ies)"
    )


def cmd_doctor(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from regularization_pipeline.core.operations.doctor import diagnose

    report = _read_only(parser, lambda conn, schema: diagnose(conn, schema))
    for line in report.lines():
        print(line)
    if report.acts_wrongly:
        print(f"error: {report.verdict}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def _payment_verifier():
    """The provider verification the job would use, from the same variables (None when off)."""
    from regularization_pipeline.defs.resources import PaymentGatewayResource

    # The resource the code location builds, its EnvVar fields resolved as a run would.
    return PaymentGatewayResource.from_env().process_config_and_initialize().verifier()


def _payment_verifier_or_none() -> None:
    """Refuse bad provider settings now (ConfigurationError), as the job would later."""
    verifier = _payment_verifier()
    if verifier is not None:
        verifier.close()


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
    db = _open_database(parser, migrated=True)
    verifier = None
    try:
        verifier = _payment_verifier()
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
        print("its OrderCompleted event is in the outbox; the next run of the job delivers it")
    return EXIT_OK if outcome.action in ("regularized", "dry-run") else EXIT_FAILED


def cmd_release(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from regularization_pipeline.core.regularizer import Regularizer

    db = _open_database(parser, migrated=True)
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
    db = _open_database(parser, migrated=True)
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
        parser.error(str(exc).replace("all_dead", "--all-dead"))
    finally:
        db.engine.dispose()
    print(f"{count} dead event(s) back in the queue; the next run of the job delivers them")
    return EXIT_OK


def cmd_prune(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    db = _open_database(parser, migrated=True)
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


Command = Callable[[argparse.Namespace, argparse.ArgumentParser], int]
DEFAULT_COMMAND = "run"


def _register_run(sub, commands: dict[str, tuple[argparse.ArgumentParser, Command]]) -> None:
    run = sub.add_parser(
        "run",
        help="run the regularization job once (the default)",
        description="Run the Dagster job once against $DAGSTER_HOME's instance.",
    )
    _add_run_options(run)
    commands["run"] = (run, cmd_run)


def _register_migrate(sub, commands: dict[str, tuple[argparse.ArgumentParser, Command]]) -> None:
    migrate = sub.add_parser(
        "migrate",
        help="create or upgrade this project's tables in REGULARIZATION_DATABASE_URL",
        description="Alembic `upgrade head` for the audit, outbox and attempts tables.",
    )
    commands["migrate"] = (migrate, cmd_migrate)


def _register_regularize_order(
    sub, commands: dict[str, tuple[argparse.ArgumentParser, Command]]
) -> None:
    one = sub.add_parser(
        "regularize-order",
        help="regularize one orphaned order now, with every guarantee of a run",
        description="Lock, re-verify and complete one order, writing its outbox and audit rows. "
        "Refuses (exit 2, nothing changed) an unknown order or one that is not an orphan.",
    )
    one.add_argument(
        "--order-id", required=True, type=_order_id, help="the order's id in the application"
    )
    one.add_argument(
        "--min-age",
        type=_number,
        metavar="MINUTES",
        help="grace period left to the webhook (default 10)",
    )
    one.add_argument(
        "--max-attempts",
        type=_whole_number,
        help="failures before the order is quarantined (default 5)",
    )
    one.add_argument(
        "--dry-run", action="store_true", default=None, help="decide and audit, change nothing"
    )
    commands["regularize-order"] = (one, cmd_regularize_order)


def _register_release(sub, commands: dict[str, tuple[argparse.ArgumentParser, Command]]) -> None:
    release = sub.add_parser(
        "release",
        help="lift an order's quarantine so the next run retries it",
        description="Reset the failure count of a quarantined order and audit the release.",
    )
    release.add_argument(
        "--order-id", required=True, type=_order_id, help="the quarantined order's id"
    )
    commands["release"] = (release, cmd_release)


def _register_list_orphans(
    sub, commands: dict[str, tuple[argparse.ArgumentParser, Command]]
) -> None:
    orphans = sub.add_parser(
        "list-orphans",
        help="list orphaned orders (read-only)",
        description="Pending orders with a completed payment older than the grace period, "
        "oldest payment first. Times are UTC.",
    )
    _add_time_filter(orphans, "payments completed")
    orphans.add_argument(
        "--min-age", type=_number, metavar="MINUTES", help="grace period (default 10)"
    )
    _add_format(orphans)
    commands["list-orphans"] = (orphans, cmd_list_orphans)


def _register_list_inconsistencies(
    sub, commands: dict[str, tuple[argparse.ArgumentParser, Command]]
) -> None:
    inconsistent = sub.add_parser(
        "list-inconsistencies",
        help="list what the pipeline reports and never fixes (read-only)",
        description="Amount or currency mismatches, double charges, payments on cancelled "
        "or missing orders: one row per kind and order.",
    )
    _add_time_filter(inconsistent, "payments completed")
    _add_format(inconsistent)
    commands["list-inconsistencies"] = (inconsistent, cmd_list_inconsistencies)


def _register_redeliver(sub, commands: dict[str, tuple[argparse.ArgumentParser, Command]]) -> None:
    redeliver = sub.add_parser(
        "redeliver",
        help="put dead-lettered OrderCompleted events back in the queue",
        description="Dead events become pending with a fresh attempt count; the next run "
        "delivers them with their idempotency key.",
    )
    which = redeliver.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--event-id", nargs="+", metavar="EVENT_ID", help="these dead events (all must be dead)"
    )
    which.add_argument(
        "--all-dead", action="store_true", help="every dead event (narrow with --since/--until)"
    )
    redeliver.add_argument(
        "--since", type=_utc_time, metavar="ISO_TIME", help="events created at or after this time"
    )
    redeliver.add_argument(
        "--until", type=_utc_time, metavar="ISO_TIME", help="events created at or before this time"
    )
    commands["redeliver"] = (redeliver, cmd_redeliver)


def _register_prune(sub, commands: dict[str, tuple[argparse.ArgumentParser, Command]]) -> None:
    prune = sub.add_parser(
        "prune",
        help="delete audit rows and settled outbox events older than the retention",
        description="Audit rows (inconsistency reports excepted) and delivered or dead events "
        "with their delivery rows; pending events are never pruned.",
    )
    prune.add_argument(
        "--older-than-days",
        type=_number,
        default=retention.DEFAULT_RETENTION_DAYS,
        metavar="DAYS",
        help=f"retention period (default {retention.DEFAULT_RETENTION_DAYS})",
    )
    prune.add_argument(
        "--dry-run", action="store_true", help="count what would be pruned, delete nothing"
    )
    commands["prune"] = (prune, cmd_prune)


def _register_doctor(sub, commands: dict[str, tuple[argparse.ArgumentParser, Command]]) -> None:
    doctor = sub.add_parser(
        "doctor",
        help="check the mapping against the shop before the first run (read-only)",
        description="Every order and transaction status with how the mapping classifies it, "
        "the mapping's dangerous combinations, the recommended indexes, the server, the time "
        "zone, and what a run would do now. Exits 2 when the mapping would act wrongly.",
    )
    commands["doctor"] = (doctor, cmd_doctor)


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error said in one line (the usage is in --help)."""

    def error(self, message: str):  # noqa: D401 - argparse's hook
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> tuple[
    argparse.ArgumentParser, dict[str, tuple[argparse.ArgumentParser, Command]]
]:
    parser = _Parser(
        prog="regularize-completed-orders",
        description="Complete orders left pending after a lost payment webhook. "
        f"Without a command, runs `{DEFAULT_COMMAND}`.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands: dict[str, tuple[argparse.ArgumentParser, Command]] = {}
    _register_run(sub, commands)
    _register_migrate(sub, commands)
    _register_regularize_order(sub, commands)
    _register_release(sub, commands)
    _register_list_orphans(sub, commands)
    _register_list_inconsistencies(sub, commands)
    _register_redeliver(sub, commands)
    _register_prune(sub, commands)
    _register_doctor(sub, commands)
    return parser, commands


class _Debug:
    """Whether --debug was given: tracebacks and Dagster's own log lines reach the terminal."""

    on = False


DEBUG = _Debug()


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command under one error contract: bad input exits 2 with one line naming the
    problem, a run with failed orders exits 1, another run in flight 3; a traceback only
    with --debug; a closed pipe (``| head``) ends quietly."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    DEBUG.on = "--debug" in args_list
    args_list = [arg for arg in args_list if arg != "--debug"]
    if not DEBUG.on:
        # Dagster's beta and deprecation warnings are noise on an operator's terminal.
        warnings.filterwarnings("ignore")
    parser, commands = build_parser()
    if not args_list or (args_list[0] not in commands and args_list[0] not in ("-h", "--help")):
        args_list.insert(0, DEFAULT_COMMAND)
    args = parser.parse_args(args_list)
    command_parser, command = commands[args.command]
    try:
        return command(args, command_parser)
    except BrokenPipeError:
        # The reader went away (`| head`): nothing more to say, and nothing to say it to.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except BusyError as exc:  # "busy: run R since T"
        print(str(exc), file=sys.stderr)
        return EXIT_BUSY
    except RegularizationError as exc:
        if DEBUG.on:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:
        if DEBUG.on:
            raise
        print(
            f"error: {describe_error(exc)} (again with --debug for the traceback)", file=sys.stderr
        )
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
