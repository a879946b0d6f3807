"""The benchmark suite: `make bench` (a million-order shop) or `--quick` (the size `make test` runs).

Prints one JSON line per figure (name, value, unit, database, size, commit)
and appends them to ``bench/results/<commit>.jsonl`` so runs can be compared.
Every figure is the median of several runs. Needs PostgreSQL: the database
named by ``--url`` (default: a ``regbench`` database on 127.0.0.1) is rebuilt.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

from bench import shopgen
from regularization_pipeline.core import detection as d
from regularization_pipeline.core.db import create_app_engine
from regularization_pipeline.core.inconsistencies import InconsistencyTracker
from regularization_pipeline.core.regularizer import Regularizer, RunOptions
from regularization_pipeline.core.schema import SchemaMapping, bind_schema

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/regbench"


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


class Report:
    def __init__(self, size: shopgen.ShopSize, out: Path | None):
        self.size, self.out, self.commit = size, out, git_commit()
        self.figures: dict[str, float] = {}
        if out:
            out.parent.mkdir(parents=True, exist_ok=True)

    def figure(self, name: str, value: float, unit: str, **extra) -> float:
        line = {"name": name, "value": round(value, 3), "unit": unit, "database": "postgresql",
                "size": self.size.label, "commit": self.commit, **extra}
        self.figures[name] = value
        print(json.dumps(line), flush=True)
        if self.out:
            with self.out.open("a", encoding="utf-8") as f:
                f.write(json.dumps(line) + "\n")
        return value

    def note(self, text: str) -> None:
        print(f"# {text}", file=sys.stderr, flush=True)


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm the cache: every figure is of a warm database, as in a five-minute cadence
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


# --- 1. detection -------------------------------------------------------------------

PLAIN_ORPHAN_SQL = """
SELECT count(DISTINCT t.order_id), min(t.completed_at)
FROM transactions t JOIN orders o ON o.id = t.order_id
WHERE o.status = 'pending' AND o.deleted_at IS NULL
  AND t.status = 'completed' AND t.completed_at <= :not_after {lookback}
"""

# The same answer as the candidate scan: one completed payment, in the window, whose
# amount and currency match the order's; written as one grouped join.
PLAIN_PAGE_SQL = """
SELECT o.id FROM orders o
JOIN transactions t ON t.order_id = o.id AND t.status = 'completed'
WHERE o.status = 'pending' AND o.deleted_at IS NULL
GROUP BY o.id, o.total, o.currency
HAVING count(*) = 1 AND max(t.completed_at) <= :not_after
   AND max(t.amount) = o.total AND o.total >= 0
   AND (max(t.currency) IS NULL OR o.currency IS NULL OR upper(max(t.currency)) = upper(o.currency))
