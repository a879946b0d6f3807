"""The benchmark suite: `make bench` (a million-order shop) or `--quick` (the size `make test` runs).

Prints one JSON line per figure (name, value, unit, database, size, commit)
and appends them to ``bench/results/<commit>.jsonl`` so runs can be compared.
Every figure is the median of several runs. Needs PostgreSQL: the database
named by ``--url`` (default: a ``regbench`` database on 127.0.0.1) is rebuilt;
the throughput figures are also measured on MariaDB, interleaved with PostgreSQL's,
on a shop of the same shape in ``--mariadb-url`` (default: ``regbench`` on
127.0.0.1:3306; ``--mariadb-url ''`` leaves MariaDB out). The last line says how
long the whole run took.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

from bench import shopgen
from bench.throughput import bench_throughput, retire
from regularization_pipeline.core.clock import utcnow
from regularization_pipeline.core.decisions.tracker import InconsistencyTracker
from regularization_pipeline.core.detection import orphans as d
from regularization_pipeline.core.detection.scans import inconsistency_report
from regularization_pipeline.core.regularizer import Regularizer, RunOptions
from regularization_pipeline.core.shop.binding import bind_schema
from regularization_pipeline.core.shop.engine import create_app_engine
from regularization_pipeline.core.shop.mapping import SchemaMapping

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/regbench"
DEFAULT_MARIADB_URL = "mysql+pymysql://root@127.0.0.1:3306/regbench"


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine(engine: sa.Engine, mariadb: sa.Engine | None = None) -> str:
    """Where the figures came from: cores, processor and the database servers, as one string."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            model = next(
                (
                    line.split(":", 1)[1].strip()
                    for line in cpuinfo
                    if line.startswith("model name")
                ),
                model,
            )
    except OSError:
        pass
    with engine.connect() as conn:
        server = conn.execute(sa.text("SHOW server_version")).scalar_one().split()[0]
    servers = f"PostgreSQL {server}"
    if mariadb is not None:
        with mariadb.connect() as conn:
            servers += (
                f", MariaDB {conn.execute(sa.text('SELECT VERSION()')).scalar_one().split('-')[0]}"
            )
    return f"{os.cpu_count()} cpu {model}, {round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30)} GiB, {servers}"


