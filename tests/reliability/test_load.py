"""Load: 100,000 orphans on PostgreSQL worked off by runs of limit=10,000, each in its own process,
so each run's peak memory (ru_maxrss from os.wait4) is its own. Memory must not grow with the
backlog or with the work already done: a run reads the backlog page by page and batch by batch,
and keeps only its counters and one small outcome record per order it decided (``outcomes_kept``),
so a run of 10,000 orders stays within 30 % of a run that found nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import sqlalchemy as sa

from bench.shopgen import add_orphans
from regularization_pipeline.core.shop.engine import create_app_engine
from regularization_pipeline.core.shop.tables import owned_tables
from tests.support import ROOT
from tests.support.databases import migrated_shop, throwaway_postgres_database
from tests.support.reliability import figures

# The brief's scale; a smaller one (e.g. 10000 / 1000) measures memory while the claim is slow.
ORPHANS = int(os.environ.get("RELIABILITY_LOAD_ORPHANS", "100000"))
LIMIT = int(os.environ.get("RELIABILITY_LOAD_LIMIT", "10000"))
# Batched, 10,000 orders take about 8 s on this machine with a small backlog (races: 2,000 in 1.6 s).
RUN_BUDGET_SECONDS = float(os.environ.get("RELIABILITY_LOAD_RUN_BUDGET", "60"))

RUN = textwrap.dedent(f"""
    import json, sys, time
    from regularization_pipeline.core.shop.engine import create_app_engine
    from regularization_pipeline.core.regularizer import Regularizer, RunOptions
    from regularization_pipeline.core.shop.binding import bind_schema
    from regularization_pipeline.core.shop.mapping import SchemaMapping

    engine = create_app_engine(sys.argv[1])
    began = time.monotonic()
    summary = Regularizer(engine, bind_schema(engine, SchemaMapping())).run(RunOptions(limit={LIMIT}, sleep=0))
    print(json.dumps({{"regularized": summary.regularized, "failed": summary.failed, "found": summary.found,
                      "outcomes_kept": len(summary.outcomes), "seconds": time.monotonic() - began}}))
""")


def _run_in_child(url: str) -> dict:
    child = subprocess.Popen(
        [sys.executable, "-c", RUN, url],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    began = time.monotonic()
    # A run over its budget is killed, so a slow claim fails the test instead of hanging it.
    killer = threading.Timer(RUN_BUDGET_SECONDS, child.kill)
    killer.start()
    out = child.stdout.read()
    killer.cancel()
    # wait4, not Popen.wait: it also returns the child's own resource usage.
    _pid, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    took = time.monotonic() - began
    assert child.returncode == 0, (
        f"a run of limit={LIMIT} over {ORPHANS} orphans was killed after {took:.0f} s "
        f"(budget {RUN_BUDGET_SECONDS:.0f} s)"
        if child.returncode == -9
        else out
    )
    result = json.loads(out.strip().splitlines()[-1])
    result.update(wall_seconds=round(took, 2), peak_rss_mb=round(usage.ru_maxrss / 1024, 1))
    return result


@pytest.mark.slow
def test_100k_orphans_in_runs_of_10k_keep_memory_flat():
    with throwaway_postgres_database("regload") as url:
        engine = create_app_engine(url.render_as_string(hide_password=False))
        shop = migrated_shop(engine)
        began = time.monotonic()
        ids = add_orphans(engine, ORPHANS)  # COPY: seconds, not minutes
        seeded_in = time.monotonic() - began
        assert len(ids) == ORPHANS

        runs = []
        while True:
            result = _run_in_child(url.render_as_string(hide_password=False))
            runs.append(result)
            assert result["failed"] == 0, result
            if result["regularized"] == 0 or len(runs) > ORPHANS // LIMIT + 1:
                break
        orders = shop.tables.orders
        ob = owned_tables().outbox
        with engine.connect() as conn:
            still_pending = conn.execute(
                sa.select(sa.func.count()).select_from(orders).where(orders.c.status != "completed")
            ).scalar_one()
            events = conn.execute(sa.select(sa.func.count()).select_from(ob)).scalar_one()
            orders_with_events = conn.execute(
                sa.select(sa.func.count(sa.distinct(ob.c.order_id)))
            ).scalar_one()
        engine.dispose()

    working = [r for r in runs if r["regularized"]]
    assert [r["regularized"] for r in working] == [LIMIT] * (ORPHANS // LIMIT)
    assert (
        runs[-1]["regularized"] == 0 and runs[-1]["found"] == 0
    )  # the last run found nothing left
    assert still_pending == 0
    assert events == orders_with_events == ORPHANS  # exactly one OrderCompleted per order
    peaks = [r["peak_rss_mb"] for r in working]
    figures(
        "load/postgresql/100k orphans in runs of 10k",
        seeded_seconds=round(seeded_in, 1),
        runs=len(working),
        peak_rss_mb=peaks,
        run_seconds=[round(r["seconds"], 1) for r in working],
        wall_seconds=[r["wall_seconds"] for r in runs],
        empty_run_rss_mb=runs[-1]["peak_rss_mb"],
        outcomes_kept=working[0]["outcomes_kept"],
    )
    assert max(peaks) <= 1.3 * min(peaks), f"peak RSS grew across runs: {peaks}"
    assert max(peaks) <= 1.3 * runs[-1]["peak_rss_mb"], (
        f"a run of {LIMIT} orders against an empty one: {peaks}"
    )
