"""docker/Dockerfile built into an image and the compose roles run as real containers (issue #16).

test_deploy_topology.py runs the deployment as host processes; this module builds the
image itself with podman and runs each role from it, so that a broken lock, a missing
entry point, a volume the non-root user cannot write or a health check that does not
work inside the image fails here rather than at a user's `docker compose up --build`.

Phases, each timed and printed (run with -s to see them as they happen):

  base     docker/test-base/build.sh: a stand-in for python:3.11-slim (no image
           registry is reachable from CI), built once per machine and cached
  build    `podman build -f docker/Dockerfile .` from the repository root, unchanged;
           podman's layer cache makes a second build take seconds
  healthy  user-code, then webserver and daemon (compose's depends_on order), each
           started with its compose command, environment and volumes, until each
           role's compose health check passes inside its container
  run      the schedule (every minute through REGULARIZATION_SCHEDULE_CRON, as an
           operator would set it in .env) ticks, the daemon's DockerRunLauncher starts
           the run in a container of its own through podman's Docker-compatible API
           (`podman system service`), and the run regularizes the seeded orphans

What differs from `docker compose up` (docs/operations.md, "The image in CI", says the same):

  - the base image is the stand-in, not the official python:3.11-slim;
  - every container is on the host network (`--network host`), not the compose
    bridge network (no bridge network may be created on these machines): PostgreSQL
    is a throwaway database on the server at 127.0.0.1, so DAGSTER_POSTGRES_HOSTNAME
    and DAGSTER_POSTGRES_PORT are set to it instead of compose's `postgres`/5432, and
    DAGSTER_DOCKER_NETWORK is `host` (docker/dagster.yaml reads it from the
    environment, so run containers join the host network with no config change);
  - the gRPC server and the webserver listen on 127.0.0.1 on free ports instead of
    0.0.0.0:4000/3000 (the host's ports are shared), and docker/workspace.yaml is
    mounted with that host and port instead of `user-code:4000`;
  - the logs volume has a unique name instead of the fixed `regularization_logs`, and the
    config folder is an empty folder of the test's instead of the `regularization_config`
    volume over the host's folder, so the instance config (docker/dagster.yaml, mounted
    over the image's copy in each role) differs only in run_launcher.config.container_kwargs.volumes;
  - the Docker socket mounted into daemon and webserver is a `podman system service`
    socket, group-owned by DOCKER_SOCKET_GID as compose's group_add expects;
  - no `restart: unless-stopped` (a crash must fail the test) and podman's own log
    driver instead of json-file; health checks are polled every 2 s, not on compose's
    interval.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml

from regularization_pipeline.core.shop.engine import create_app_engine
from regularization_pipeline.defs import jobs
from regularization_pipeline.demo.shop import ShopWriter
from tests.deploy.test_topology import (
    ORPHANS,
    SCHEDULE_NAME,
    _seed_shop,
    compose_services,
    healthcheck_argv,
    interpolate,
    replace_arg,
)
from tests.support import ROOT as REPO
from tests.support.databases import throwaway_postgres_database, unavailable
from tests.support.processes import dagster_pg_env, free_port

# The cold path (stand-in base, then the image from PyPI) takes about two minutes here; the
# timeout leaves room for a slower machine beyond pyproject's 600 s per test.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

TEST_BASE = REPO / "docker" / "test-base"
IMAGE = "localhost/regularization_pipeline:ci"
APP_UID = 10001
LOG_DIR = "/var/log/regularization"
HOME_CONFIG = "/opt/dagster/home/dagster.yaml"
WORKSPACE = "/opt/dagster/app/docker/workspace.yaml"
ROLES = ("user-code", "webserver", "daemon")
BASE_WITHIN_SECONDS = 600  # cold: debootstrap, import and the certificates layer, 65-70 s here
BUILD_WITHIN_SECONDS = 600  # cold: the runtime lock from PyPI, 55-65 s here
HEALTHY_WITHIN_SECONDS = 240
FIRST_RUN_WITHIN_SECONDS = (
    240  # up to 60 s to the next minute, then queue, a run container and the run
)

PHASES: dict[str, float] = {}


def phase_summary() -> str:
    return "[image] " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in PHASES.items())


def podman(
    *args: str, env: dict[str, str], timeout: float = 120, check: bool = True, **kwargs
) -> subprocess.CompletedProcess:
    result = subprocess.run(
        ["podman", *args], env=env, capture_output=True, text=True, timeout=timeout, **kwargs
    )
    if check:
        assert result.returncode == 0, (
            f"podman {' '.join(args[:3])}... failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
        )
    return result


@pytest.fixture(scope="module")
def podman_env():
    """The environment every podman command runs in: CONTAINERS_CONF selects runc and no default ulimits."""
    if os.geteuid() != 0:
        unavailable("the image test runs podman as root (debootstrap and the host network need it)")
    missing = [tool for tool in ("podman", "runc", "debootstrap") if not shutil.which(tool)]
    if missing:
        unavailable(f"{', '.join(missing)} not installed (.ci/run installs them)")
    env = {**os.environ, "CONTAINERS_CONF": str(TEST_BASE / "containers.conf")}
    probe = subprocess.run(
        ["podman", "info", "--format", "{{.Host.OCIRuntime.Name}}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if probe.returncode != 0:
        unavailable(f"podman cannot run here: {probe.stderr.strip()[-500:]}")
    return env


@dataclass
class Image:
    tag: str
    size_bytes: int
    base_size_bytes: int  # the stand-in's share of size_bytes
    build_log: str


@pytest.fixture(scope="module")
def image(podman_env, tmp_path_factory, capsys_module):
    log = tmp_path_factory.mktemp("image") / "build.log"
    started = time.monotonic()
    base = subprocess.run(
        [str(TEST_BASE / "build.sh")],
        env=podman_env,
        capture_output=True,
        text=True,
        timeout=BASE_WITHIN_SECONDS,
    )
    PHASES["base"] = time.monotonic() - started
    assert base.returncode == 0, (
        f"stand-in base failed after {PHASES['base']:.0f} s:\n{base.stdout[-3000:]}{base.stderr[-3000:]}"
    )

    started = time.monotonic()
    with log.open("w") as out:
        build = subprocess.run(
            [
                "podman",
                "build",
                "--network",
                "host",
                "--pull=never",
                "-f",
                "docker/Dockerfile",
                "-t",
                IMAGE,
                ".",
            ],
            cwd=REPO,
            env=podman_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=BUILD_WITHIN_SECONDS,
        )
    PHASES["build"] = time.monotonic() - started
    text = log.read_text(errors="replace")
    assert build.returncode == 0, (
        f"podman build failed after {PHASES['build']:.0f} s:\n{text[-5000:]}"
    )
    size, base_size = (
        int(podman("image", "inspect", "--format", "{{.Size}}", tag, env=podman_env).stdout.strip())
        for tag in (IMAGE, "python:3.11-slim")
    )
    cached = base.stdout.count("is cached") == 2 or "not a stand-in" in base.stdout
    with capsys_module.disabled():
        print(
            f"\n[image] stand-in base {PHASES['base']:.1f} s ({'cached' if cached else 'built'}); "
            f"build {PHASES['build']:.1f} s; {IMAGE} is {size / 1e6:.0f} MB, "
            f"{(size - base_size) / 1e6:.0f} MB of it above the base"
        )
    return Image(tag=IMAGE, size_bytes=size, base_size_bytes=base_size, build_log=text)


@pytest.fixture(scope="module")
def capsys_module(request):
    """The session's capture manager, for printing phase times from module fixtures (shown with or without -s)."""
    capture = request.config.pluginmanager.getplugin("capturemanager")

    class _Disabled:
        def disabled(self):
            return capture.global_and_fixture_disabled()

    return _Disabled()


