"""The real services: dagster-daemon and dagster-webserver on a temporary instance with the repo's dagster.yaml.

One daemon and one webserver serve the whole module (starting them is most of
the cost). Runs are launched through the GraphQL API, queued by the
QueuedRunCoordinator under the repo's tag concurrency limit, and executed by
the daemon in their own processes against a real SQLite shop.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
from dagster_graphql import DagsterGraphQLClient

from regularization_pipeline.core.shop import migrations
from regularization_pipeline.core.shop.engine import create_app_engine
from regularization_pipeline.defs.jobs import CONCURRENCY_TAG, JOB_NAME, SCHEDULE_CRON_ENV
from regularization_pipeline.demo.handlers import DEMO_PUBLISHER_ENV, effect_counts
from regularization_pipeline.demo.shop import ShopWriter
from tests.support import ROOT
from tests.support.dagster import instance_env
from tests.support.processes import BIN, free_port, wait_for_http
from tests.support.rows import assert_flip_iff_event, audit_actions, outbox_states

# A real webserver and daemon: make test runs them, test-fast does not.
pytestmark = pytest.mark.slow

LOCATION = "regularization_pipeline"
FINISHED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
# The mutation the UI's Materialize button sends: the implicit asset job, subset to one asset.
LAUNCH_MUTATION = """
mutation LaunchPipelineExecution($executionParams: ExecutionParams!) {
  launchPipelineExecution(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PipelineConfigValidationInvalid { errors { message } }
    ... on Error { message }
  }
}
"""


class Services:
    def __init__(self, home: Path, shop: ShopWriter, port: int, logs: Path, env: dict[str, str]):
        self.home, self.shop, self.port, self.logs, self.env = home, shop, port, logs, env

    def client(self) -> DagsterGraphQLClient:
        """A client per caller: its transport is not safe to share between threads."""
        return DagsterGraphQLClient("127.0.0.1", port_number=self.port)

    def instance(self) -> dg.DagsterInstance:
        return dg.DagsterInstance.from_config(str(self.home))

    def submit(self, limit: int, sleep: float, marker: str) -> str:
        return self.client().submit_job_execution(
            JOB_NAME,
            repository_location_name=LOCATION,
            run_config={
                "ops": {"regularized_orders": {"config": {"limit": limit, "sleep": sleep}}}
            },
            tags={"test/marker": marker},
        )

    def materialize(self, asset: str, run_config: dict | None = None) -> str:
        """Launch a Materialize of one asset as the UI does (no job, so no job tag)."""
        params = {
            "selector": {
                "repositoryLocationName": LOCATION,
                "repositoryName": "__repository__",
                "jobName": "__ASSET_JOB",
                "assetSelection": [{"path": [asset]}],
            },
            "runConfigData": run_config or {},
        }
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/graphql",
            data=json.dumps(
                {"query": LAUNCH_MUTATION, "variables": {"executionParams": params}}
            ).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            body = json.load(response)
        result = body["data"]["launchPipelineExecution"]
        assert result["__typename"] == "LaunchRunSuccess", body
        return result["run"]["runId"]

    def statuses(self, run_ids: list[str]) -> dict[str, dg.DagsterRunStatus]:
        with self.instance() as instance:
            records = instance.get_run_records(filters=dg.RunsFilter(run_ids=run_ids))
        return {r.dagster_run.run_id: r.dagster_run.status for r in records}

    def wait_status(self, run_id: str, status: dg.DagsterRunStatus, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.statuses([run_id]).get(run_id) != status:
            if time.monotonic() > deadline:
                raise AssertionError(f"run {run_id} not {status.value} in {timeout} s")
            time.sleep(0.2)

    def wait_finished(self, run_ids: list[str], timeout: float = 120) -> list[dg.RunRecord]:
        deadline = time.monotonic() + timeout
        with self.instance() as instance:
            while time.monotonic() < deadline:
                records = instance.get_run_records(filters=dg.RunsFilter(run_ids=run_ids))
                if len(records) == len(run_ids) and all(
                    r.dagster_run.status in FINISHED for r in records
                ):
                    return sorted(records, key=lambda r: r.start_time)
                time.sleep(0.5)
        raise AssertionError(
            f"runs not finished in {timeout} s; daemon log:\n{(self.logs / 'daemon.log').read_text()[-3000:]}"
        )


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("services")
    base = instance_env(tmp)
    home, url = Path(base["DAGSTER_HOME"]), base["REGULARIZATION_DATABASE_URL"]
    engine = create_app_engine(url)
    shop = ShopWriter(engine).create()
    migrations.upgrade(engine, "regularization_")
    # The schedule stays on (it is part of what runs) but fires half a day away: a tick
    # landing mid-test would complete the orphans before the run under test gets them.
    far = dt.datetime.now(dt.UTC) + dt.timedelta(hours=12)
    env = {
        **base,
        # The demo's handlers receive the events, as the demo registers them.
        **DEMO_PUBLISHER_ENV,
        SCHEDULE_CRON_ENV: f"{far.minute} {far.hour} * * *",
    }
    port = free_port()
    workspace = str(ROOT / "workspace.yaml")
    processes = []
    try:
        for name, args in (
            ("daemon", [str(BIN / "dagster-daemon"), "run", "-w", workspace]),
            (
                "webserver",
                [
                    str(BIN / "dagster-webserver"),
                    "-w",
                    workspace,
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(port),
                ],
            ),
        ):
            log = open(tmp / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
            processes.append(
                subprocess.Popen(args, env=env, cwd=tmp, stdout=log, stderr=subprocess.STDOUT)
            )
        wait_for_http(f"http://127.0.0.1:{port}/server_info", processes)
        yield Services(home, shop, port, tmp, env)
    finally:
        for proc in processes:
            proc.terminate()
        for proc in processes:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        engine.dispose()


def materialized(instance: dg.DagsterInstance, asset: str, run_id: str) -> dict:
    records = instance.fetch_materializations(dg.AssetKey(asset), limit=20).records
    (record,) = [r for r in records if r.run_id == run_id]
    return {k: v.value for k, v in record.asset_materialization.metadata.items()}


def test_graphql_launch_with_limit_and_sleep_runs_through_the_daemon(services):
    orders = services.shop.orphans(4)

    run_id = services.submit(limit=2, sleep=0.2, marker="graphql")
    (record,) = services.wait_finished([run_id])

    run = record.dagster_run
    assert run.status == dg.DagsterRunStatus.SUCCESS
    assert services.client().get_run_status(run_id) == dg.DagsterRunStatus.SUCCESS
    assert run.run_config["ops"]["regularized_orders"]["config"] == {"limit": 2, "sleep": 0.2}
    assert run.tags[CONCURRENCY_TAG] == JOB_NAME  # the job's tag reaches runs launched from outside
    with services.instance() as instance:
        metrics = materialized(instance, "regularized_orders", run_id)
    # What the run decided, order by order, for the message of a failure (the metrics alone hide why).
    decisions = audit_actions(services.shop.engine, run_id)
    assert (metrics["regularized"], metrics["processed"]) == (2, 2), (metrics, decisions)
    assert decisions == {"regularized": 2}
    assert metrics["elapsed_seconds"] >= 0.2  # one pause between the two orders
    assert sorted(services.shop.status_of(i) for i in orders).count("completed") >= 2


def test_two_runs_submitted_at_once_never_overlap(services):
    services.shop.orphans(10)
    run_ids: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def submit(marker: str) -> None:
        try:
            run_id = services.submit(limit=5, sleep=0.3, marker=marker)
        except BaseException as exc:  # reported below: a thread's exception is otherwise lost
            errors.append(exc)
            return
        with lock:
            run_ids.append(run_id)

    threads = [threading.Thread(target=submit, args=(f"overlap-{i}",)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(run_ids) == 2, errors

    first, second = services.wait_finished(run_ids)

    assert first.dagster_run.status == second.dagster_run.status == dg.DagsterRunStatus.SUCCESS
    assert first.end_time <= second.start_time, "the two runs ran at the same time"
    with services.instance() as instance:
        # The second was queued before the first ended, and launched only after it.
        (enqueued,) = instance.all_logs(
            second.dagster_run.run_id, of_type=dg.DagsterEventType.RUN_ENQUEUED
        )
        (launched,) = instance.all_logs(
            second.dagster_run.run_id, of_type=dg.DagsterEventType.RUN_STARTING
        )
        assert enqueued.timestamp < first.end_time <= launched.timestamp
        # No other run of the job (e.g. a scheduled tick) overlapped either.
        every = sorted(
            instance.get_run_records(filters=dg.RunsFilter(job_name=JOB_NAME)),
            key=lambda r: r.start_time,
        )
        for before, after in zip(every, every[1:], strict=False):
            assert before.end_time <= after.start_time
        regularized = sum(
            materialized(instance, "regularized_orders", r)["regularized"] for r in run_ids
        )
    assert regularized == 10
    # Every order from both tests completed once, each with exactly one delivered event and one effect per handler.
    orders = services.shop.tables.orders
    with services.shop.engine.connect() as conn:
        completed = conn.execute(
            sa.select(sa.func.count()).where(orders.c.status == "completed")
        ).scalar_one()
    assert outbox_states(services.shop.engine) == {"delivered": completed}
    assert set(effect_counts(services.shop.engine).values()) == {completed}


def test_a_materialize_click_waits_in_the_queue_while_the_job_runs(services):
    services.shop.orphans(20)
    job_run = services.submit(limit=20, sleep=0.5, marker="pool-job")  # ~10 s
    services.wait_status(job_run, dg.DagsterRunStatus.STARTED)

    clicks = [
        services.materialize(
            "regularized_orders",
            {"ops": {"regularized_orders": {"config": {"sleep": 0}}}},
        ),
        services.materialize("order_completed_events"),
    ]
    # Watch the clicks for as long as the job runs: never started beside it.
    seen: set[dg.DagsterRunStatus] = set()
    deadline = time.monotonic() + 60
    while (now := services.statuses([job_run, *clicks]))[job_run] == dg.DagsterRunStatus.STARTED:
        assert time.monotonic() < deadline, "the job run did not end in 60 s"
        seen |= {now[r] for r in clicks}
        time.sleep(0.2)
    assert seen == {dg.DagsterRunStatus.QUEUED}, seen

    job, *materialized_runs = services.wait_finished([job_run, *clicks])
    assert job.dagster_run.run_id == job_run
    every = [job, *materialized_runs]
    assert {r.dagster_run.status for r in every} == {dg.DagsterRunStatus.SUCCESS}
    # One at a time: each click started after the run before it ended (the pool's one slot).
    for before, after in zip(every, every[1:], strict=False):
        assert before.end_time <= after.start_time, (
            before.dagster_run.run_id,
            after.dagster_run.run_id,
        )
    with services.instance() as instance:
        for record in materialized_runs:
            run_id = record.dagster_run.run_id
            (enqueued,) = instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_ENQUEUED)
            (launched,) = instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_STARTING)
            assert enqueued.timestamp < job.end_time <= launched.timestamp
            (asset,) = record.dagster_run.asset_selection
            print(
                f"[reliability] Materialize {asset.to_user_string()} queued "
                f"{launched.timestamp - enqueued.timestamp:.1f} s, launched "
                f"{launched.timestamp - job.end_time:.1f} s after the job run ended"
            )
    # No order flipped twice: one outbox row per completed order, none completed without one.
    assert_flip_iff_event(services.shop)


def test_dagster_asset_materialize_takes_the_jobs_tag_and_the_queue_waits_behind_it(services):
    services.shop.orphans(12)
    config = {"ops": {"regularized_orders": {"config": {"limit": 12, "sleep": 0.5}}}}  # ~6 s
    cli = subprocess.Popen(
        [str(BIN / "dagster"), "asset", "materialize", "-m", "regularization_pipeline.definitions"]
        + ["--select", "regularized_orders", "--config-json", json.dumps(config)],
        env=services.env,
        cwd=services.logs,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # The in-process run, once its fix has started, carries the job's tag.
        deadline = time.monotonic() + 60
        while not (tagged := _asset_job_runs_tagged(services)):
            assert cli.poll() is None, cli.stdout.read() if cli.stdout else ""
            assert time.monotonic() < deadline, "the CLI run never took the tag"
            time.sleep(0.2)
        (cli_run,) = tagged
        queued = services.submit(limit=5, sleep=0, marker="behind-cli")
        seen: set[dg.DagsterRunStatus] = set()
        while services.statuses([cli_run])[cli_run] == dg.DagsterRunStatus.STARTED:
            seen.add(services.statuses([queued])[queued])
            time.sleep(0.2)
        assert seen == {dg.DagsterRunStatus.QUEUED}, seen
        assert cli.wait(timeout=60) == 0
    finally:
        if cli.poll() is None:
            cli.kill()
    first, second = services.wait_finished([cli_run, queued])
    assert (
        first.dagster_run.run_id == cli_run and first.dagster_run.tags[CONCURRENCY_TAG] == JOB_NAME
    )
    assert second.dagster_run.status == dg.DagsterRunStatus.SUCCESS
    assert first.end_time <= second.start_time
    assert_flip_iff_event(services.shop)


def _asset_job_runs_tagged(services: Services) -> list[str]:
    """In-progress runs of the implicit asset job (a CLI or Materialize launch) with the job's tag."""
    with services.instance() as instance:
        records = instance.get_run_records(
            filters=dg.RunsFilter(
                job_name="__ASSET_JOB",
                statuses=[dg.DagsterRunStatus.STARTED],
                tags={CONCURRENCY_TAG: JOB_NAME},
            )
        )
    return [r.dagster_run.run_id for r in records]
