"""A realistic Laravel-shaped shop on PostgreSQL or MariaDB, bulk-loaded.

Default size: 1,000,000 orders and 1,100,000 transactions: most orders
completed with one completed payment, some failed payments retried, 0.5 %
orphans (pending with a completed payment) spread over 30 days, a few hundred
inconsistencies of every kind, and soft-deleted rows. Rows stream from a
generator into ``COPY ... FROM STDIN`` on PostgreSQL and into multi-row ``INSERT``
statements of 5,000 rows on MariaDB (the same rows, seed for seed), so memory stays
flat whatever the size.
"""

from __future__ import annotations

import datetime as dt
import io
import random
from collections.abc import Iterator
from dataclasses import dataclass

import sqlalchemy as sa

from regularization_pipeline.core.clock import utcnow
from regularization_pipeline.core.shop import migrations
from regularization_pipeline.core.shop.mapping import SchemaMapping
from regularization_pipeline.demo.shop import shop_tables


@dataclass(frozen=True)
class ShopSize:
    orders: int = 1_000_000
    orphan_share: float = 0.005
    retried_share: float = (
        0.15  # healthy orders with a failed payment (retried when the order completed)
    )
    inconsistencies: int = 300
    deleted_share: float = 0.002
    days: int = 30

    @property
    def label(self) -> str:
        return f"{self.orders}_orders"


QUICK = ShopSize(orders=20_000, inconsistencies=30)


class _CopyStream(io.RawIOBase):
    """A file-like object over an iterator of text lines, for copy_expert."""

    def __init__(self, lines: Iterator[str]):
        self._lines = lines
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, target) -> int:
        while len(self._buffer) < len(target):
            try:
                self._buffer += next(self._lines).encode()
            except StopIteration:
                break
        n = min(len(target), len(self._buffer))
        target[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n


# The columns every COPY writes, in the order its tab-separated rows give them.
ORDER_COLUMNS = [
    "id",
    "customer_id",
    "status",
    "total",
    "created_at",
    "currency",
    "updated_at",
    "deleted_at",
]
TRANSACTION_COLUMNS = [
    "id",
    "order_id",
    "status",
    "amount",
    "updated_at",
    "card_last4",
    "currency",
    "completed_at",
]


def _copy(engine: sa.Engine, table: str, columns: list[str], lines: Iterator[str]) -> None:
    if engine.dialect.name != "postgresql":
        _insert_chunks(engine, table, columns, lines)
        return
    raw = engine.raw_connection()
    try:
        with raw.cursor() as cur:
            cur.copy_expert(
                f"COPY {table} ({', '.join(columns)}) FROM STDIN WITH (FORMAT text)",
                io.BufferedReader(_CopyStream(lines), 1 << 20),
            )
        raw.commit()
    finally:
        raw.close()


INSERT_CHUNK = 5000


def _insert_chunks(engine: sa.Engine, table: str, columns: list[str], lines: Iterator[str]) -> None:
    """The COPY's tab-separated rows as multi-row INSERTs (PyMySQL's executemany rewrite)."""
    sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))})"
    raw = engine.raw_connection()
    try:
        with raw.cursor() as cur:
            chunk: list[tuple] = []
            for line in lines:
                chunk.append(
                    tuple(None if v == "\\N" else v for v in line.rstrip("\n").split("\t"))
                )
                if len(chunk) == INSERT_CHUNK:
                    cur.executemany(sql, chunk)
                    chunk = []
            if chunk:
                cur.executemany(sql, chunk)
        raw.commit()
    finally:
        raw.close()


def _analyze(engine: sa.Engine, *tables: str) -> None:
    """Fresh statistics (and, on PostgreSQL, a vacuumed visibility map) for the planner."""
    postgres = engine.dialect.name == "postgresql"
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in tables:
            conn.execute(
                sa.text(f"VACUUM ANALYZE {table}" if postgres else f"ANALYZE TABLE {table}")
            )


def _sync_sequences(engine: sa.Engine) -> None:
    """PostgreSQL's serial sequences past the ids loaded (MariaDB's AUTO_INCREMENT follows by itself)."""
    if engine.dialect.name != "postgresql":
        return
    with engine.begin() as conn:
        for table in ("orders", "transactions"):
            conn.execute(
                sa.text(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))"
                )
            )


