"""OrderCompleted as a job on the application's own Laravel queue: the ``database`` and ``redis`` drivers.

The payload is the one ``Illuminate\\Queue\\Queue::createStringPayload`` builds for
``Queue::push('App\\Jobs\\RegularizedOrderCompleted@handle', $data)``: a plain JSON
job naming a class the shop owns, whose ``handle($job, array $data)`` the worker
calls (``Illuminate\\Queue\\Jobs\\Job::fire``). No serialized PHP object crosses
the wire, so the shop adds one small class and nothing else (docs/events.md,
docs/decisions.md).

* ``database``: the job row is inserted into the shop's ``jobs`` table *in the
  flip's own transaction* (:func:`write_in_transaction`, called by the write step);
  its ``event_deliveries`` row, and the outbox row's ``delivered`` state, commit
  with it. A job thus exists if and only if its flip committed. The dispatcher's
  :meth:`LaravelDatabaseQueue.publish` only serves events written before the
  publisher was configured (or written by a path without it): after commit, at least once.
* ``redis``: after commit, from the outbox like any other publisher: the same two
  ``RPUSH`` as ``Illuminate\\Queue\\RedisQueue::pushRaw`` (``LuaScripts::push``),
  to ``<prefix>queues:<queue>`` and its ``:notify`` list, in one Lua script.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import secrets
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from regularization_pipeline.core.delivery.events import OrderCompleted
from regularization_pipeline.core.delivery.outcomes import RetryableDeliveryError
from regularization_pipeline.core.delivery.transactional import TransactionalDelivery
from regularization_pipeline.core.errors import ConfigurationError
from regularization_pipeline.core.shop.tables import DELIVERED, OwnedTables

DEFAULT_JOB_CLASS = "App\\Jobs\\RegularizedOrderCompleted@handle"
DEFAULT_QUEUE = "default"
DEFAULT_TABLE = "jobs"
# config/database.php: env('REDIS_PREFIX', Str::slug(env('APP_NAME', 'laravel'), '_').'_database_')
DEFAULT_REDIS_PREFIX = "laravel_database_"

# A PHP class name, optionally with @method (Illuminate\Queue\Jobs\JobName::parse).
PHP_JOB = re.compile(
    r"^\\?[A-Za-z_][A-Za-z0-9_]*(\\[A-Za-z_][A-Za-z0-9_]*)*(@[A-Za-z_][A-Za-z0-9_]*)?$"
)
SQL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")

# LuaScripts::push(), verbatim: the job, then one notification for workers blocking on it.
PUSH_SCRIPT = """
-- Push the job onto the queue...
redis.call('rpush', KEYS[1], ARGV[1])
-- Push a notification onto the "notify" queue...
redis.call('rpush', KEYS[2], 1)
"""


def job_data(event: OrderCompleted) -> dict[str, Any]:
    """What the job's handle() receives as ``$data``."""
    return {
        "order_id": event.order_id,
        "transaction_id": event.transaction_id,
        "amount": event.amount,
        "currency": event.currency,
        "idempotency_key": event.idempotency_key,
        "event_id": event.event_id,
        "occurred_at": event.occurred_at,
    }


def job_payload(event: OrderCompleted, job_class: str, *, redis: bool = False) -> dict[str, Any]:
    """The payload array of Queue::createStringPayload; RedisQueue adds ``id`` and ``attempts``.

    ``uuid`` is the event's id, so a job redelivered for the same event keeps its uuid.
    """
    payload: dict[str, Any] = {
        "uuid": event.event_id,
        "displayName": job_class.split("@")[0],
        "job": job_class,
        "maxTries": None,
        "maxExceptions": None,
        "failOnTimeout": False,
        "backoff": None,
        "timeout": None,
        "retryUntil": None,
        "data": job_data(event),
    }
    if redis:
        # RedisQueue::getRandomId() is Str::random(32): letters and digits.
        alphabet = string.ascii_letters + string.digits
        payload["id"] = "".join(secrets.choice(alphabet) for _ in range(32))
        payload["attempts"] = 0
    return payload


def encode_payload(payload: dict[str, Any]) -> str:
    """json_encode($payload, JSON_UNESCAPED_UNICODE), as Queue::createPayload does."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


def jobs_table(name: str = DEFAULT_TABLE, metadata: sa.MetaData | None = None) -> sa.Table:
    """The table Laravel's ``create_jobs_table`` migration creates (``php artisan queue:table``)."""
    unsigned_int = sa.Integer().with_variant(mysql.INTEGER(unsigned=True), "mysql", "mariadb")
    return sa.Table(
        name,
        metadata if metadata is not None else sa.MetaData(),
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer, "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("queue", sa.String(255), nullable=False, index=True),
        sa.Column(
            "payload", sa.Text().with_variant(mysql.LONGTEXT, "mysql", "mariadb"), nullable=False
        ),
        sa.Column(
            "attempts",
            sa.SmallInteger().with_variant(mysql.TINYINT(unsigned=True), "mysql", "mariadb"),
            nullable=False,
        ),
        sa.Column("reserved_at", unsigned_int, nullable=True),
        sa.Column("available_at", unsigned_int, nullable=False),
        sa.Column("created_at", unsigned_int, nullable=False),
    )


def _unix(now: dt.datetime) -> int:
    """Laravel's times are unix seconds (InteractsWithTime::currentTime); ours are naive UTC."""
    return int(now.replace(tzinfo=dt.UTC).timestamp())