ORDER BY o.id LIMIT 50
"""


def explain_summary(conn: sa.Connection, sql: str, params: dict) -> str:
    plan = conn.execute(sa.text("EXPLAIN " + sql), params).scalars().all()
    nodes = [line.strip().lstrip("-> ").split("  (")[0] for line in plan if "->" in line or line is plan[0]]
    return " | ".join(nodes[:6])


def bench_detection(report: Report, engine: sa.Engine, schema, repeat: int, label: str) -> None:
    now = d.utcnow()
    window = d.ScanWindow(now=now)
    day = d.ScanWindow(now=now, lookback_hours=24)
    params = {"not_after": window.not_after}

    def ours(w, count_aged_out=False):
        with engine.connect() as conn:
            return d.orphan_stats(conn, schema, w, sample_size=0, count_aged_out=count_aged_out)

    def first_page():
        return next(d.candidate_pages(engine, schema, window, 50), [])

    def plain(sql, p):
        with engine.connect() as conn:
            return conn.execute(sa.text(sql), p).all()

    ours_count = ours(window).count
    plain_count = plain(PLAIN_ORPHAN_SQL.format(lookback=""), params)[0][0]
    if ours_count != plain_count:
        raise AssertionError(f"detection and the plain SQL disagree: {ours_count} != {plain_count}")
    ours_page, plain_page = first_page(), [r[0] for r in plain(PLAIN_PAGE_SQL, params)]
    if ours_page != plain_page:
        raise AssertionError(f"the candidate page and the plain SQL disagree: {ours_page[:5]} vs {plain_page[:5]}")
    report.figure(f"detection_orphan_stats_ms{label}", median_ms(lambda: ours(window), repeat), "ms")
    report.figure(f"detection_plain_sql_ms{label}", median_ms(lambda: plain(PLAIN_ORPHAN_SQL.format(lookback=""), params), repeat), "ms")
    report.figure(f"detection_first_page_ms{label}", median_ms(first_page, repeat), "ms")
    report.figure(f"detection_plain_first_page_ms{label}", median_ms(lambda: plain(PLAIN_PAGE_SQL, params), repeat), "ms")
    report.figure(f"detection_orphan_stats_24h_ms{label}", median_ms(lambda: ours(day), repeat), "ms")
    # What a run with lookback_hours=24 reads: the same, plus the orphans older than the window.
    report.figure(f"detection_orphan_stats_24h_with_aged_out_ms{label}",
                  median_ms(lambda: ours(day, count_aged_out=True), repeat), "ms")
    def report_all():
        with engine.connect() as conn:
            return d.inconsistency_report(conn, schema, window, sample_size=0)

    report.figure(f"detection_inconsistency_report_ms{label}", median_ms(report_all, max(repeat // 2, 1)), "ms")
    # What the check and the run pay every five minutes: the tracked report, refreshed
    # after a full scan (its stored answer must be the full scan's).
    tracker = InconsistencyTracker(engine, schema)
    tracked = tracker.refresh(full=True)
    with engine.connect() as conn:
        scanned = d.inconsistency_report(conn, schema, sample_size=None)
    if tracked.order_ids != scanned.order_ids:
        raise AssertionError(f"the tracked inconsistencies and a full scan disagree: {tracked.counts} vs {scanned.counts}")
    report.figure(f"detection_inconsistency_refresh_ms{label}", median_ms(tracker.refresh, repeat), "ms")
    with engine.connect() as conn:
        report.note(f"plan{label} orphan count: {explain_summary(conn, PLAIN_ORPHAN_SQL.format(lookback=''), params)}")
        report.note(f"plan{label} first page: {explain_summary(conn, PLAIN_PAGE_SQL, params)}")


# --- 2, 3. throughput -------------------------------------------------------------------

def baseline_original(engine: sa.Engine, limit: int) -> int:
    """The original artisan command's shape: candidates, then per order load, event, update, commit."""
    with engine.connect() as conn:
        ids = conn.execute(sa.text(
            "SELECT DISTINCT o.id FROM orders o JOIN transactions t ON t.order_id = o.id "
            "WHERE o.status = 'pending' AND t.status = 'completed' AND o.deleted_at IS NULL ORDER BY o.id LIMIT :n"
        ), {"n": limit}).scalars().all()
    fired = []
    for order_id in ids:
        with engine.begin() as conn:
            order = conn.execute(sa.text("SELECT * FROM orders WHERE id = :id"), {"id": order_id}).one()
            txs = conn.execute(sa.text("SELECT * FROM transactions WHERE order_id = :id"), {"id": order_id}).all()
            if any(t.status == "completed" for t in txs):
                fired.append(order.id)  # event(new OrderCompleted($order)) with no listener work
                conn.execute(sa.text("UPDATE orders SET status = 'completed', updated_at = now() WHERE id = :id"),
                             {"id": order_id})
    return len(fired)


SET_BASED_SQL = """
WITH flipped AS (
  UPDATE orders o SET status = 'completed', updated_at = now()
  WHERE o.id = ANY(:ids) AND o.status = 'pending'
  RETURNING o.id, o.total, o.currency
), events AS (
  INSERT INTO regularization_outbox (event_id, event_type, idempotency_key, order_id, run_id, payload, state,
                                     attempts, next_attempt_at, created_at, updated_at)
  SELECT gen_random_uuid()::text, 'OrderCompleted', 'order-completed:' || f.id, f.id::text, :run,
         json_build_object('order_id', f.id::text, 'amount', f.total::text, 'currency', f.currency)::text,
         'pending', 0, now(), now(), now()
  FROM flipped f
  RETURNING order_id
)
INSERT INTO regularization_audit (run_id, order_id, action, reason, attempt, order_status, order_amount, currency, created_at)
SELECT :run, f.id::text, 'regularized', 'set-based reference', 0, 'pending', f.total, f.currency, now()
FROM flipped f
"""


