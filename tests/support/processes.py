"""Real processes the tests start and wait for: free ports, HTTP readiness, the venv's commands."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

from tests.support import ROOT

BIN = Path(sys.executable).parent
WORKSPACE = ROOT / "workspace.yaml"


def dagster_home(directory: Path) -> Path:
    """``directory``/dagster_home with the repository's dagster.yaml and its storage created.

    Dagster creates its SQLite storage when an instance first opens it; a daemon, a webserver
    and a CLI started together on a fresh home race to, and may stamp two Alembic heads (the
    code location then fails to load in one of them)."""
    import dagster as dg

    home = directory / "dagster_home"
    home.mkdir(exist_ok=True)
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(home)):
        pass
    return home


@contextmanager
def running_daemon(env: dict[str, str], cwd: Path, log_path: Path) -> Iterator[subprocess.Popen]:
    """A real ``dagster-daemon`` on the project's workspace, its output in ``log_path``;
    stopped (killed after 30 s) when the block ends."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [str(BIN / "dagster-daemon"), "run", "-w", str(WORKSPACE)],
            env=env,
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def run_demo(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """`make demo`'s command (``python -m regularization_pipeline.demo``) in ``cwd``; fails if it fails."""
    done = subprocess.run(
        [sys.executable, "-m", "regularization_pipeline.demo", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, processes: list[subprocess.Popen], timeout: float = 90) -> None:
    """Until ``url`` answers 200; fails at once when one of ``processes`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in processes:
            assert proc.poll() is None, f"{proc.args[0]} exited early with {proc.returncode}"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback test server
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {timeout} s")


def dagster_pg_env(url: sa.URL, network: str = "regularization_network") -> dict[str, str]:
    """The variables docker/dagster.yaml reads, pointing at ``url``."""
    return {
        "DAGSTER_POSTGRES_HOSTNAME": url.host or "127.0.0.1",
        "DAGSTER_POSTGRES_PORT": str(url.port or 5432),
        "DAGSTER_POSTGRES_USER": url.username or "postgres",
        "DAGSTER_POSTGRES_PASSWORD": url.password or "",
        "DAGSTER_POSTGRES_DB": url.database,
        "DAGSTER_DOCKER_NETWORK": network,
    }


def table_value(stdout: str, metric: str) -> str:
    """A metric's value in the CLI's two-column table."""
    (line,) = [line for line in stdout.splitlines() if line.split()[:1] == [metric]]
    return line.split()[1]