class Report:
    def __init__(self, size: shopgen.ShopSize, out: Path | None, machine: str = ""):
        self.size, self.out, self.commit, self.machine = size, out, git_commit(), machine
        self.figures: dict[str, float] = {}
        if out:
            out.parent.mkdir(parents=True, exist_ok=True)

    def figure(self, name: str, value: float, unit: str, **extra) -> float:
        line = {
            "name": name,
            "value": round(value, 3),
            "unit": unit,
            "database": "postgresql",
            "size": self.size.label,
            "commit": self.commit,
            "machine": self.machine,
            **extra,
        }
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
SELECT count(*), min(paid_at) FROM (
  SELECT o.id, max(t.completed_at) AS paid_at FROM orders o
  JOIN transactions t ON t.order_id = o.id AND t.status = 'completed'
  WHERE o.status = 'pending' AND o.deleted_at IS NULL
  GROUP BY o.id, o.total, o.currency
  HAVING count(*) = 1 AND max(t.completed_at) <= :not_after {lookback}
     AND max(t.amount) = o.total AND o.total >= 0
     AND (max(t.currency) IS NULL OR o.currency IS NULL OR upper(max(t.currency)) = upper(o.currency))
) fixable
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
ORDER BY max(t.completed_at), o.id LIMIT 50
"""


def summarize_plan(plan: list[str]) -> str:
    nodes = [
        line.strip().lstrip("-> ").split("  (")[0]
        for line in plan
        if "->" in line or line is plan[0]
    ]
    return " | ".join(nodes[:6])


def explain_summary(conn: sa.Connection, sql: str, params: dict) -> str:
    return summarize_plan(conn.execute(sa.text("EXPLAIN " + sql), params).scalars().all())


def sent_statements(engine: sa.Engine, fn: Callable[[], object]) -> list[tuple[str, object]]:
    """The SQL ``fn`` sent through ``engine`` (as the driver got it), with its parameters."""
    sent = []

    def record(_conn, _cursor, statement, parameters, _context, _executemany):
        sent.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        fn()
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    return [
        (statement, parameters)
        for statement, parameters in sent
        if statement.lstrip().upper().startswith("SELECT")
    ]


def bench_detection(report: Report, engine: sa.Engine, schema, repeat: int, label: str) -> None:
    now = utcnow()
    window = d.ScanWindow(now=now)
    day = d.ScanWindow(now=now, lookback_hours=24)
    params = {"not_after": window.not_after}

    def ours(w, count_aged_out=False, sample_size=0):
        with engine.connect() as conn:
            return d.orphan_stats(
                conn, schema, w, sample_size=sample_size, count_aged_out=count_aged_out
            )

    def first_page():  # the run's queue: its orphans, oldest payment first
        return next(d.fixable_pages(engine, schema, window, 50), [])

    def plain(sql, p):
        with engine.connect() as conn:
            return conn.execute(sa.text(sql), p).all()

    plain_all = PLAIN_ORPHAN_SQL.format(lookback="")
    plain_day = PLAIN_ORPHAN_SQL.format(lookback="AND max(t.completed_at) >= :not_before")
    day_params = {**params, "not_before": day.not_before}
    for w, sql, p in ((window, plain_all, params), (day, plain_day, day_params)):
        ours_count, plain_count = ours(w).count, plain(sql, p)[0][0]
        if ours_count != plain_count:
            raise AssertionError(
                f"detection and the plain SQL disagree: {ours_count} != {plain_count}"
            )
    ours_page, plain_page = first_page(), [r[0] for r in plain(PLAIN_PAGE_SQL, params)]
    if ours_page != plain_page:
        raise AssertionError(
            f"the candidate page and the plain SQL disagree: {ours_page[:5]} vs {plain_page[:5]}"
        )
    report.figure(
        f"detection_orphan_stats_ms{label}", median_ms(lambda: ours(window), repeat), "ms"
    )
    report.figure(
        f"detection_plain_sql_ms{label}", median_ms(lambda: plain(plain_all, params), repeat), "ms"
    )
    report.figure(f"detection_first_page_ms{label}", median_ms(first_page, repeat), "ms")
    # What the orphan check reads: the count, the oldest payment and 20 ids, in one pass.
    report.figure(
        f"detection_check_with_sample_ms{label}",
        median_ms(lambda: ours(window, sample_size=20), repeat),
        "ms",
    )
    report.figure(
        f"detection_plain_first_page_ms{label}",
        median_ms(lambda: plain(PLAIN_PAGE_SQL, params), repeat),
        "ms",
    )
    report.figure(
        f"detection_orphan_stats_24h_ms{label}", median_ms(lambda: ours(day), repeat), "ms"
    )
    report.figure(
        f"detection_plain_sql_24h_ms{label}",
        median_ms(lambda: plain(plain_day, day_params), repeat),
        "ms",
    )
    # What a run with lookback_hours=24 reads: the same, plus the orphans older than the window.
    report.figure(
        f"detection_orphan_stats_24h_with_aged_out_ms{label}",
        median_ms(lambda: ours(day, count_aged_out=True), repeat),
        "ms",
    )

    def report_all():
        with engine.connect() as conn:
            return inconsistency_report(conn, schema, window, sample_size=0)

    report.figure(
        f"detection_inconsistency_report_ms{label}",
        median_ms(report_all, max(repeat // 2, 1)),
        "ms",
    )
    # What the check and the run pay every five minutes: the tracked report, refreshed
    # after a full scan (its stored answer must be the full scan's).
    tracker = InconsistencyTracker(engine, schema)
    tracked = tracker.refresh(full=True)
    with engine.connect() as conn:
        scanned = inconsistency_report(conn, schema, sample_size=None)
    if tracked.order_ids != scanned.order_ids:
        raise AssertionError(
            f"the tracked inconsistencies and a full scan disagree: {tracked.counts} vs {scanned.counts}"
        )
    report.figure(
        f"detection_inconsistency_refresh_ms{label}", median_ms(tracker.refresh, repeat), "ms"
    )
    if engine.dialect.name != "postgresql":
        return  # the plan summaries read PostgreSQL's EXPLAIN text
    with engine.connect() as conn:
        report.note(f"plan{label} plain orphan count: {explain_summary(conn, plain_all, params)}")
        report.note(
            f"plan{label} plain first page: {explain_summary(conn, PLAIN_PAGE_SQL, params)}"
        )
    # The pipeline's own statements, as it sends them.
    for what, fn in (
        ("orphan count", lambda: ours(window)),
        ("first page", first_page),
        ("orphan count 24h", lambda: ours(day)),
    ):
        statement, parameters = sent_statements(engine, fn)[0]
        with engine.connect() as conn:
            plan = conn.exec_driver_sql("EXPLAIN " + statement, parameters).scalars().all()
        report.note(f"plan{label} pipeline {what}: {summarize_plan(plan)}")


# --- 2, 3. throughput -------------------------------------------------------------------


# --- 4, 5, 6. the job end to end, memory, scale-out ----------------------------------------------


def run_cli(url: str, dagster_home: str, *args: str) -> tuple[float, float]:
    """One `regularize-completed-orders` process: (wall seconds, peak RSS MiB); a failed run raises."""
    # Handlers off, as for the throughput figures: the application consumes the outbox itself.
    env = {
        **os.environ,
        "REGULARIZATION_DATABASE_URL": url,
        "DAGSTER_HOME": dagster_home,
        "REGULARIZATION_PUBLISHERS": "outbox",
    }
    # stderr to a file, not a pipe: nothing reads a pipe while wait4 waits, and a chatty
    # run would block on a full one.
    with tempfile.TemporaryFile() as errors:
        started = time.perf_counter()
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "regularize-completed-orders"), *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=errors,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        code = os.waitstatus_to_exitcode(status)
        if code != 0:  # a crashed run would make a fast figure
            errors.seek(0)
            raise AssertionError(
                f"regularize-completed-orders {' '.join(args)} exited {code}: {errors.read()[-2000:]!r}"
            )
    return wall, usage.ru_maxrss / 1024


def assert_all_completed(engine: sa.Engine, ids: list[int]) -> None:
    with engine.connect() as conn:
        left = conn.execute(
            sa.text("SELECT count(*) FROM orders WHERE id = ANY(:ids) AND status <> 'completed'"),
            {"ids": ids},
        ).scalar_one()
    if left:
        raise AssertionError(f"{left} of {len(ids)} orphans were not regularized")


def backlog_runs(
    engine: sa.Engine, url: str, home: str, ids: list[int], repeat: int
) -> tuple[list[float], list[float]]:
    """``repeat`` CLI runs over the same backlog, put back between runs: (walls, peak RSS)."""
    walls, peaks = [], []
    for _ in range(repeat):
        shopgen.reset_orphans(engine, ids)
        wall, peak = run_cli(
            url, home, "--limit", str(max(len(ids), 1)), "--sleep", "0", "--batch-size", "1000"
        )
        assert_all_completed(engine, ids)
        walls.append(wall)
        peaks.append(peak)
    return walls, peaks


def bench_end_to_end(
    report: Report, engine: sa.Engine, url: str, repeat: int, backlog: int
) -> None:
    with tempfile.TemporaryDirectory() as home:
        (Path(home) / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        walls, rss = [], []
        for _ in range(repeat):
            # As the schedule launches it: the job's defaults (limit 50, sleep 2), nothing due.
            wall, peak = run_cli(url, home)
            walls.append(wall)
            rss.append(peak)
        report.figure("job_empty_backlog_wall_s", statistics.median(walls), "s")
        report.figure("job_empty_backlog_rss_mib", statistics.median(rss), "MiB")
        ids = shopgen.add_orphans(engine, backlog, seed=3)
        walls, rss = backlog_runs(engine, url, home, ids, repeat)
        wall = statistics.median(walls)
        report.figure("job_backlog_wall_s", wall, "s", orphans=backlog)
        report.figure("job_backlog_orders_per_s", backlog / wall, "orders/s", orphans=backlog)
        report.figure("job_backlog_rss_mib", statistics.median(rss), "MiB", orphans=backlog)
        retire(engine, ids)


def bench_memory(
    report: Report, engine: sa.Engine, url: str, small: int, large: int, repeat: int
) -> None:
    peaks = {}
    with tempfile.TemporaryDirectory() as home:
        (Path(home) / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        for backlog in (small, large):
            ids = shopgen.add_orphans(engine, backlog, seed=backlog)
            _, rss = backlog_runs(engine, url, home, ids, repeat)
            peaks[backlog] = report.figure(
                "peak_rss_mib", statistics.median(rss), "MiB", orphans=backlog
            )
            retire(engine, ids)
    report.figure("peak_rss_ratio", peaks[large] / peaks[small], "ratio", small=small, large=large)


def _one_run(url: str, limit: int, start, results) -> None:
    """A run in its own process, as a second run of the job would be (its own engine and interpreter)."""
    engine = create_app_engine(url)
    try:
        schema = bind_schema(engine, SchemaMapping())
        start.wait(timeout=120)
        # The shop's run lock would make the others answer busy: scaling out means lifting
        # it on purpose (exclusive=False), as the forced-overlap tests do; row locks remain.
        summary = Regularizer(engine, schema, sleeper=lambda _s: None, exclusive=False).run(
            RunOptions(sleep=0, limit=limit, batch_size=1000)
        )
        results.put(summary.regularized)
    except BaseException as exc:  # noqa: BLE001 - the parent reports it
        results.put(repr(exc))
    finally:
        engine.dispose()


def bench_scale_out(report: Report, engine: sa.Engine, url: str, orders: int, repeat: int) -> None:
    """1, 2 and 4 concurrent runs (as with the concurrency limit raised), each its own process, over one backlog."""
    ids = shopgen.add_orphans(engine, orders, seed=4)
    ctx = multiprocessing.get_context("spawn")
    for runs in (1, 2, 4):
        rates = []
        for _ in range(repeat):
            shopgen.reset_orphans(engine, ids)
            start, results = ctx.Barrier(runs + 1), ctx.Queue()
            procs = [
                ctx.Process(target=_one_run, args=(url, orders, start, results))
                for _ in range(runs)
            ]
            for proc in procs:
                proc.start()
            start.wait(timeout=120)  # every process has imported and connected: time the work alone
            started = time.perf_counter()
            totals = [results.get(timeout=600) for _ in procs]
            elapsed = time.perf_counter() - started
            for proc in procs:
                proc.join(timeout=60)
            if any(not isinstance(t, int) for t in totals) or sum(totals) != orders:
                raise AssertionError(f"{runs} runs regularized {totals} of {orders}")
            assert_all_completed(engine, ids)
            rates.append(orders / elapsed)
        report.figure(
            "scale_out_orders_per_s", statistics.median(rates), "orders/s", runs=runs, orders=orders
        )
    retire(engine, ids)


def ensure_database(url: str) -> None:
    """Create the benchmark database when it does not exist yet (on a fresh machine)."""
    target = sa.engine.make_url(url)
    admin = sa.create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        if not conn.execute(
            sa.text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": target.database}
        ).first():
            conn.execute(sa.text(f'CREATE DATABASE "{target.database}"'))
    admin.dispose()


def ensure_mariadb_database(url: str) -> None:
    """The MariaDB benchmark database, created as Laravel creates one when it does not exist."""
    target = sa.engine.make_url(url)
    admin = sa.create_engine(target.set(database="mysql"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(
            sa.text(
                f"CREATE DATABASE IF NOT EXISTS `{target.database}` "
                "CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
            )
        )
    admin.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a small shop, as run by make test")
    parser.add_argument("--url", default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_URL))
    parser.add_argument(
        "--mariadb-url",
        default=os.environ.get("BENCH_MARIADB_URL", DEFAULT_MARIADB_URL),
        help="the MariaDB shop for the throughput figures ('' leaves MariaDB out)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON lines file (default bench/results/<commit>.jsonl)",
    )
    parser.add_argument(
        "--skip-build", action="store_true", help="reuse the shop already in the database"
    )
    args = parser.parse_args(argv)

    size = shopgen.QUICK if args.quick else shopgen.ShopSize()
    repeat = 3 if args.quick else 5
    began = time.perf_counter()
    ensure_database(args.url)
    engine = create_app_engine(args.url, pool_size=10)
    mariadb = None
    if args.mariadb_url:
        ensure_mariadb_database(args.mariadb_url)
        mariadb = create_app_engine(args.mariadb_url, pool_size=10)
    report = Report(
        size,
        args.out or ROOT / "bench" / "results" / f"{git_commit()}-{size.label}.jsonl",
        machine(engine, mariadb),
    )
    for server in (engine, mariadb):
        if server is not None and not args.skip_build:
            started = time.perf_counter()
            made = shopgen.build_shop(server, size)
            db = "postgresql" if server is engine else "mariadb"
            report.figure("shop_build_s", time.perf_counter() - started, "s", database=db, **made)
    schema = bind_schema(engine, SchemaMapping())
    shops = [(engine, schema)]
    if mariadb is not None:
        shops.append((mariadb, bind_schema(mariadb, SchemaMapping())))

    # Detection runs against the generated backlog, with Laravel's default indexes only, then with ours.
    shopgen.drop_indexes(engine)
    bench_detection(report, engine, schema, repeat, "_no_index")
    shopgen.create_indexes(engine)
    bench_detection(report, engine, schema, repeat, "")
    if mariadb is not None:
        shopgen.create_indexes(mariadb)
        bench_detection(report, mariadb, shops[1][1], repeat, "_mariadb")

    q = args.quick
    bench_throughput(report, shops, orders=500 if q else 5000, repeat=3)
    bench_end_to_end(report, engine, args.url, repeat=2 if q else 3, backlog=200 if q else 10_000)
    bench_memory(
        report,
        engine,
        args.url,
        small=100 if q else 1000,
        large=500 if q else 100_000,
        repeat=2 if q else 3,
    )
    bench_scale_out(report, engine, args.url, orders=500 if q else 100_000, repeat=2 if q else 3)
    engine.dispose()
    if mariadb is not None:
        mariadb.dispose()
    report.note(f"the benchmark took {time.perf_counter() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