def set_based(engine: sa.Engine, ids: list[int]) -> int:
    with engine.begin() as conn:
        return conn.execute(sa.text(SET_BASED_SQL), {"ids": ids, "run": str(uuid.uuid4())}).rowcount


def throughput(report: Report, name: str, engine: sa.Engine, ids: list[int], fn: Callable[[], int], repeat: int) -> float:
    rates = []
    for _ in range(repeat):
        shopgen.reset_orphans(engine, ids)
        started = time.perf_counter()
        done = fn()
        elapsed = time.perf_counter() - started
        if done < len(ids):
            raise AssertionError(f"{name}: {done} of {len(ids)} orders regularized")
        rates.append(done / elapsed)
    return report.figure(name, statistics.median(rates), "orders/s", orders=len(ids))


def bench_throughput(report: Report, engine: sa.Engine, schema, orders: int, repeat: int) -> None:
    ids = shopgen.add_orphans(engine, orders, seed=2)
    # Only these orphans are due: the generated backlog is reset to completed first.
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE orders SET status = 'completed' WHERE status = 'pending' AND id < :first "
                             "AND EXISTS (SELECT 1 FROM transactions t WHERE t.order_id = orders.id AND t.status = 'completed')"),
                     {"first": ids[0]})
    fast = dict(sleep=0, limit=orders, batch_size=1000)
    regularizer = Regularizer(engine, schema, sleeper=lambda _s: None)
    per_order = throughput(report, "throughput_per_order", engine, ids,
                           lambda: regularizer.run(RunOptions(mode="per_order", **fast)).regularized, repeat)
    batched = throughput(report, "throughput_batched", engine, ids,
                         lambda: regularizer.run(RunOptions(mode="batched", **fast)).regularized, repeat)
    baseline = throughput(report, "throughput_original_baseline", engine, ids, lambda: baseline_original(engine, orders), repeat)
    reference = throughput(report, "throughput_set_based_sql", engine, ids, lambda: set_based(engine, ids), repeat)
    report.figure("per_order_vs_baseline", per_order / baseline, "x")
    report.figure("batched_vs_baseline", batched / baseline, "x")
    report.figure("batched_vs_set_based_sql", batched / reference, "ratio")
    shopgen.reset_orphans(engine, ids)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE orders SET status = 'completed' WHERE id = ANY(:ids)"), {"ids": ids})


# --- 4, 5, 6. the job end to end, memory, scale-out ----------------------------------------------

def run_cli(url: str, dagster_home: str, *args: str) -> tuple[float, float, int]:
    """One `regularize-completed-orders` process: (wall seconds, peak RSS MiB, exit code)."""
    # Handlers off, as for the throughput figures: the application consumes the outbox itself.
    env = {**os.environ, "REGULARIZATION_DATABASE_URL": url, "DAGSTER_HOME": dagster_home,
           "REGULARIZATION_PUBLISHERS": "outbox"}
    started = time.perf_counter()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "regularize-completed-orders"), *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    return wall, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status)


