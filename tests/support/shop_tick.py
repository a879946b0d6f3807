"""Run one tick of the schedule against a shops file, in a process of its own, as the daemon
would: each run request of the tick executed in turn. Prints one JSON line, shop -> outcome.

    REGULARIZATION_SHOPS_FILE=shops.yaml DAGSTER_HOME=... python -m tests.support.shop_tick

The shops file is read when the code location loads, so a test of many shops runs it here,
in a fresh process, as every Dagster process does.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys

import dagster as dg
import yaml

from tests.support import ROOT
from tests.support.processes import dagster_home


def main() -> int:
    from regularization_pipeline.definitions import defs
    from regularization_pipeline.defs import jobs

    job = defs.resolve_job_def(jobs.JOB_NAME)
    outcome: dict[str, dict] = {}
    with dg.DagsterInstance.get() as instance:
        tick = dt.datetime(2026, 1, 1, 12, 5, tzinfo=dt.UTC)
        context = dg.build_schedule_context(
            instance=instance,
            scheduled_execution_time=tick,
            repository_def=defs.get_repository_def(),
        )
        data = jobs.regularize_completed_orders_every_5_minutes.evaluate_tick(context)
        for request in data.run_requests or []:
            result = job.execute_in_process(
                instance=instance,
                partition_key=request.partition_key,
                tags=request.tags,
                raise_on_error=False,
            )
            failures = [
                _reason(event.step_failure_data) for event in result.get_step_failure_events()
            ]
            run = instance.get_run_by_id(result.run_id)
            outcome[request.partition_key] = {
                "success": result.success,
                "run_key": request.run_key,
                "tags": dict(run.tags),
                "failures": failures,
            }
        outcome["_other_schedules"] = _other_schedules(defs, instance, tick)
        outcome["_checks"] = _checks_runs(defs, instance)
    print(json.dumps(outcome))
    return 0


def _checks_runs(defs, instance) -> dict:
    """The checks job run for each shop, after the tick's runs: shop -> its orphan check's figures."""
    from regularization_pipeline.defs import check_jobs
    from regularization_pipeline.defs.shops import SHOPS, shop_tags

    job = defs.resolve_job_def(check_jobs.CHECKS_JOB_NAME)
    found = {}
    for name in SHOPS:
        result = job.execute_in_process(
            instance=instance, partition_key=name, tags=shop_tags(name), raise_on_error=False
        )
        found[name] = {
            e.check_name: e.metadata["orphaned_orders"].value
            for e in result.get_asset_check_evaluations()
            if "orphaned_orders" in e.metadata
        } or {"success": result.success}
    return found


def run_tick(
    tmp_path, shops: list[dict], env: dict[str, str], module: str = "shop_tick", *args
) -> dict:
    """Write ``shops`` as the shops file, run ``tests.support.<module>`` (this tick, by default)
    in a child process with ``env`` and a Dagster home in ``tmp_path``; its JSON line."""
    home = dagster_home(tmp_path)
    shops_file = tmp_path / "shops.yaml"
    shops_file.write_text(yaml.safe_dump({"shops": shops}))
    child_env = {
        **os.environ,
        **env,
        "DAGSTER_HOME": str(home),
        "REGULARIZATION_SHOPS_FILE": str(shops_file),
    }
    child_env.pop("REGULARIZATION_DATABASE_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", f"tests.support.{module}", *args],
        cwd=ROOT,
        env=child_env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _other_schedules(defs, instance, tick) -> dict:
    """The checks and delivery schedules' requests at the same tick (each a partition key)."""
    from regularization_pipeline.defs import check_jobs, delivery_jobs
    from regularization_pipeline.defs.resources import AppDatabaseResource

    keys = {}
    for schedule in (
        check_jobs.check_app_orders_every_2_minutes,
        delivery_jobs.deliver_order_completed_events_every_minute,
    ):
        with dg.build_schedule_context(
            instance=instance,
            scheduled_execution_time=tick,
            repository_def=defs.get_repository_def(),
            resources={"app_db": AppDatabaseResource.from_env()},
        ) as context:
            data = schedule.evaluate_tick(context)
        keys[schedule.name] = sorted(r.partition_key for r in data.run_requests or [])
    return keys


def _reason(data) -> str:
    """The failure's description, else its error's innermost message (what the UI shows)."""
    if data.user_failure_data and data.user_failure_data.description:
        return data.user_failure_data.description
    error, messages = data.error, []
    while error is not None:
        messages.append(error.message.strip())
        error = error.cause
    return " <- ".join(reversed(messages))


if __name__ == "__main__":
    sys.exit(main())