def test_image_runs_as_non_root_with_the_runtime_lock_only(image, podman_env):
    config = json.loads(podman("image", "inspect", image.tag, env=podman_env).stdout)[0]["Config"]
    assert config["User"] == f"{APP_UID}:{APP_UID}"
    # The build's own `pip check` passed (RUN ... && pip check, or the build fails; a cached
    # build does not print it again); the installed image agrees, has
    # every entry point the compose commands use, and none of the development lock's test tools.
    script = (
        "set -e; id -u; pip check; "
        "for cmd in dagster dagster-webserver dagster-daemon regularize-completed-orders bash; do "
        "command -v $cmd >/dev/null || { echo missing $cmd; exit 1; }; done; "
        "for mod in pytest playwright ruff hypothesis; do "
        'python -c "import $mod" 2>/dev/null && { echo test tool $mod; exit 1; }; done; '
        f"touch {LOG_DIR}/probe /opt/dagster/home/probe; echo ok"
    )
    result = podman(
        "run",
        "--rm",
        "--network",
        "host",
        image.tag,
        "sh",
        "-c",
        script,
        env=podman_env,
        check=False,
    )
    assert result.returncode == 0 and result.stdout.split()[0] == str(APP_UID), (
        result.stdout + result.stderr
    )
    assert "No broken requirements found." in result.stdout