def bench_end_to_end(report: Report, engine: sa.Engine, url: str, repeat: int, backlog: int) -> None:
    with tempfile.TemporaryDirectory() as home:
        (Path(home) / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        walls, rss = [], []
        for _ in range(repeat):
            wall, peak, code = run_cli(url, home, "--limit", "50", "--sleep", "0")
            walls.append(wall)
            rss.append(peak)
        report.figure("job_empty_backlog_wall_s", statistics.median(walls), "s")
        report.figure("job_empty_backlog_rss_mib", statistics.median(rss), "MiB")
        ids = shopgen.add_orphans(engine, backlog, seed=3)
        wall, peak, code = run_cli(url, home, "--limit", str(backlog), "--sleep", "0", "--batch-size", "1000")
        report.figure("job_backlog_wall_s", wall, "s", orphans=backlog, exit_code=code)
        report.figure("job_backlog_orders_per_s", backlog / wall, "orders/s", orphans=backlog)
        report.figure("job_backlog_rss_mib", peak, "MiB", orphans=backlog)
        shopgen.reset_orphans(engine, ids)
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE orders SET status = 'completed' WHERE id = ANY(:ids)"), {"ids": ids})


def bench_memory(report: Report, engine: sa.Engine, url: str, small: int, large: int) -> None:
    peaks = {}
    with tempfile.TemporaryDirectory() as home:
        (Path(home) / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        for backlog in (small, large):
            ids = shopgen.add_orphans(engine, backlog, seed=backlog)
            _, peak, _ = run_cli(url, home, "--limit", "100000", "--sleep", "0", "--batch-size", "1000")
            peaks[backlog] = report.figure("peak_rss_mib", peak, "MiB", orphans=backlog)
            with engine.begin() as conn:
                conn.execute(sa.text("UPDATE orders SET status = 'completed' WHERE id = ANY(:ids)"), {"ids": ids})
    report.figure("peak_rss_ratio", peaks[large] / peaks[small], "ratio", small=small, large=large)


def bench_scale_out(report: Report, engine: sa.Engine, schema, orders: int) -> None:
    """1, 2 and 4 concurrent runs (as if the concurrency limit were raised) over one backlog."""
    ids = shopgen.add_orphans(engine, orders, seed=4)
    for workers in (1, 2, 4):
        shopgen.reset_orphans(engine, ids)
        totals = []

        def one_run(into: list) -> None:
            s = Regularizer(engine, schema, sleeper=lambda _s: None).run(RunOptions(sleep=0, limit=orders, batch_size=1000))
            into.append(s.regularized)

        threads = [threading.Thread(target=one_run, args=(totals,)) for _ in range(workers)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - started
        if sum(totals) != orders:
            raise AssertionError(f"{workers} runs regularized {sum(totals)} of {orders}")
        report.figure("scale_out_orders_per_s", orders / elapsed, "orders/s", runs=workers, orders=orders)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE orders SET status = 'completed' WHERE id = ANY(:ids)"), {"ids": ids})


def ensure_database(url: str) -> None:
    """Create the benchmark database when it does not exist yet (on a fresh machine)."""
    target = sa.engine.make_url(url)
    admin = sa.create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        if not conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": target.database}).first():
            conn.execute(sa.text(f'CREATE DATABASE "{target.database}"'))
    admin.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small shop, as run by make test")
    parser.add_argument("--url", default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_URL))
    parser.add_argument("--out", type=Path, default=None, help="JSON lines file (default bench/results/<commit>.jsonl)")
    parser.add_argument("--skip-build", action="store_true", help="reuse the shop already in the database")
    args = parser.parse_args(argv)

    size = shopgen.QUICK if args.quick else shopgen.ShopSize()
    repeat = 3 if args.quick else 5
    report = Report(size, args.out or ROOT / "bench" / "results" / f"{git_commit()}-{size.label}.jsonl")
    ensure_database(args.url)
    engine = create_app_engine(args.url, pool_size=10)
    if not args.skip_build:
        started = time.perf_counter()
        made = shopgen.build_shop(engine, size)
        report.figure("shop_build_s", time.perf_counter() - started, "s", **made)
    schema = bind_schema(engine, SchemaMapping())

    # Detection runs against the generated backlog, with Laravel's default indexes only, then with ours.
    shopgen.drop_indexes(engine)
    bench_detection(report, engine, schema, repeat, "_no_index")
    shopgen.create_indexes(engine)
    bench_detection(report, engine, schema, repeat, "")

    q = args.quick
    bench_throughput(report, engine, schema, orders=500 if q else 5000, repeat=repeat)
    bench_end_to_end(report, engine, args.url, repeat=2 if q else 3, backlog=200 if q else 10_000)
    bench_memory(report, engine, args.url, small=100 if q else 1000, large=500 if q else 100_000)
    bench_scale_out(report, engine, schema, orders=500 if q else 100_000)
    engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
