"""Twenty small shops through a real dagster-daemon, the schedule firing every minute.

What tests/dagster/test_shops.py proves for one tick run in process, here as it runs deployed:
the daemon's schedule asks for a run per shop per tick, the run queue starts them under the
per-shop tag limit (one run per shop at a time, ``max_concurrent_runs`` shops at once), each
run in a process of its own. Asserted from the instance's run storage and the shops' own rows:
every orphan completed with one OrderCompleted event delivered once, never two runs of one
shop at the same time, runs of different shops side by side. The figures are printed
(``[shops] ...``).
"""

from __future__ import annotations

import os
import time

import dagster as dg
import pytest
import yaml

from regularization_pipeline.core.shop.engine import create_app_engine
from regularization_pipeline.defs.jobs import JOB_NAME, SCHEDULE_CRON_ENV
from tests.support.databases import migrated_shop
from tests.support.http_stubs import ReceivingApp
from tests.support.processes import dagster_home, running_daemon
from tests.support.rows import outbox_per_order, outbox_states

pytestmark = pytest.mark.slow

SHOPS = 20
TICKS = 2
# Two schedule ticks a minute apart, the first up to a minute away, and their runs on a
# loaded two-core machine (each run a process of its own), with margin.
DEADLINE_SECONDS = 270
FINISHED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


def _shops(tmp_path) -> tuple[list[dict], dict[str, str], dict]:
    """Twenty SQLite shops with three to five orphans each: the shops file, its variables, and
    each shop with its orphans."""
    listed, env, seeded = [], {}, {}
    for i in range(SHOPS):
        name, variable = f"shop-{i:02d}", f"SHOP_{i:02d}_URL"
        url = f"sqlite:///{tmp_path / f'{name}.db'}"
        shop = migrated_shop(create_app_engine(url))
        seeded[name] = (shop, {shop.orphan(paid_minutes_ago=90 + n) for n in range(3 + i % 3)})
        # The original's pace, a second between orders: each run lasts a few seconds, as a
        # real shop's does, so the queue has runs of several shops in flight at once. Without
        # it, on a quiet machine, each run ended before the queue launched the next.
        listed.append({"name": name, "database_url": {"env": variable}, "run": {"sleep": 1}})
        env[variable] = url
    return listed, env, seeded


def _runs(home) -> list[dg.RunRecord]:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        return list(instance.get_run_records(filters=dg.RunsFilter(job_name=JOB_NAME)))


def _ticks(records) -> set[str]:
    return {r.dagster_run.tags.get("dagster/run_key", ":").split(":")[1] for r in records}


def _wait_for_ticks(home, log_path, started: float) -> list[dg.RunRecord]:
    """The runs of the first TICKS ticks, once every one of them has finished."""
    while time.monotonic() - started < DEADLINE_SECONDS:
        records = _runs(home)
        ticks = sorted(_ticks(records))
        if len(ticks) >= TICKS:
            first = set(ticks[:TICKS])
            mine = [r for r in records if _ticks([r]) <= first]
            if all(r.dagster_run.status in FINISHED for r in mine):
                return mine
        time.sleep(2)
    raise AssertionError(
        f"{TICKS} ticks' runs not finished in {DEADLINE_SECONDS} s: "
        f"{[(r.dagster_run.tags.get('dagster/partition'), r.dagster_run.status.value) for r in _runs(home)]}"
        f"; daemon log:\n{log_path.read_text()[-3000:]}"
    )


def test_twenty_shops_run_side_by_side_never_two_runs_of_one_shop_every_orphan_fixed_once(
    tmp_path,
):
    listed, env, seeded = _shops(tmp_path)
    home = dagster_home(tmp_path)
    shops_file = tmp_path / "shops.yaml"
    shops_file.write_text(yaml.safe_dump({"shops": listed}))
    with ReceivingApp(secret="a-secret-of-24-characters") as receiver:
        daemon_env = {
            **os.environ,
            **env,
            "DAGSTER_HOME": str(home),
            "REGULARIZATION_SHOPS_FILE": str(shops_file),
            SCHEDULE_CRON_ENV: "* * * * *",
            "REGULARIZATION_PUBLISHERS": "webhook",
            "REGULARIZATION_WEBHOOK_URL": receiver.url + "/hooks",
            "REGULARIZATION_WEBHOOK_SECRET": "a-secret-of-24-characters",
        }
        daemon_env.pop("REGULARIZATION_DATABASE_URL", None)
        log_path = tmp_path / "daemon.log"
        started = time.monotonic()
        with running_daemon(daemon_env, tmp_path, log_path):
            records = _wait_for_ticks(home, log_path, started)
        wall = time.monotonic() - started
        delivered = [r.event_id for r in receiver.accepted()]

    assert all(r.dagster_run.status == dg.DagsterRunStatus.SUCCESS for r in records), [
        (r.dagster_run.tags.get("dagster/partition"), r.dagster_run.status.value) for r in records
    ]
    by_shop: dict[str, list[tuple[float, float]]] = {}
    for r in records:
        by_shop.setdefault(r.dagster_run.tags["dagster/partition"], []).append(
            (r.start_time, r.end_time)
        )
    assert set(by_shop) == set(seeded)
    for name, spans in by_shop.items():  # one run of a shop at a time
        spans.sort()
        assert all(
            later[0] >= earlier[1] for earlier, later in zip(spans, spans[1:], strict=False)
        ), (
            name,
            spans,
        )
    spans = sorted(span for shop_spans in by_shop.values() for span in shop_spans)
    overlapping = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    assert overlapping >= 2  # shops side by side

    orphans = 0
    for name, (shop, ids) in seeded.items():
        assert {o for o in ids if shop.status_of(o) == "completed"} == ids, name
        assert outbox_per_order(shop, key=int) == dict.fromkeys(ids, 1), name  # one event each
        assert outbox_states(shop) == {"delivered": len(ids)}, name
        orphans += len(ids)
        shop.engine.dispose()
    # Each event delivered once (the event id: order ids, and so idempotency keys, repeat
    # across shops; each shop's receiver tells its own apart).
    assert len(delivered) == orphans == len(set(delivered)), delivered[:5]
    print(f"[shops] {SHOPS} shops, {orphans} orphans, {len(records)} runs over {TICKS} ticks")
    for tick, runs in sorted(_by_tick(records).items()):
        first = min(r.create_timestamp.timestamp() for r in runs)
        last = max(r.end_time for r in runs)
        mean = sum(r.end_time - r.start_time for r in runs) / len(runs)
        print(
            f"[shops] tick {tick}: {len(runs)} runs, all done {last - first:.0f} s after the tick, "
            f"{mean:.1f} s per run"
        )
    print(f"[shops] at most {overlapping} runs at once; {wall:.0f} s wall time from daemon start")


def _by_tick(records) -> dict[str, list[dg.RunRecord]]:
    ticks: dict[str, list[dg.RunRecord]] = {}
    for r in records:
        ticks.setdefault(r.dagster_run.tags["dagster/run_key"].split(":")[1], []).append(r)
    return ticks
