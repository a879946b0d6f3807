"""Throughput on PostgreSQL and MariaDB side by side: per-order, batched, the original, the limit.

Each repetition measures every mode on every server in turn (interleaved), so a machine
shared with other work slows them alike; each figure is the median of the repetitions and
the ratios are of those medians:

- ``throughput_per_order`` / ``throughput_batched``: :meth:`Regularizer.run` in each mode;
- ``throughput_original_baseline``: the original artisan command's shape (select, then per
  order: load, update, event, commit);
- ``throughput_set_based_sql``: the limit, one set-based statement set in one transaction
  doing the same writes (the compare-and-set flip, one outbox row and one audit row per order).
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable

import sqlalchemy as sa

from bench import shopgen
from regularization_pipeline.core.clock import utcnow
from regularization_pipeline.core.detection import orphans as d
from regularization_pipeline.core.regularizer import Regularizer, RunOptions

IDS = sa.bindparam("ids", expanding=True)


def baseline_original(engine: sa.Engine, first: int, limit: int) -> int:
    """The original artisan command's shape: candidates, then per order load, event, update, commit.

    Its candidates start at ``first``, the measured orders: the original checks no
    amount, so it would otherwise "fix" the shop's standing inconsistencies too.
    """
    with engine.connect() as conn:
        ids = (
            conn.execute(
                sa.text(
                    "SELECT DISTINCT o.id FROM orders o JOIN transactions t ON t.order_id = o.id "
                    "WHERE o.status = 'pending' AND t.status = 'completed' AND o.deleted_at IS NULL AND o.id >= :first "
                    "ORDER BY o.id LIMIT :n"
                ),
                {"first": first, "n": limit},
            )
            .scalars()
            .all()
        )
    fired = []
    for order_id in ids:
        with engine.begin() as conn:
            order = conn.execute(
                sa.text("SELECT * FROM orders WHERE id = :id"), {"id": order_id}
            ).one()
            txs = conn.execute(
                sa.text("SELECT * FROM transactions WHERE order_id = :id"), {"id": order_id}
            ).all()
            if any(t.status == "completed" for t in txs):
                fired.append(order.id)  # event(new OrderCompleted($order)) with no listener work
                conn.execute(
                    sa.text(
                        "UPDATE orders SET status = 'completed', updated_at = now() WHERE id = :id"
                    ),
                    {"id": order_id},
                )
    return len(fired)


SET_BASED_POSTGRES = """
WITH flipped AS (
  UPDATE orders o SET status = 'completed', updated_at = now()
  WHERE o.id IN :ids AND o.status = 'pending'
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

# MariaDB has no UPDATE ... RETURNING nor a writing CTE: the flip, then both inserts read the
# orders it moved (marked by their updated_at, the statement's own time), in one transaction.
SET_BASED_MARIADB = (
    "UPDATE orders SET status = 'completed', updated_at = :now WHERE id IN :ids AND status = 'pending'",
    """
INSERT INTO regularization_outbox (event_id, event_type, idempotency_key, order_id, run_id, payload, state,
                                   attempts, next_attempt_at, created_at, updated_at)
SELECT UUID(), 'OrderCompleted', CONCAT('order-completed:', o.id), CAST(o.id AS CHAR), :run,
       JSON_OBJECT('order_id', CAST(o.id AS CHAR), 'amount', CAST(o.total AS CHAR), 'currency', o.currency),
       'pending', 0, :now, :now, :now
FROM orders o WHERE o.id IN :ids AND o.status = 'completed' AND o.updated_at = :now
""",
    """
INSERT INTO regularization_audit (run_id, order_id, action, reason, attempt, order_status, order_amount, currency, created_at)
SELECT :run, CAST(o.id AS CHAR), 'regularized', 'set-based reference', 0, 'pending', o.total, o.currency, :now
FROM orders o WHERE o.id IN :ids AND o.status = 'completed' AND o.updated_at = :now
""",
)


def set_based(engine: sa.Engine, ids: list[int]) -> int:
    # Whole seconds: MariaDB's DATETIME keeps none, and the inserts find the flip by its time.
    params = {"ids": ids, "run": str(uuid.uuid4()), "now": utcnow().replace(microsecond=0)}
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            return conn.execute(sa.text(SET_BASED_POSTGRES).bindparams(IDS), params).rowcount
        flip, *inserts = SET_BASED_MARIADB
        moved = conn.execute(sa.text(flip).bindparams(IDS), params).rowcount
        for sql in inserts:
            conn.execute(sa.text(sql).bindparams(IDS), params)
        return moved


def database_of(engine: sa.Engine) -> str:
    return "postgresql" if engine.dialect.name == "postgresql" else "mariadb"


def prepare(engine: sa.Engine, schema, orders: int) -> list[int]:
    """``orders`` fresh orphans; only they are due (the generated backlog is completed first)."""
    ids = shopgen.add_orphans(engine, orders, seed=2)
    # The pending inconsistent orders stay as they are, reported by every run as in a real shop.
    regularizable = d.regularizable_condition(schema, d.ScanWindow(now=utcnow(), min_age_minutes=0))
    with engine.begin() as conn:
        conn.execute(
            schema.orders.update()
            .where(schema.o("id") < ids[0], regularizable)
            .values({schema.mapping.orders.status: schema.statuses.order_completed})
        )
    return ids


def bench_throughput(report, shops: list[tuple[sa.Engine, object]], orders: int, repeat: int):
    """Every mode on every server, interleaved; figures and ratios per server."""
    fast = dict(sleep=0, limit=orders, batch_size=1000)
    modes: dict[str, Callable[[sa.Engine, object, list[int]], int]] = {
        "throughput_per_order": lambda e, s, ids: (
            Regularizer(e, s, sleeper=lambda _s: None)
            .run(RunOptions(mode="per_order", **fast))
            .regularized
        ),
        "throughput_batched": lambda e, s, ids: (
            Regularizer(e, s, sleeper=lambda _s: None)
            .run(RunOptions(mode="batched", **fast))
            .regularized
        ),
        "throughput_original_baseline": lambda e, s, ids: baseline_original(e, ids[0], orders),
        "throughput_set_based_sql": lambda e, s, ids: set_based(e, ids),
    }
    prepared = [(engine, schema, prepare(engine, schema, orders)) for engine, schema in shops]
    rates: dict[tuple[str, str], list[float]] = {}
    for _ in range(repeat):
        for engine, schema, ids in prepared:
            for name, fn in modes.items():
                shopgen.reset_orphans(engine, ids)
                started = time.perf_counter()
                done = fn(engine, schema, ids)
                elapsed = time.perf_counter() - started
                if done < len(ids):
                    raise AssertionError(f"{name}: {done} of {len(ids)} orders regularized")
                rates.setdefault((database_of(engine), name), []).append(done / elapsed)
    for engine, _schema, ids in prepared:
        db = database_of(engine)
        median = {name: statistics.median(rates[(db, name)]) for name in modes}
        for name, value in median.items():
            report.figure(name, value, "orders/s", orders=len(ids), database=db)
        baseline, limit = median["throughput_original_baseline"], median["throughput_set_based_sql"]
        per_order, batched = median["throughput_per_order"], median["throughput_batched"]
        report.figure("per_order_vs_baseline", per_order / baseline, "x", database=db)
        report.figure("batched_vs_baseline", batched / baseline, "x", database=db)
        report.figure("batched_vs_set_based_sql", batched / limit, "ratio", database=db)
        retire(engine, ids)


def retire(engine: sa.Engine, ids: list[int]) -> None:
    """Take measured orders out of later figures: their rows gone from our tables, the orders completed."""
    shopgen.reset_orphans(engine, ids)
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE orders SET status = 'completed' WHERE id IN :ids").bindparams(IDS),
            {"ids": ids},
        )


