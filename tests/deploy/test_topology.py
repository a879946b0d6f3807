"""The docker-compose topology, run as local processes on 127.0.0.1: does the deployment work end to end?

There is no Docker engine on the test machines, so each compose service runs as
the process its container would run, with the container's command and health
check read from docker-compose.yml (only host, port and paths are adapted):

  postgres   a throwaway database on the PostgreSQL server the other tests use
  user-code  `dagster api grpc ...` on a free port
  webserver  `dagster-webserver ...` on a free port
  daemon     the compose command itself (bash, dagster-daemon, tee to daemon.log)

DAGSTER_HOME holds docker/dagster.yaml with two changes, both stated here:
the run launcher is Dagster's default (each run a subprocess of the code server)
instead of the DockerRunLauncher, which needs a Docker engine; and the log
handler writes to a temporary directory instead of /var/log/regularization.
Storage, the run queue with the tag limit, run monitoring and python_logs are
the production values.

The code location is the production module, its schedule set to fire every
minute through REGULARIZATION_SCHEDULE_CRON (as an operator would in `.env`),
so the test need not wait up to five minutes for the first tick.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml

from regularization_pipeline.core.shop import migrations
from regularization_pipeline.core.shop.engine import create_app_engine
from regularization_pipeline.core.shop.mapping import SchemaMapping
from regularization_pipeline.defs import jobs
from regularization_pipeline.demo.shop import ShopWriter
from tests.support import ROOT as REPO
from tests.support.databases import throwaway_postgres_database, unavailable
from tests.support.processes import BIN, dagster_pg_env, free_port

pytestmark = pytest.mark.slow

SCHEDULE_NAME = "regularize_completed_orders_every_5_minutes"
CONTAINER_LOG_DIR = "/var/log/regularization"
CONTAINER_WORKSPACE = "/opt/dagster/app/docker/workspace.yaml"
ORPHANS = 3
HEALTHY_WITHIN_SECONDS = 120
FIRST_RUN_WITHIN_SECONDS = (
    150  # up to 60 s to the next minute, then queue, launch and the run itself
)

CUSTOMER_EMAILS = [f"topology.customer{n}@example.com" for n in range(1, ORPHANS + 2)]
EMAIL_PATTERN = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's interpolation of `${VAR:-default}`, `${VAR:?msg}`, `${VAR}` and `$$` for one string."""

    def value(match: re.Match) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if env.get(name):
            return env[name]
        if op == ":?":
            raise AssertionError(f"{name} is required: {arg}")
        return arg or ""

    text = re.sub(r"(?<!\$)\$\{([A-Z0-9_]+)(?:(:-|:\?)([^}]*))?\}", value, text)
    return text.replace("$$", "$")


def compose_services() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]


def healthcheck_argv(service: str, env: dict[str, str]) -> list[str]:
    test = compose_services()[service]["healthcheck"]["test"]
    kind, *rest = test
    if kind == "CMD-SHELL":
        return ["sh", "-c", interpolate(rest[0], env)]
    assert kind == "CMD", test
    return [interpolate(arg, env) for arg in rest]


def replace_arg(argv: list[str], flag: str, value: str) -> list[str]:
    i = argv.index(flag)
    return [*argv[: i + 1], value, *argv[i + 2 :]]


