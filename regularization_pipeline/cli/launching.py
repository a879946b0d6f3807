"""Launching the job once in this process on the local instance, and reporting what it did
(read back from its Dagster events). A CLI run killed on the way is failed by the next start."""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import io
import os
import re
import shutil
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from regularization_pipeline.cli.arguments import DEBUG
from regularization_pipeline.core.errors import BusyError, ConfigurationError


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
    def delivery_line(self) -> str:
        from regularization_pipeline.core.delivery.publishers import delivery_line

        e = self.events
        return delivery_line(
            self.delivered_to,
            int(e.get("delivered", 0)),
            int(e.get("retried", 0)),
            int(e.get("dead", 0)),
        )

    @property
    def orders_failed(self) -> int:
        return int(self.metrics.get("failed", 0)) + int(self.metrics.get("quarantined", 0))


# A CLI run's process, so the next one can tell a run record its dead process left behind.
LAUNCHED_BY, HOST_TAG, PID_TAG, SHOP_TAG = (
    "regularization/launched_by",
    "regularization/host",
    "regularization/pid",
    # Which shop's run lock the run held (run_lock.lock_key): the lock is the heartbeat.
    "regularization/shop_lock",
)


INSTANCE_LOCK_FILE = ".regularization-instance.lock"
INSTANCE_CONFIG = "dagster.yaml"
# The repository's instance configuration (run limits, pools, run monitoring, telemetry off),
# beside the package in a checkout or an editable install; `make dev` copies the same file.
REPOSITORY_INSTANCE_CONFIG = Path(__file__).resolve().parents[2] / INSTANCE_CONFIG


def ensure_instance_config(home: str, template: Path = REPOSITORY_INSTANCE_CONFIG) -> str | None:
    """``home``'s dagster.yaml, created from the repository's when it has none (the line that
    says so is returned); refused in one line when there is no repository's to copy.

    Without it the instance has no run limit, no pool, no run monitoring, and prints
    Dagster's telemetry banner: not the instance `make dev` and the UI use."""
    target = Path(home) / INSTANCE_CONFIG
    if target.is_file():
        return None
    if not template.is_file() or "regularization/concurrency" not in template.read_text():
        raise ConfigurationError(
            f"DAGSTER_HOME={home} has no {INSTANCE_CONFIG}: copy the repository's there "
            "(`make dev` does), or runs would have no run limit"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, target)
    return f"created {target} from the repository's (run limits, pools, telemetry off)"


def launch_job(
    instance,
    config: Mapping[str, Any],
    tags: Mapping[str, str] | None = None,
    log_level: str = "INFO",
    run_id: str | None = None,
    shop_lock: str | None = None,
    shop: str | None = None,
) -> JobReport:
    """Run the job once in this process against ``instance``, after making sure none is in flight.

    Called holding the shop's run lock, which the run's own ``Regularizer.run`` takes again.
    ``shop`` is the partition (a shops file's shop), else None. ``log_level`` is the console's.
    Without --debug, an error line keeps its first line
    only: the operator reads what failed, and the report below says the rest.
    """
    from regularization_pipeline.definitions import defs
    from regularization_pipeline.defs.jobs import JOB_NAME, in_flight_run
    from regularization_pipeline.defs.shops import shop_tags

    fail_abandoned_cli_runs(instance, shop_lock)
    if shop_lock is not None:
        tags = {**(tags or {}), SHOP_TAG: shop_lock}
    if shop is not None:
        tags = {**(tags or {}), **shop_tags(shop)}
    running = in_flight_run(instance, shop=shop)
    if running is not None:
        run = running.dagster_run
        raise BusyError(
            f"busy: run {run.run_id} of {JOB_NAME} is {run.status.value} since "
            f"{_utc_text(running.start_time or running.create_timestamp)}: not starting another"
        )
    job = defs.resolve_job_def(JOB_NAME)
    if DEBUG.on:
        return _report(_execute(job, instance, config, tags, log_level, run_id, shop))
    stderr, sys.stderr = sys.stderr, _ErrorsInOneLine(sys.stderr)
    try:
        return _report(_execute(job, instance, config, tags, log_level, run_id, shop))
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


def _execute(
    job, instance, config: Mapping[str, Any], tags, log_level: str, run_id=None, shop=None
):
    return job.execute_in_process(
        partition_key=shop,
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


def fail_abandoned_cli_runs(instance, shop_lock: str | None = None) -> list[str]:
    """Mark failed the CLI runs of the job the instance shows in flight whose holder is gone.

    Nothing monitors a CLI run: killed (SIGKILL, an OOM kill, a deploy), it stays STARTED in
    the instance for good and would block every later run. Its shop lock died with it; the
    record is what is left, and it is failed here, with the reason, by the next start.

    ``shop_lock`` is the key of the shop's run lock, which the caller holds: a run tagged with
    it cannot be alive, since it would hold that lock, whatever host or PID namespace it ran in
    (a container sharing DAGSTER_HOME). Runs without the tag are judged by their host and pid.
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
        pid, its_host = run.tags.get(PID_TAG, ""), run.tags.get(HOST_TAG, "?")
        lock_free = shop_lock is not None and run.tags.get(SHOP_TAG) == shop_lock
        if not lock_free and (its_host != host or not pid.isdigit() or _process_alive(int(pid))):
            continue
        instance.report_run_failed(
            run,
            message=f"abandoned: its CLI process {pid} on {its_host} ended without finishing "
            "(killed?); marked failed by the next CLI run"
            + (", which holds the shop's run lock it held" if lock_free else ""),
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
        print(f"events: {report.delivery_line}", file=out)
    for name, (passed, severity) in sorted(report.checks.items()):
        print(f"check {name}: {'passed' if passed else f'FAILED ({severity})'}", file=out)
    for failure in report.failures:
        print(f"error: {failure}", file=out)