# --- the roles as containers -------------------------------------------------------------


@dataclass
class Deployment:
    env: dict[str, str]  # podman's
    tmp: Path
    suffix: str
    volume: str
    values: dict[str, str]  # what .env would hold, for compose's interpolation
    ports: dict[str, int]
    shop_url: str
    orphan_ids: list
    storage_url: str
    containers: dict[str, str] = field(default_factory=dict)  # role -> container name
    started_at: float = 0.0

    def role_env(self, role: str) -> dict[str, str]:
        """The compose environment of ``role``, interpolated, with the host network's two PostgreSQL values."""
        env = {
            k: interpolate(str(v), self.values)
            for k, v in compose_services()[role]["environment"].items()
        }
        for key in ("DAGSTER_POSTGRES_HOSTNAME", "DAGSTER_POSTGRES_PORT"):
            env[key] = self.values[key]
        return env

    def check_argv(self, role: str) -> list[str]:
        argv = healthcheck_argv(role, self.values)
        if role == "user-code":
            argv = replace_arg(argv, "-p", str(self.ports["grpc"]))
        if role == "webserver":
            argv = [
                a.replace("127.0.0.1:3000/", f"127.0.0.1:{self.ports['webserver']}/") for a in argv
            ]
        return argv

    def check(self, role: str) -> subprocess.CompletedProcess:
        timeout = float(compose_services()[role]["healthcheck"]["timeout"].rstrip("s"))
        try:
            return podman(
                "exec",
                self.containers[role],
                *self.check_argv(role),
                env=self.env,
                check=False,
                timeout=timeout + 30,
            )
        except subprocess.TimeoutExpired as exc:
            return subprocess.CompletedProcess(exc.cmd, 124, "", f"timed out after {exc.timeout} s")

    def logs(self, role: str, lines: int = 40) -> str:
        result = podman(
            "logs", "--tail", str(lines), self.containers[role], env=self.env, check=False
        )
        return result.stdout + result.stderr

    def diagnostics(self) -> str:
        parts = [
            f"--- {role} ({name}) ---\n{self.logs(role)}" for role, name in self.containers.items()
        ]
        runs = podman(
            "ps",
            "-a",
            "--filter",
            f"volume={self.volume}",
            "--format",
            "{{.Names}} {{.Status}}",
            env=self.env,
            check=False,
        ).stdout
        return "\n".join([*parts, f"--- containers on the logs volume ---\n{runs}"])

    def running(self, role: str) -> bool:
        state = podman(
            "inspect",
            "--format",
            "{{.State.Running}}",
            self.containers[role],
            env=self.env,
            check=False,
        )
        return state.stdout.strip() == "true"


def _instance_config(volume: str, config_dir: Path) -> dict:
    """docker/dagster.yaml with one change: the run containers mount this test's logs volume
    and config folder."""
    config = yaml.safe_load((REPO / "docker" / "dagster.yaml").read_text())
    kwargs = config["run_launcher"]["config"]["container_kwargs"]
    kwargs["volumes"] = [
        v.replace("regularization_logs:", f"{volume}:").replace(
            "regularization_config:", f"{config_dir}:"
        )
        for v in kwargs["volumes"]
    ]
    return config


def test_instance_config_differs_from_docker_dagster_yaml_only_in_the_volume_name():
    production = yaml.safe_load((REPO / "docker" / "dagster.yaml").read_text())
    adapted = _instance_config("regularization_logs_ci_x", Path("/tmp/config_x"))
    kwargs = adapted["run_launcher"]["config"]["container_kwargs"]
    assert kwargs["volumes"] == [
        f"regularization_logs_ci_x:{LOG_DIR}",
        "/tmp/config_x:/opt/dagster/config:ro",
    ]
    kwargs["volumes"] = production["run_launcher"]["config"]["container_kwargs"]["volumes"]
    assert adapted == production