@dataclass
class Topology:
    home: Path
    tmp: Path
    logs: Path
    env: dict[str, str]
    shop_url: str
    orphan_ids: list
    ports: dict[str, int]
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    started_at: float = 0.0
    healthy_seconds: float = 0.0
    first_run_seconds: float = 0.0  # from start to the end of the first scheduled run

    def check_argv(self, service: str, **env_overrides: str) -> list[str]:
        """The compose health check of ``service``, with host and port adapted to this topology."""
        argv = healthcheck_argv(service, {**self.env, **env_overrides})
        if service == "user-code":
            argv = replace_arg(argv, "-p", str(self.ports["grpc"]))
        if service == "webserver":
            argv = [
                a.replace("127.0.0.1:3000/", f"127.0.0.1:{self.ports['webserver']}/") for a in argv
            ]
        return argv

    def check(self, service: str, **env_overrides: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.check_argv(service, **env_overrides),
            env={**self.env, **env_overrides},
            capture_output=True,
            text=True,
            timeout=60,
        )

    def output_of(self, name: str) -> str:
        path = self.tmp / f"{name}.out"
        return path.read_text(errors="replace") if path.exists() else ""

    def diagnostics(self) -> str:
        return "\n".join(
            f"--- {name} (last lines) ---\n" + "\n".join(self.output_of(name).splitlines()[-30:])
            for name in self.processes
        )

    def stop(self, name: str) -> None:
        process = self.processes[name]
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def _seed_shop(url: str) -> list:
    """A small shop: orphans of named customers (with e-mails), one paid within the grace period, one healthy."""
    engine = create_app_engine(url)
    shop = ShopWriter(engine).create()
    with engine.begin() as conn:
        conn.execute(
            shop.tables.customers.insert(),
            [
                {"id": n, "name": f"Topology Customer {n}", "email": email}
                for n, email in enumerate(CUSTOMER_EMAILS, 1)
            ],
        )
    orphan_ids = [
        shop.orphan(paid_minutes_ago=30 + n, customer_id=n) for n in range(1, ORPHANS + 1)
    ]
    shop.orphan(
        paid_minutes_ago=1, customer_id=ORPHANS + 1
    )  # its webhook may still come: left alone
    migrations.upgrade(engine, SchemaMapping().table_prefix)
    engine.dispose()
    return orphan_ids


def _instance_yaml(log_dir: Path) -> dict:
    config = yaml.safe_load((REPO / "docker" / "dagster.yaml").read_text())
    # No Docker engine here: Dagster's default launcher runs each run as a
    # subprocess of the code server. Everything else is the production file.
    del config["run_launcher"]
    handler = config["python_logs"]["dagster_handler_config"]["handlers"]["order_regularizer_file"]
    handler["filename"] = handler["filename"].replace(CONTAINER_LOG_DIR, str(log_dir))
    return config


@pytest.fixture(scope="module")
def dagster_storage_url():
    with throwaway_postgres_database("regtopo") as url:
        yield url


@pytest.fixture(scope="module")
def topology(dagster_storage_url, tmp_path_factory):
    if not shutil.which("pg_isready"):
        unavailable("pg_isready (the postgres service's health check) is not installed")
    tmp = tmp_path_factory.mktemp("topology")
    home, logs = tmp / "dagster_home", tmp / "logs"
    home.mkdir()
    logs.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(_instance_yaml(logs)))
    ports = {"grpc": free_port(), "webserver": free_port()}
    workspace = tmp / "workspace.yaml"
    location = yaml.safe_load((REPO / "docker" / "workspace.yaml").read_text())
    location["load_from"][0]["grpc_server"].update(host="127.0.0.1", port=ports["grpc"])
    workspace.write_text(yaml.safe_dump(location))

    shop_url = f"sqlite:///{tmp / 'shop.db'}"
    orphan_ids = _seed_shop(shop_url)
    url = dagster_storage_url
    env = {
        **{
            k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "REGULARIZATION_"))
        },
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "DAGSTER_HOME": str(home),
        **dagster_pg_env(url),
        "REGULARIZATION_DATABASE_URL": shop_url,
        # Every minute, so the test need not wait up to five for the first tick.
        "REGULARIZATION_SCHEDULE_CRON": "* * * * *",
        # What the postgres service's health check reads inside its container.
        "POSTGRES_USER": url.username or "postgres",
        "POSTGRES_DB": url.database,
        "PGHOST": url.host or "127.0.0.1",
        "PGPORT": str(url.port or 5432),
    }
    topo = Topology(
        home=home,
        tmp=tmp,
        logs=logs,
        env=env,
        shop_url=shop_url,
        orphan_ids=orphan_ids,
        ports=ports,
    )

    services = compose_services()
    user_code = replace_arg(
        replace_arg(services["user-code"]["command"], "-h", "127.0.0.1"), "-p", str(ports["grpc"])
    )
    webserver = replace_arg(
        replace_arg(services["webserver"]["command"], "-h", "127.0.0.1"),
        "-p",
        str(ports["webserver"]),
    )
    webserver = replace_arg(webserver, "-w", str(workspace))
    daemon = [
        a.replace(CONTAINER_WORKSPACE, str(workspace)).replace(CONTAINER_LOG_DIR, str(logs))
        for a in services["daemon"]["command"]
    ]
    commands = {"user-code": user_code, "webserver": webserver, "daemon": daemon}

    topo.started_at = time.monotonic()
    try:
        for name, argv in commands.items():
            out = open(tmp / f"{name}.out", "wb")  # noqa: SIM115 - closed with the process
            topo.processes[name] = subprocess.Popen(
                argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp, start_new_session=True
            )
        pending = ["postgres", "user-code", "webserver", "daemon"]
        deadline = topo.started_at + HEALTHY_WITHIN_SECONDS
        while pending and time.monotonic() < deadline:
            for name, process in topo.processes.items():
                assert process.poll() is None, (
                    f"{name} exited with {process.returncode}\n{topo.diagnostics()}"
                )
            pending = [s for s in pending if topo.check(s).returncode != 0]
            if pending:
                time.sleep(2)
        assert not pending, (
            f"not healthy after {HEALTHY_WITHIN_SECONDS} s: {pending}\n{topo.diagnostics()}"
        )
        topo.healthy_seconds = time.monotonic() - topo.started_at
        yield topo
    finally:
        for name in reversed(list(topo.processes)):
            topo.stop(name)


