"""A run's memory does not grow with ``limit``: peak RSS of a run with limit 1,000,000 against one
with limit 1,000, over the same 100,000-orphan backlog on PostgreSQL, as a ratio.

    .venv/bin/python -m bench.memory [--orphans 100000] [--url postgresql://...]

Each run is a child process (its peak RSS is its own, from wait4); the backlog is put back
between the two. Prints one JSON line. The summary keeps counts and a bounded sample of
outcomes (core/run.OUTCOME_SAMPLE_SIZE), so the ratio stays near 1.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import sqlalchemy as sa

from bench import shopgen
from regularization_pipeline.core.shop import migrations
from regularization_pipeline.core.shop.engine import create_app_engine
from regularization_pipeline.demo.shop import ShopWriter

ROOT = Path(__file__).resolve().parent.parent
ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"

RUN = textwrap.dedent("""
    import json, sys
    from regularization_pipeline.core.shop.engine import create_app_engine
    from regularization_pipeline.core.regularizer import Regularizer, RunOptions
    from regularization_pipeline.core.shop.binding import bind_schema
    from regularization_pipeline.core.shop.mapping import SchemaMapping

    engine = create_app_engine(sys.argv[1])
    summary = Regularizer(engine, bind_schema(engine, SchemaMapping())).run(
        RunOptions(limit=int(sys.argv[2]), sleep=0, batch_size=500)
    )
    print(json.dumps({"regularized": summary.regularized, "failed": summary.failed,
                      "outcomes_kept": len(summary.outcomes)}))
""")


def run_in_child(url: str, limit: int) -> dict:
    child = subprocess.Popen(
        [sys.executable, "-c", RUN, url, str(limit)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    out = child.stdout.read()
    _pid, status, usage = os.wait4(child.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, out
    result = json.loads(out.strip().splitlines()[-1])
    return {**result, "limit": limit, "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orphans", type=int, default=100_000)
    parser.add_argument("--admin-url", default=ADMIN_URL)
    args = parser.parse_args()
    name = f"regmem_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(args.admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    url = sa.engine.make_url(args.admin_url).set(database=name).render_as_string(False)
    try:
        engine = create_app_engine(url)
        ShopWriter(engine).create()
        migrations.upgrade(engine, "regularization_")
        ids = shopgen.add_orphans(engine, args.orphans)
        small = run_in_child(url, 1_000)
        shopgen.reset_orphans(engine, ids)
        large = run_in_child(url, 1_000_000)
        engine.dispose()
        assert large["regularized"] == args.orphans and large["failed"] == 0, large
        print(
            json.dumps(
                {
                    "name": "run_peak_rss_ratio_limit_1m_vs_1k",
                    "value": round(large["peak_rss_mb"] / small["peak_rss_mb"], 2),
                    "unit": "ratio",
                    "orphans": args.orphans,
                    "runs": [small, large],
                }
            )
        )
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


if __name__ == "__main__":
    main()