def _podman_service(env: dict[str, str], socket_path: Path, gid: int) -> subprocess.Popen:
    """podman's Docker-compatible API on a unix socket, group-owned like a Docker socket."""
    service = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{socket_path}"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(socket_path.parent / "service.log").open("wb"),
        start_new_session=True,
    )
    deadline = time.monotonic() + 30
    while not socket_path.exists():
        assert service.poll() is None, (socket_path.parent / "service.log").read_text()
        assert time.monotonic() < deadline, (
            "podman system service did not create its socket within 30 s"
        )
        time.sleep(0.2)
    os.chown(socket_path, 0, gid)
    os.chmod(socket_path, 0o660)
    return service


def _stop(service: subprocess.Popen) -> None:
    if service.poll() is None:
        service.terminate()
        try:
            service.wait(timeout=20)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait(timeout=10)


def _run_args(
    dep: Deployment, role: str, socket_path: Path, config_file: Path, workspace: Path
) -> list[str]:
    """`podman run` arguments for ``role``: compose's command, environment, volumes and group_add, host network."""
    service = compose_services()[role]
    args = ["run", "-d", "--name", dep.containers[role], "--network", "host"]
    if service.get("init"):
        args.append("--init")
    for gid in service.get("group_add", []):
        args += ["--group-add", interpolate(str(gid), dep.values)]
    for volume in service.get("volumes", []):
        source, target = volume.split(":", 1)
        if source == "regularization_logs":
            source = dep.volume
        elif source == "regularization_config":
            source = str(config_file.parent / "config")
        elif source == "/var/run/docker.sock":
            source = str(socket_path)
        else:
            raise AssertionError(f"{role}: volume {volume} has no stand-in in this test")
        args += ["-v", f"{source}:{target}"]
    args += ["-v", f"{config_file}:{HOME_CONFIG}:ro", "-v", f"{workspace}:{WORKSPACE}:ro"]
    for key, value in dep.role_env(role).items():
        args += ["-e", f"{key}={value}"]
    command = list(service["command"])
    if role == "user-code":
        command = replace_arg(replace_arg(command, "-h", "127.0.0.1"), "-p", str(dep.ports["grpc"]))
    if role == "webserver":
        command = replace_arg(
            replace_arg(command, "-h", "127.0.0.1"), "-p", str(dep.ports["webserver"])
        )
    return [*args, IMAGE, *command]


@pytest.fixture(scope="module")
def deployment(image, podman_env, tmp_path_factory, capsys_module):
    tmp = tmp_path_factory.mktemp("deployment")
    suffix = uuid.uuid4().hex[:8]
    with (
        throwaway_postgres_database("regimage") as storage_url,
        throwaway_postgres_database("regimageshop") as shop,
    ):
        shop_url = shop.render_as_string(hide_password=False)
        orphan_ids = _seed_shop(shop_url)
        ports = {"grpc": free_port(), "webserver": free_port()}
        socket_gid = int(interpolate("${DOCKER_SOCKET_GID:-999}", dict(os.environ)))
        values = {
            **dagster_pg_env(storage_url, network="host"),
            # The PostgreSQL server trusts 127.0.0.1; compose insists on a password all the same.
            "DAGSTER_POSTGRES_PASSWORD": storage_url.password or "unused-trust-auth",
            "REGULARIZATION_DATABASE_URL": shop_url,
            "REGULARIZATION_SCHEDULE_CRON": "* * * * *",
            "REGULARIZATION_IMAGE": image.tag,
            "DOCKER_SOCKET_GID": str(socket_gid),
        }
        dep = Deployment(
            env=podman_env,
            tmp=tmp,
            suffix=suffix,
            volume=f"regularization_logs_ci_{suffix}",
            values=values,
            ports=ports,
            shop_url=shop_url,
            orphan_ids=orphan_ids,
            storage_url=storage_url.render_as_string(hide_password=False),
            containers={role: f"regimage-{role}-{suffix}" for role in ROLES},
        )
        config_file, workspace = tmp / "dagster.yaml", tmp / "workspace.yaml"
        (tmp / "config").mkdir()
        config_file.write_text(yaml.safe_dump(_instance_config(dep.volume, tmp / "config")))
        location = yaml.safe_load((REPO / "docker" / "workspace.yaml").read_text())
        location["load_from"][0]["grpc_server"].update(host="127.0.0.1", port=ports["grpc"])
        workspace.write_text(yaml.safe_dump(location))
        for path in (config_file, workspace):
            path.chmod(0o644)

        socket_path = tmp / "podman.sock"
        service = _podman_service(podman_env, socket_path, socket_gid)
        try:
            podman("volume", "create", dep.volume, env=podman_env)
            dep.started_at = time.monotonic()
            deadline = dep.started_at + HEALTHY_WITHIN_SECONDS
            started: list[str] = []
            # compose's depends_on: webserver and daemon wait for a healthy user-code.
            for wave in (["user-code"], ["webserver", "daemon"]):
                for role in wave:
                    podman(
                        *_run_args(dep, role, socket_path, config_file, workspace), env=podman_env
                    )
                started.extend(wave)
                pending = list(wave)
                while pending and time.monotonic() < deadline:
                    for role in started:
                        assert dep.running(role), f"{role} exited\n{dep.diagnostics()}"
                    pending = [role for role in pending if dep.check(role).returncode != 0]
                    if pending:
                        time.sleep(2)
                assert not pending, (
                    f"not healthy within {HEALTHY_WITHIN_SECONDS} s: {pending}\n{dep.diagnostics()}"
                )
            PHASES["healthy"] = time.monotonic() - dep.started_at
            with capsys_module.disabled():
                print(
                    f"\n[image] user-code, webserver and daemon containers healthy {PHASES['healthy']:.1f} s after start"
                )
            yield dep
        finally:
            for name in reversed(list(dep.containers.values())):
                podman("rm", "-f", "-t", "20", name, env=podman_env, check=False, timeout=90)
            runs = podman(
                "ps", "-aq", "--filter", f"volume={dep.volume}", env=podman_env, check=False
            ).stdout.split()
            if runs:
                podman("rm", "-f", *runs, env=podman_env, check=False, timeout=90)
            _stop(service)
            podman("volume", "rm", "-f", dep.volume, env=podman_env, check=False)