@dataclass
class LaravelDatabaseQueue:
    """Laravel's ``database`` queue driver: one row in the shop's ``jobs`` table per event."""

    engine: sa.Engine | None
    table: str = DEFAULT_TABLE
    queue: str = DEFAULT_QUEUE
    job_class: str = DEFAULT_JOB_CLASS
    connection: str = "database"
    name: str = "laravel-database"
    # Written in the flip's transaction: the dispatcher finds it recorded there.
    in_transaction: bool = True
    max_seconds: float = 10.0
    _jobs: sa.Table = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._jobs = jobs_table(self.table)

    def require_ready(self, engine: sa.Engine) -> None:
        """Refuse at start, in one line, a jobs table that is missing or lacks a column: every
        flip would otherwise fail on its insert, and its order be counted towards quarantine."""
        try:
            found = {c["name"] for c in sa.inspect(engine).get_columns(self.table)}
        except sa.exc.NoSuchTableError:
            found = set()
        missing = sorted({c.name for c in self._jobs.columns} - found)
        if missing:
            raise ConfigurationError(
                f"laravel-database: the shop's table {self.table!r} lacks {', '.join(missing)} "
                "(create it with `php artisan queue:table` and `php artisan migrate`)"
            )

    def job_rows(self, events: Sequence[OrderCompleted], now: dt.datetime) -> list[dict[str, Any]]:
        """DatabaseQueue::buildDatabaseRecord for each event."""
        stamp = _unix(now)
        return [
            {
                "queue": self.queue,
                "payload": encode_payload(job_payload(event, self.job_class)),
                "attempts": 0,
                "reserved_at": None,
                "available_at": stamp,
                "created_at": stamp,
            }
            for event in events
        ]

    def enqueue(
        self, conn: sa.Connection, events: Sequence[OrderCompleted], now: dt.datetime
    ) -> None:
        if events:
            conn.execute(self._jobs.insert(), self.job_rows(events, now))

    def publish(self, event: OrderCompleted) -> None:
        """After commit, for an event whose flip did not write its job (see the module's docstring)."""
        if self.engine is None:  # pragma: no cover - build_publishers always binds one
            raise RetryableDeliveryError("laravel-database publisher has no database engine")
        with self.engine.begin() as conn:
            self.enqueue(conn, [event], dt.datetime.now(dt.UTC).replace(tzinfo=None))

    def describe(self) -> str:
        return f"{self.name} (connection {self.connection}, table {self.table}, queue {self.queue})"


@dataclass
class LaravelRedisQueue:
    """Laravel's ``redis`` queue driver, from the outbox after commit (at least once)."""

    url: str
    queue: str = DEFAULT_QUEUE
    prefix: str = DEFAULT_REDIS_PREFIX
    job_class: str = DEFAULT_JOB_CLASS
    connection: str = "redis"
    socket_timeout_seconds: float = 3.0
    name: str = "laravel-redis"
    _client: Any = field(default=None, init=False, repr=False)

    @property
    def max_seconds(self) -> float:
        # Connect and one command, each bounded by the socket timeout, plus a margin.
        return 2 * self.socket_timeout_seconds + 1.0

    @property
    def key(self) -> str:
        """RedisQueue::getQueue() under the connection's prefix (phpredis OPT_PREFIX / predis prefix)."""
        return f"{self.prefix}queues:{self.queue}"

    def client(self) -> Any:
        if self._client is None:
            import redis

            self._client = redis.Redis.from_url(
                self.url,
                socket_timeout=self.socket_timeout_seconds,
                socket_connect_timeout=self.socket_timeout_seconds,
            )
        return self._client

    def publish(self, event: OrderCompleted) -> None:
        import redis

        body = encode_payload(job_payload(event, self.job_class, redis=True))
        try:
            self.client().eval(PUSH_SCRIPT, 2, self.key, f"{self.key}:notify", body)
        except redis.RedisError as exc:
            raise RetryableDeliveryError(f"redis: {type(exc).__name__}") from None

    def describe(self) -> str:
        return f"{self.name} (key {self.key})"

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


# --- the hook of the write step -------------------------------------------------------------


def write_in_transaction(
    conn: sa.Connection,
    tables: OwnedTables,
    delivery: TransactionalDelivery,
    events: Sequence[OrderCompleted],
    now: dt.datetime,
) -> None:
    """Enqueue ``events`` with every in-transaction publisher, in the caller's transaction.

    Each publisher's success is recorded in ``event_deliveries`` by the same commit, so the
    dispatcher never enqueues them again; when no other publisher remains, the outbox rows
    are ``delivered`` by that commit too (the audit, ``redeliver`` and the metrics read them).
    """
    if not delivery.publishers or not events:
        return
    for pub in delivery.publishers:
        pub.enqueue(conn, events, now)
    conn.execute(
        tables.deliveries.insert(),
        [
            {"event_id": e.event_id, "publisher": pub.name, "delivered_at": now}
            for pub in delivery.publishers
            for e in events
        ],
    )
    if delivery.completes_delivery:
        ob = tables.outbox
        conn.execute(
            ob.update()
            .where(ob.c.event_id.in_([e.event_id for e in events]))
            .values(state=DELIVERED, delivered_at=now, attempts=1, updated_at=now)
        )
