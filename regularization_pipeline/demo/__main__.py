"""``python -m regularization_pipeline.demo`` (``make demo``): the whole pipeline on an embedded shop.

Builds a fresh SQLite shop at ``.demo/shop.db`` with a few hundred orders in
every state the pipeline meets (healthy, orphaned, paid within the grace
period, inconsistent, soft-deleted, unpaid), migrates it, runs the
``regularize_completed_orders`` job once against the Dagster instance in
``$DAGSTER_HOME`` (``.dagster_home`` by default) and reports what happened.
It never touches the database named by an outer ``REGULARIZATION_DATABASE_URL``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections import Counter
from pathlib import Path

import sqlalchemy as sa

from regularization_pipeline.core.detection import orphans as d
from regularization_pipeline.core.shop import migrations
from regularization_pipeline.core.shop.engine import DATABASE_URL_ENV, create_app_engine
from regularization_pipeline.core.shop.mapping import SchemaMapping
from regularization_pipeline.demo.handlers import DEMO_PUBLISHER_ENV, effect_counts
from regularization_pipeline.demo.shop import ShopWriter

REPO_DAGSTER_YAML = Path(__file__).resolve().parents[2] / "dagster.yaml"
SHOP_PATH = Path(".demo") / "shop.db"

# How many orders of each kind the demo shop holds.
HEALTHY, ORPHANED, RECENT, SOFT_DELETED, UNPAID, FAILED_PAYMENT = 200, 40, 12, 5, 15, 10
AMOUNT_MISMATCH, CURRENCY_MISMATCH, DOUBLE_CHARGE, PAID_BUT_CANCELLED = 4, 3, 3, 3


def build_shop(engine: sa.Engine) -> Counter:
    """Seed the shop; returns how many orders of each kind it holds."""
    shop = ShopWriter(engine).create()
    kinds: Counter = Counter()
    healthy = shop.orphans(HEALTHY, paid_minutes_ago=24 * 60)
    orders = shop.tables.orders
    with engine.begin() as conn:  # their webhooks arrived: completed like any normal order
        conn.execute(orders.update().where(orders.c.id.in_(healthy)).values(status="completed"))
    kinds["healthy"] = len(healthy)
    for i in range(ORPHANED):  # lost webhooks, paid between 15 minutes and a few days ago
        shop.orphan(paid_minutes_ago=15 + i * 97, amount=f"{19 + i % 5 * 10}.90")
    kinds["orphaned"] = ORPHANED
    for _ in range(RECENT):
        shop.orphan(paid_minutes_ago=3)
    kinds["paid within the grace period"] = RECENT
    for _ in range(AMOUNT_MISMATCH):
        shop.payment(shop.order(total="49.90"), amount="39.90")
    for _ in range(CURRENCY_MISMATCH):
        shop.payment(shop.order(currency="EUR"), currency="USD")
    for _ in range(DOUBLE_CHARGE):
        order_id = shop.order()
        shop.payment(order_id)
        shop.payment(order_id, completed_minutes_ago=55)
    for _ in range(PAID_BUT_CANCELLED):
        shop.payment(shop.order(status="cancelled"))
    kinds["inconsistent"] = AMOUNT_MISMATCH + CURRENCY_MISMATCH + DOUBLE_CHARGE + PAID_BUT_CANCELLED
    for _ in range(SOFT_DELETED):
        shop.orphan(deleted=True)
    kinds["soft-deleted"] = SOFT_DELETED
    for _ in range(UNPAID):
        shop.payment(shop.order(), status="pending", completed_minutes_ago=None)
    for _ in range(FAILED_PAYMENT):
        shop.payment(shop.order(status="failed"), status="failed", completed_minutes_ago=None)
    kinds["unpaid or failed"] = UNPAID + FAILED_PAYMENT
    return kinds


def _dagster_home() -> Path:
    """$DAGSTER_HOME, or .dagster_home with the repository's dagster.yaml, as `make demo` sets it up."""
    home = Path(os.environ.get("DAGSTER_HOME") or Path.cwd() / ".dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists() and REPO_DAGSTER_YAML.exists():
        shutil.copy(REPO_DAGSTER_YAML, home / "dagster.yaml")
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def _orders_by_status(engine: sa.Engine) -> dict[str, int]:
    orders = ShopWriter(engine).tables.orders
    with engine.connect() as conn:
        return dict(
            conn.execute(
                sa.select(orders.c.status, sa.func.count()).group_by(orders.c.status)
            ).all()
        )


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m regularization_pipeline.demo", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--sleep", type=float, default=0.01, help="seconds between orders (default 0.01)"
    )
    parser.add_argument(
        "--reset",
        action="store_true",
        help="rebuild the shop in its seeded state and stop there, without running the job "
        "(`make demo-reset`): its orphans wait for a launch from the Launchpad, the CLI or Python",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    shop_path = SHOP_PATH.resolve()
    shop_path.parent.mkdir(parents=True, exist_ok=True)
    shop_path.unlink(missing_ok=True)
    url = f"sqlite:///{shop_path}"
    if os.environ.get(DATABASE_URL_ENV) and os.environ[DATABASE_URL_ENV] != url:
        print(f"note: {DATABASE_URL_ENV} is ignored by the demo, which only uses its own shop")
    # The job's resource and the demo handlers both find the shop through this variable.
    os.environ[DATABASE_URL_ENV] = url
    # The demo's OrderCompleted handlers: only the demo registers them.
    os.environ.update(DEMO_PUBLISHER_ENV)
    home = _dagster_home()

    engine = create_app_engine(url)
    kinds = build_shop(engine)
    revision = migrations.upgrade(engine, SchemaMapping().table_prefix)
    print(
        f"Demo shop {SHOP_PATH}: {sum(kinds.values())} orders ("
        + ", ".join(f"{n} {kind}" for kind, n in kinds.items())
        + f"); migrated to revision {revision}"
    )
    if args.reset:
        engine.dispose()
        print(
            f"The job was not run: {ORPHANED} orphans wait. Launch it from the Launchpad "
            "(`make dev`), the CLI or Python: docs/launching.md. The running schedule fixes them "
            "within five minutes unless you stop it in the UI."
        )
        return 0

    from regularization_pipeline.cli import launch_job, print_report
    from regularization_pipeline.core.errors import BusyError

    print(
        f"Running the job regularize_completed_orders once (sleep {args.sleep} s) on the instance in {home} ..."
    )
    try:
        report = launch_job(_instance(), {"sleep": args.sleep})
    except BusyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    print_report(report)
    if not report.success:
        return 1

    _print_what_happened(report.metrics, report.events, engine)
    engine.dispose()
    print()
    print(
        "Open the UI with `make dev`, then http://127.0.0.1:3000: the run above, the assets' metadata,"
    )
    print(
        "the checks on app_orders and the schedule. `make demo-reset` puts the orphans back without"
    )
    print("running the job (then launch it yourself: docs/launching.md).")
    return 0


def _print_what_happened(m: dict, events: dict, engine: sa.Engine) -> None:
    """The demo's summary of the run, in words."""
    print()
    print("What happened:")
    print(
        f"  regularized: {m['regularized']} of {m['orphans_found']} orphans the job could fix "
        f"(oldest paid {m['oldest_orphan_age_minutes']:.0f} min ago); {m['failed']} failed, "
        f"{m['skipped']} skipped"
    )
    print(f"  held for a human, never fixed: {m.get('held_orders', 0)} order(s)")
    print(
        f"  left to their webhook: {RECENT} orders paid less than {d.DEFAULT_MIN_AGE_MINUTES} min ago"
    )
    kinds_found = {
        k.removeprefix("inconsistent_"): int(v)
        for k, v in m.items()
        if k.startswith("inconsistent_") and v
    }
    print(
        "  inconsistent, reported and not fixed: "
        + (", ".join(f"{kind} {n}" for kind, n in kinds_found.items()) or "none")
    )
    print(
        f"  OrderCompleted events delivered: {events.get('delivered', 0)} "
        f"(retried {events.get('retried', 0)}, dead {events.get('dead', 0)})"
    )
    print("  handlers: " + ", ".join(f"{table} {n}" for table, n in effect_counts(engine).items()))
    print(
        "  orders by status now: "
        + ", ".join(f"{s} {n}" for s, n in sorted(_orders_by_status(engine).items()))
    )


def _instance():
    import dagster as dg

    return dg.DagsterInstance.get()


if __name__ == "__main__":
    sys.exit(main())