def main(argv: list[str] | None = None) -> int:
    """The throughput figures alone, on a shop of any size: quicker than the whole suite."""
    import argparse
    import sys

    from bench import run
    from regularization_pipeline.core.shop.binding import bind_schema
    from regularization_pipeline.core.shop.engine import create_app_engine
    from regularization_pipeline.core.shop.mapping import SchemaMapping

    parser = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__)
    parser.add_argument(
        "--url", default=run.DEFAULT_URL, help="the PostgreSQL shop ('' leaves it out)"
    )
    parser.add_argument(
        "--mariadb-url", default=run.DEFAULT_MARIADB_URL, help="the MariaDB shop ('' leaves it out)"
    )
    parser.add_argument("--shop-orders", type=int, default=200_000, help="orders in the shop built")
    parser.add_argument(
        "--orders", type=int, default=2000, help="fresh orphans each mode regularizes"
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-build", action="store_true", help="reuse the shop already there")
    parser.add_argument("--out", type=run.Path, default=None, help="JSON lines file to append to")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    size = shopgen.ShopSize(orders=args.shop_orders)
    engines = []
    if args.url:
        run.ensure_database(args.url)
        engines.append(create_app_engine(args.url, pool_size=10))
    if args.mariadb_url:
        run.ensure_mariadb_database(args.mariadb_url)
        engines.append(create_app_engine(args.mariadb_url, pool_size=10))
    if not engines:
        print("give --url or --mariadb-url", file=sys.stderr)
        return 2
    report = run.Report(size, args.out)
    for engine in engines if not args.skip_build else ():
        shopgen.build_shop(engine, size)
    shops = [(engine, bind_schema(engine, SchemaMapping())) for engine in engines]
    bench_throughput(report, shops, orders=args.orders, repeat=args.repeat)
    for engine in engines:
        engine.dispose()
    report.note(f"the throughput figures took {time.perf_counter() - began:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
