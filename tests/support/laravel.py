"""A real Laravel queue worker (tests/php/laravel_worker.php) run against what we enqueue.

PHP and Illuminate come from Debian (php-cli, php-illuminate-queue and friends; ``.ci/run``
installs them). Without them the tests skip loudly, and fail under CI=true.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from regularization_pipeline.core.delivery.laravel_queue import jobs_table
from tests.support.databases import unavailable

WORKER = Path(__file__).resolve().parent.parent / "php" / "laravel_worker.php"
ILLUMINATE_QUEUE = Path("/usr/share/php/Illuminate/Queue/autoload.php")


def require_php() -> str:
    php = shutil.which("php")
    if php is None or not ILLUMINATE_QUEUE.exists():
        unavailable("php-cli and the Debian Illuminate packages are not installed (see .ci/run)")
    return php


def create_jobs_table(engine: sa.Engine, name: str = "jobs") -> sa.Table:
    """The shop's jobs table, as Laravel's create_jobs_table migration makes it."""
    md = sa.MetaData()
    table = jobs_table(name, md)
    md.create_all(engine)
    return table


def capsule_connection(engine: sa.Engine) -> dict[str, Any]:
    """The Illuminate\\Database connection array for the database ``engine`` points at."""
    url = engine.url
    if url.get_backend_name() == "sqlite":
        return {"driver": "sqlite", "database": url.database}
    driver = "pgsql" if url.get_backend_name() == "postgresql" else "mysql"
    return {
        "driver": driver,
        "host": url.host or "127.0.0.1",
        "port": url.port or (5432 if driver == "pgsql" else 3306),
        "database": url.database,
        "username": url.username or "",
        "password": url.password or "",
        "charset": "utf8" if driver == "pgsql" else "utf8mb4",
    }


def run_worker(tmp_path: Path, settings: dict[str, Any]) -> list[dict[str, Any]]:
    """Drain the queue with the real Illuminate worker; every run of the job class, in order."""
    php = require_php()
    output = tmp_path / "job_runs.jsonl"
    config = tmp_path / "worker.json"
    config.write_text(json.dumps({"output": str(output), **settings}))
    done = subprocess.run(
        [php, str(WORKER), str(config)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, f"worker failed: {done.stdout} {done.stderr}"
    if not output.exists():
        return []
    return [json.loads(line) for line in output.read_text().splitlines() if line]


def run_database_worker(tmp_path: Path, engine: sa.Engine, **settings: Any) -> list[dict]:
    return run_worker(
        tmp_path, {"driver": "database", "database": capsule_connection(engine), **settings}
    )


REDIS_URL = "redis://127.0.0.1:6379/0"


def require_redis(url: str = REDIS_URL):
    """A client of the loopback Redis, or a loud skip (a failure under CI=true)."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        unavailable(f"Redis on {url} is not reachable ({type(exc).__name__})")
    return client


def run_redis_worker(tmp_path: Path, prefix: str, **settings: Any) -> list[dict]:
    return run_worker(
        tmp_path,
        {
            "driver": "redis",
            "redis": {"host": "127.0.0.1", "port": 6379, "database": 0, "prefix": prefix},
            **settings,
        },
    )