@pytest.fixture(scope="module")
def instance(topology):
    """The topology's instance as the test reads it (DAGSTER_HOME's dagster.yaml reads its storage from the env)."""
    saved = {k: os.environ.get(k) for k in topology.env if k.startswith("DAGSTER_")}
    os.environ.update({k: v for k, v in topology.env.items() if k.startswith("DAGSTER_")})
    try:
        with dg.DagsterInstance.from_config(str(topology.home)) as inst:
            yield inst
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def first_scheduled_run(topology, instance):
    """Waits for the schedule's first tick to launch a run and for that run to end."""
    deadline = time.monotonic() + FIRST_RUN_WITHIN_SECONDS
    run = None
    while time.monotonic() < deadline:
        runs = instance.get_runs(
            filters=dg.RunsFilter(
                job_name=jobs.JOB_NAME, tags={"dagster/schedule_name": SCHEDULE_NAME}
            )
        )
        run = runs[-1] if runs else None
        if run is not None and run.is_finished:
            break
        time.sleep(2)
    assert run is not None and run.is_finished, (
        f"no finished scheduled run within {FIRST_RUN_WITHIN_SECONDS} s of the topology being healthy "
        f"(last: {run and run.status})\n{topology.diagnostics()}"
    )
    topology.first_run_seconds = time.monotonic() - topology.started_at
    return run


def run_messages(instance: dg.DagsterInstance, run: dg.DagsterRun) -> str:
    return "\n".join(f"{e.level} {e.user_message[:300]}" for e in instance.all_logs(run.run_id))


def test_every_service_passes_its_compose_health_check(topology, capsys):
    for service in ("postgres", "user-code", "webserver", "daemon"):
        result = topology.check(service)
        assert result.returncode == 0, f"{service}: {result.stdout}{result.stderr}"
    with capsys.disabled():
        print(
            f"\n[topology] all four health checks passed {topology.healthy_seconds:.1f} s after start"
        )
    assert topology.healthy_seconds < HEALTHY_WITHIN_SECONDS