@pytest.fixture(scope="module")
def instance(deployment, tmp_path_factory):
    """The deployment's run storage, read from the host (storage only: nothing is launched from here)."""
    home = tmp_path_factory.mktemp("reader_home")
    (home / "dagster.yaml").write_text(
        yaml.safe_dump(
            {
                "storage": {"postgres": {"postgres_url": deployment.storage_url}},
                "telemetry": {"enabled": False},
            }
        )
    )
    with dg.DagsterInstance.from_config(str(home)) as inst:
        yield inst


@pytest.fixture(scope="module")
def first_scheduled_run(deployment, instance, capsys_module):
    deadline = time.monotonic() + FIRST_RUN_WITHIN_SECONDS
    run = None
    while time.monotonic() < deadline:
        for role in ROLES:
            assert deployment.running(role), f"{role} exited\n{deployment.diagnostics()}"
        runs = instance.get_runs(
            filters=dg.RunsFilter(
                job_name=jobs.JOB_NAME, tags={"dagster/schedule_name": SCHEDULE_NAME}
            )
        )
        run = runs[-1] if runs else None
        if run is not None and run.is_finished:
            break
        time.sleep(3)
    assert run is not None and run.is_finished, (
        f"no finished scheduled run within {FIRST_RUN_WITHIN_SECONDS} s of the containers being healthy "
        f"(last: {run and run.status}; {phase_summary()})\n{deployment.diagnostics()}"
    )
    PHASES["first run"] = time.monotonic() - deployment.started_at
    with capsys_module.disabled():
        print(
            f"\n[image] first scheduled run {run.run_id} ended {run.status.value} "
            f"{PHASES['first run']:.1f} s after the containers started\n{phase_summary()}"
        )
    return run


def test_every_role_passes_its_compose_health_check_in_its_container(deployment):
    for role in ROLES:
        result = deployment.check(role)
        assert result.returncode == 0, f"{role}: {result.stdout}{result.stderr}\n{phase_summary()}"
    assert PHASES["healthy"] < HEALTHY_WITHIN_SECONDS, phase_summary()