def _ts(value: dt.datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")


def build_shop(
    engine: sa.Engine, size: ShopSize, *, seed: int = 20261125, with_indexes: bool = True
) -> dict:
    """Drop and rebuild the shop; returns counts of what was made (orphans, inconsistencies...)."""
    mapping = SchemaMapping()
    tables = shop_tables(mapping, with_indexes=False)
    md = sa.MetaData()
    md.reflect(engine)
    md.drop_all(engine)
    tables.metadata.create_all(engine)
    rng = random.Random(seed)  # noqa: S311 - benchmark data
    now = utcnow()
    span = size.days * 86400
    n_orphans = int(size.orders * size.orphan_share)
    # Every kind of inconsistency, spread through the id range.
    kinds = [
        "amount_mismatch",
        "currency_mismatch",
        "double_charge",
        "paid_but_cancelled",
        "invalid_amount",
    ]
    special: dict[int, str] = {}
    orphan_ids: set[int] = set()
    picks = rng.sample(range(1, size.orders + 1), n_orphans + size.inconsistencies)
    orphan_ids.update(picks[:n_orphans])
    for i, order_id in enumerate(picks[n_orphans:]):
        special[order_id] = kinds[i % len(kinds)]
    made = {"orphans": 0, "inconsistent": len(special), "deleted": 0, "transactions": 0}
    # One byte per order says what it is, so the transactions pass agrees with the orders pass.
    COMPLETED, PENDING, CANCELLED, DELETED_ORPHAN = 0, 1, 2, 3
    state = bytearray(size.orders + 1)
    paid_at: dict[int, tuple[str, dt.datetime]] = {}

    def orders() -> Iterator[str]:
        for order_id in range(1, size.orders + 1):
            created = now - dt.timedelta(seconds=rng.randrange(span) + 900)
            kind = special.get(order_id)
            total = (
                "-5.00" if kind == "invalid_amount" else f"{rng.randrange(500, 50000) / 100:.2f}"
            )
            deleted = "\\N"
            if order_id in orphan_ids or (kind and kind != "paid_but_cancelled"):
                status, state[order_id] = "pending", PENDING
                paid_at[order_id] = (total, created)
            elif kind == "paid_but_cancelled":
                status, state[order_id] = "cancelled", CANCELLED
                paid_at[order_id] = (total, created)
            elif rng.random() < size.deleted_share:
                # Soft-deleted look-alikes of orphans: the scan must ignore them.
                status, state[order_id], deleted = "pending", DELETED_ORPHAN, _ts(created)
                paid_at[order_id] = (total, created)
                made["deleted"] += 1
            else:
                status = rng.choices(["completed", "pending", "cancelled"], [0.95, 0.03, 0.02])[0]
                state[order_id] = {
                    "completed": COMPLETED,
                    "pending": PENDING,
                    "cancelled": CANCELLED,
                }[status]
            yield f"{order_id}\t{order_id % 50000}\t{status}\t{total}\t{_ts(created)}\tEUR\t{_ts(created)}\t{deleted}\n"

    _copy(
        engine,
        "orders",
        ORDER_COLUMNS,
        orders(),
    )

    def transactions() -> Iterator[str]:
        tx_id = 0
        for order_id in range(1, size.orders + 1):
            info = paid_at.get(order_id)
            if info is None:
                # A healthy order: completed ones have one completed payment (some after a
                # failed try); pending and cancelled ones at most a failed payment.
                amount = f"{rng.randrange(500, 50000) / 100:.2f}"
                when = now - dt.timedelta(seconds=rng.randrange(span))
                if rng.random() < size.retried_share:
                    tx_id += 1
                    yield f"{tx_id}\t{order_id}\tfailed\t{amount}\t{_ts(when)}\t4242\tEUR\t\\N\n"
                if state[order_id] == COMPLETED:
                    tx_id += 1
                    yield f"{tx_id}\t{order_id}\tcompleted\t{amount}\t{_ts(when)}\t4242\tEUR\t{_ts(when)}\n"
                continue
            kind = special.get(order_id)
            total, created = info
            paid = created + dt.timedelta(seconds=rng.randrange(60, 600))
            amount, currency = total, "EUR"
            if kind == "amount_mismatch":
                amount = f"{float(total) + 1:.2f}"
            elif kind == "currency_mismatch":
                currency = "USD"
            tx_id += 1
            made["orphans"] += order_id in orphan_ids
            yield f"{tx_id}\t{order_id}\tcompleted\t{amount}\t{_ts(paid)}\t4242\t{currency}\t{_ts(paid)}\n"
            if kind == "double_charge":
                tx_id += 1
                yield f"{tx_id}\t{order_id}\tcompleted\t{amount}\t{_ts(paid)}\t4242\t{currency}\t{_ts(paid)}\n"
        # Payments whose order row does not exist (deleted by hand, or a bad import).
        for k in range(max(size.inconsistencies // 10, 1)):
            tx_id += 1
            when = now - dt.timedelta(hours=k + 1)
            yield f"{tx_id}\t{size.orders * 10 + k}\tcompleted\t10.00\t{_ts(when)}\t4242\tEUR\t{_ts(when)}\n"
        made["transactions"] = tx_id

    _copy(
        engine,
        "transactions",
        TRANSACTION_COLUMNS,
        transactions(),
    )
    _sync_sequences(engine)
    if with_indexes:
        create_indexes(engine)
    _analyze(engine, "orders", "transactions")
    migrations.upgrade(engine, mapping.table_prefix)
    return made


INDEX_TABLES = {
    "ix_orders_status_id": "orders",
    "ix_transactions_order_status": "transactions",
    "ix_transactions_status_completed": "transactions",
    "ix_transactions_order_id": "transactions",
}
RECOMMENDED_INDEXES = {
    "ix_orders_status_id": "CREATE INDEX IF NOT EXISTS ix_orders_status_id ON orders (status, id)",
    "ix_transactions_order_status": "CREATE INDEX IF NOT EXISTS ix_transactions_order_status ON transactions (order_id, status)",
    "ix_transactions_status_completed": "CREATE INDEX IF NOT EXISTS ix_transactions_status_completed ON transactions (status, completed_at)",
}


def create_indexes(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        _drop_index(conn, "ix_transactions_order_id")  # the composite one covers it
        for ddl in RECOMMENDED_INDEXES.values():
            conn.execute(sa.text(ddl))
    _analyze(engine, "orders", "transactions")


def _drop_index(conn: sa.Connection, name: str) -> None:
    # MariaDB names an index within its table (``DROP INDEX name ON table``).
    on = "" if conn.dialect.name == "postgresql" else f" ON {INDEX_TABLES[name]}"
    conn.execute(sa.text(f"DROP INDEX IF EXISTS {name}{on}"))


# What a Laravel shop has without our advice: `foreignId('order_id')->constrained()` indexes
# the foreign key. No shop lacks it, so "without the recommended indexes" keeps it.
LARAVEL_DEFAULT_INDEX = (
    "CREATE INDEX IF NOT EXISTS ix_transactions_order_id ON transactions (order_id)"
)


def drop_indexes(engine: sa.Engine) -> None:
    """Back to the Laravel defaults: the foreign-key index only."""
    with engine.begin() as conn:
        conn.execute(sa.text(LARAVEL_DEFAULT_INDEX))
        for name in RECOMMENDED_INDEXES:
            _drop_index(conn, name)
    _analyze(engine, "orders", "transactions")


def add_orphans(engine: sa.Engine, count: int, *, seed: int = 1) -> list[int]:
    """Append ``count`` fresh orphans (paid 1-20 hours ago) with COPY; returns their ids."""
    rng = random.Random(seed)  # noqa: S311 - benchmark data
    now = utcnow()
    with engine.connect() as conn:
        first_order = conn.execute(
            sa.text("SELECT coalesce(max(id), 0) + 1 FROM orders")
        ).scalar_one()
        first_tx = conn.execute(
            sa.text("SELECT coalesce(max(id), 0) + 1 FROM transactions")
        ).scalar_one()
    ids = list(range(first_order, first_order + count))
    paid = {i: now - dt.timedelta(seconds=rng.randrange(3600, 72000)) for i in ids}
    _copy(
        engine,
        "orders",
        ORDER_COLUMNS,
        (f"{i}\t1\tpending\t19.90\t{_ts(paid[i])}\tEUR\t{_ts(paid[i])}\t\\N\n" for i in ids),
    )
    _copy(
        engine,
        "transactions",
        TRANSACTION_COLUMNS,
        (
            f"{first_tx + k}\t{i}\tcompleted\t19.90\t{_ts(paid[i])}\t4242\tEUR\t{_ts(paid[i])}\n"
            for k, i in enumerate(ids)
        ),
    )
    _sync_sequences(engine)
    # Both tables, as autovacuum would after a backlog built up over hours: with stale
    # statistics PostgreSQL took 100,000 fresh payments for 86 and planned the batch
    # claim from the payments side (876 ms a claim instead of 2 ms).
    _analyze(engine, "orders", "transactions")
    return ids


def reset_orphans(engine: sa.Engine, ids: list[int], prefix: str = "regularization_") -> None:
    """Put regularized orders back to pending and forget their events, for the next measurement.

    Only these orders' rows go: the inconsistencies an earlier run reported stay
    reported, as in a shop running every five minutes (a run that had to report
    them all again measured 0.3 s of audit writes on top of the orders).
    """
    keys = [str(i) for i in ids]
    ids_in = sa.bindparam("ids", expanding=True)
    keys_in = sa.bindparam("keys", expanding=True)
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE orders SET status = 'pending' WHERE id IN :ids").bindparams(ids_in),
            {"ids": list(ids)},
        )
        conn.execute(
            sa.text(
                f"DELETE FROM {prefix}event_deliveries WHERE event_id IN "
                f"(SELECT event_id FROM {prefix}outbox WHERE order_id IN :keys)"
            ).bindparams(keys_in),
            {"keys": keys},
        )
        for table in ("outbox", "audit", "order_attempts"):
            conn.execute(
                sa.text(f"DELETE FROM {prefix}{table} WHERE order_id IN :keys").bindparams(keys_in),
                {"keys": keys},
            )
    _analyze(engine, "orders")