def test_schedule_is_running_by_default(topology):
    # The runbook's command, against the same workspace the daemon uses.
    result = subprocess.run(
        [
            str(BIN / "dagster"),
            "schedule",
            "list",
            "-w",
            str(topology.tmp / "workspace.yaml"),
            "--running",
            "--name",
        ],
        env=topology.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert SCHEDULE_NAME in result.stdout.split()
    assert (
        jobs.regularize_completed_orders_every_5_minutes.default_status
        == dg.DefaultScheduleStatus.RUNNING
    )


def test_a_scheduled_tick_launches_a_run_that_regularizes_the_orphans(
    topology, instance, first_scheduled_run, capsys
):
    run = first_scheduled_run
    assert run.status == dg.DagsterRunStatus.SUCCESS, topology.diagnostics()
    # The run went through the queue with the job's concurrency tag, as in production.
    assert run.tags[jobs.CONCURRENCY_TAG] == jobs.JOB_NAME
    engine = create_app_engine(topology.shop_url)
    orders = ShopWriter(engine).tables.orders
    with engine.connect() as conn:
        statuses = dict(conn.execute(sa.select(orders.c.id, orders.c.status)).all())
        audit = conn.execute(
            sa.text(
                "SELECT order_id, run_id FROM regularization_audit WHERE action = 'regularized'"
            )
        ).all()
    engine.dispose()
    seen = f"orders {statuses}, audit {audit}, run log:\n{run_messages(instance, run)}"
    assert {statuses[i] for i in topology.orphan_ids} == {"completed"}, seen
    assert [s for i, s in statuses.items() if i not in topology.orphan_ids] == ["pending"], (
        seen
    )  # grace period
    assert sorted(int(order_id) for order_id, _ in audit) == sorted(topology.orphan_ids), seen
    assert {run_id for _, run_id in audit} == {run.run_id}, seen
    with capsys.disabled():
        print(
            f"\n[topology] healthy after {topology.healthy_seconds:.1f} s; first scheduled run {run.run_id} "
            f"ended {run.status.value} {topology.first_run_seconds:.1f} s after start, {len(audit)} orders regularized"
        )


def test_log_files_carry_the_run_and_no_customer_email(topology, instance, first_scheduled_run):
    run = first_scheduled_run
    lines = [
        json.loads(line)
        for line in (topology.logs / "order-regularizer.log").read_text().splitlines()
    ]
    of_run = [entry for entry in lines if entry.get("run_id") == run.run_id]
    assert of_run, "order-regularizer.log has no line of the scheduled run"
    # The job's context.log lines and the package's managed loggers both reach the file.
    assert any(
        entry["logger"] == "dagster" and "regularized" in entry["message"] for entry in of_run
    )
    package_lines = [
        entry for entry in of_run if entry["logger"].startswith("regularization_pipeline")
    ]
    assert any(
        f"order {topology.orphan_ids[0]}: regularized" in entry["message"]
        for entry in package_lines
    ), "\n".join(f"{e['logger']}: {e['message']}" for e in of_run)
    daemon_log = (topology.logs / "daemon.log").read_text()
    # JSON lines, like order-regularizer.log: Dagster's own lines are JSON, none in its plain
    # format. (A library on Python's root logger still writes plain text: dagster-postgres's
    # "Retrying failed database creation" when the daemon and webserver start together.)
    lines = [line for line in daemon_log.splitlines() if line.strip()]
    daemon_lines = [json.loads(line) for line in lines if line.startswith("{")]
    assert any(
        entry.get("logger") == "dagster.daemon" and "SchedulerDaemon" in entry["event"]
        for entry in daemon_lines
    )
    assert not [line for line in lines if not line.startswith("{") and " - dagster" in line]
    # Nothing sensitive anywhere: log files, process output, the run's event log.
    texts = {
        "order-regularizer.log": (topology.logs / "order-regularizer.log").read_text(),
        "daemon.log": daemon_log,
    }
    texts.update({f"{name} output": topology.output_of(name) for name in topology.processes})
    texts["event log"] = "\n".join(str(e.user_message) for e in instance.all_logs(run.run_id))
    for name, text in texts.items():
        assert not EMAIL_PATTERN.findall(text), f"{name} carries an e-mail address"


def test_health_check_commands_are_the_compose_ones(topology):
    # The adaptation above changes host, port and environment only.
    services = compose_services()
    for service in ("user-code", "webserver", "daemon"):
        compose_words = [w for w in services[service]["healthcheck"]["test"][1:] if "${" not in w]
        adapted = topology.check_argv(service)
        assert len(adapted) == len(services[service]["healthcheck"]["test"]) - 1
        changed = [w for w in compose_words if w not in adapted]
        assert all(re.search(r"\b(3000|4000)\b", w) for w in changed), changed
    assert shlex.split(topology.check_argv("postgres")[2])[0] == "pg_isready"


def test_each_health_check_fails_once_its_service_is_stopped(topology, first_scheduled_run):
    # Runs last in this module: it takes the topology down, one service at a time.
    # PostgreSQL is shared with the other tests, so "stopped" is a port with no server.
    stopped_pg = topology.check("postgres", PGPORT=str(free_port()))
    assert stopped_pg.returncode != 0

    # The daemon's check uses a short tolerance here so that a stale heartbeat
    # shows within a heartbeat interval (30 s) instead of the compose default.
    short = {"DAGSTER_DAEMON_LIVENESS_TOLERANCE_SECONDS": "5"}
    topology.stop("daemon")
    deadline = time.monotonic() + 60
    while topology.check("daemon", **short).returncode == 0:
        assert time.monotonic() < deadline, (
            "the daemon liveness check still passes 60 s after the daemon stopped"
        )
        time.sleep(3)

    topology.stop("webserver")
    assert topology.check("webserver").returncode != 0
    topology.stop("user-code")
    assert topology.check("user-code").returncode != 0
