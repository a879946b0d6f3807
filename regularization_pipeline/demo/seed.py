"""``python -m regularization_pipeline.demo.seed``: seed a demo shop in any database and migrate our tables.

Used by the ``demo-seed`` service of docker-compose.yml (profile ``demo``) and
by the deployment test. Unlike ``python -m regularization_pipeline.demo``, which
always rebuilds its own SQLite file and runs the job in-process, this only
prepares the database named by ``--url`` or ``REGULARIZATION_DATABASE_URL`` and
leaves the runs to the deployment's schedule.

It seeds once: a database whose orders table already has rows is left as it is,
so ``docker compose --profile demo up`` can run it on every start. Customers
get names and e-mail addresses on purpose: the deployment test checks that no
log line ever carries them.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

import sqlalchemy as sa

from regularization_pipeline.core.errors import ConfigurationError
from regularization_pipeline.core.shop import migrations
from regularization_pipeline.core.shop.engine import (
    DATABASE_URL_ENV,
    create_app_engine,
    database_url_from_env,
)
from regularization_pipeline.core.shop.mapping import SchemaMapping
from regularization_pipeline.demo.__main__ import build_shop
from regularization_pipeline.demo.shop import ShopWriter

# Orphans that belong to named customers, beside build_shop's anonymous ones.
CUSTOMER_ORPHANS = 5


def customer_email(n: int) -> str:
    """The e-mail address of demo customer ``n`` (example.com: it can never reach anyone)."""
    return f"demo.customer{n}@example.com"


def seed(engine: sa.Engine) -> Counter | None:
    """Seed the shop and migrate our tables; None when the shop already had orders."""
    shop = ShopWriter(engine)
    orders = shop.tables.orders
    if sa.inspect(engine).has_table(orders.name):
        with engine.connect() as conn:
            already_seeded = bool(
                conn.execute(sa.select(sa.func.count()).select_from(orders)).scalar_one()
            )
        if already_seeded:
            migrations.upgrade(engine, SchemaMapping().table_prefix)
            return None
    kinds = build_shop(engine)
    with engine.begin() as conn:
        conn.execute(
            shop.tables.customers.insert(),
            [
                {"id": n, "name": f"Demo Customer {n}", "email": customer_email(n)}
                for n in range(1, CUSTOMER_ORPHANS + 1)
            ],
        )
    for n in range(1, CUSTOMER_ORPHANS + 1):
        shop.orphan(paid_minutes_ago=30 + n, customer_id=n)
    kinds["orphaned"] += CUSTOMER_ORPHANS
    migrations.upgrade(engine, SchemaMapping().table_prefix)
    return kinds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m regularization_pipeline.demo.seed", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--url", help=f"SQLAlchemy URL of the shop (default: ${DATABASE_URL_ENV})")
    args = parser.parse_args(argv)
    try:
        engine = create_app_engine(args.url or database_url_from_env())
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        kinds = seed(engine)
    finally:
        engine.dispose()
    # The URL is never printed: it may carry a password.
    if kinds is None:
        print("demo shop already seeded: left as it is (our tables migrated)")
    else:
        print(
            f"demo shop seeded: {sum(kinds.values())} orders ("
            + ", ".join(f"{n} {kind}" for kind, n in kinds.items())
            + "); our tables migrated"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