def test_a_scheduled_tick_runs_in_a_container_of_its_own_and_regularizes_the_orphans(
    deployment, instance, first_scheduled_run
):
    run = first_scheduled_run
    messages = "\n".join(f"{e.level} {e.user_message[:300]}" for e in instance.all_logs(run.run_id))
    assert run.status == dg.DagsterRunStatus.SUCCESS, (
        f"{phase_summary()}\n{messages}\n{deployment.diagnostics()}"
    )
    assert run.tags[jobs.CONCURRENCY_TAG] == jobs.JOB_NAME
    # The DockerRunLauncher started it, through podman's Docker API, from this image,
    # on the host network, with the logs volume, as the image's user.
    found = podman(
        "ps",
        "-a",
        "--filter",
        f"label=dagster/run_id={run.run_id}",
        "--format",
        "{{.ID}}",
        env=deployment.env,
    ).stdout.split()
    assert len(found) == 1, f"run containers of {run.run_id}: {found}\n{deployment.diagnostics()}"
    container = json.loads(podman("inspect", found[0], env=deployment.env).stdout)[0]
    assert container["ImageName"].endswith(IMAGE.split("/", 1)[1]), container["ImageName"]
    assert container["HostConfig"]["NetworkMode"] == "host"
    assert container["Config"]["User"] == f"{APP_UID}:{APP_UID}"
    assert container["State"]["ExitCode"] == 0, container["State"]
    assert any(
        m["Name"] == deployment.volume and m["Destination"] == LOG_DIR for m in container["Mounts"]
    )

    engine = create_app_engine(deployment.shop_url)
    orders = ShopWriter(engine).tables.orders
    with engine.connect() as conn:
        statuses = dict(conn.execute(sa.select(orders.c.id, orders.c.status)).all())
        audit = conn.execute(
            sa.text(
                "SELECT order_id, run_id FROM regularization_audit WHERE action = 'regularized'"
            )
        ).all()
    engine.dispose()
    seen = f"orders {statuses}, audit {audit}, run log:\n{messages}"
    assert {statuses[i] for i in deployment.orphan_ids} == {"completed"}, seen
    assert [s for i, s in statuses.items() if i not in deployment.orphan_ids] == ["pending"], seen
    assert len(audit) == ORPHANS and {run_id for _, run_id in audit} == {run.run_id}, seen


def test_logs_volume_holds_json_lines_written_by_the_image_user(deployment, first_scheduled_run):
    mountpoint = Path(
        podman(
            "volume",
            "inspect",
            "--format",
            "{{.Mountpoint}}",
            deployment.volume,
            env=deployment.env,
        ).stdout.strip()
    )
    files = {path.name: path for path in mountpoint.iterdir()}
    assert {"daemon.log", "order-regularizer.log"} <= set(files), sorted(files)
    # Copied up from the image on first mount: the directory is the image user's.
    assert mountpoint.stat().st_uid == APP_UID
    for name in ("daemon.log", "order-regularizer.log"):
        assert files[name].stat().st_uid == APP_UID, (
            f"{name} is owned by uid {files[name].stat().st_uid}"
        )
    run_lines = [
        json.loads(line)
        for line in files["order-regularizer.log"].read_text().splitlines()
        if line.strip()
    ]
    assert any(
        entry.get("run_id") == first_scheduled_run.run_id and "regularized" in entry["message"]
        for entry in run_lines
    ), run_lines[-5:]
    daemon_lines = [
        line for line in files["daemon.log"].read_text().splitlines() if line.startswith("{")
    ]
    assert any(json.loads(line).get("logger") == "dagster.daemon" for line in daemon_lines)


def test_nothing_in_the_image_runs_as_root(deployment, first_scheduled_run):
    for role, name in deployment.containers.items():
        top = podman("top", name, "user", "huser", "args", env=deployment.env).stdout.splitlines()[
            1:
        ]
        assert top, f"{role}: no processes"
        as_root = [line for line in top if line.split()[:2] != ["dagster", str(APP_UID)]]
        assert not as_root, f"{role} has processes not run by uid {APP_UID}: {as_root}"
        user = podman(
            "inspect", "--format", "{{.Config.User}}", name, env=deployment.env
        ).stdout.strip()
        assert user == f"{APP_UID}:{APP_UID}", (role, user)


def test_phase_times_fit_the_ci_budget(image, deployment, first_scheduled_run, capsys_module):
    size_mb, own_mb = image.size_bytes / 1e6, (image.size_bytes - image.base_size_bytes) / 1e6
    with capsys_module.disabled():
        print(
            f"\n{phase_summary()}; image {size_mb:.0f} MB ({own_mb:.0f} MB above the stand-in base)"
        )
    # CI's budget: about 10 minutes warm, 15 cold, for this module (measured: 1.5 and 3).
    assert sum(PHASES.values()) < 15 * 60, phase_summary()
    # What docker/Dockerfile adds to its base (the runtime lock and the code): 374 MB at 1.13.27,
    # 503 MB with dagster-k8s and its Kubernetes client (the launcher a Kubernetes run needs).
    assert own_mb < 560, f"the layers above the base grew to {own_mb:.0f} MB"
