"""Engines for the application database, set up the same way everywhere.

SQLite's Python driver does not begin a transaction until the first write, so
a read-verify-write sequence could interleave with another writer. The engine
below makes every ``engine.begin()`` transaction ``BEGIN IMMEDIATE``: the whole
order decision holds SQLite's write lock, which is the closest SQLite has to a
row lock. A read (``engine.connect()``, whose transaction begins by itself on
the first statement) begins deferred and never takes the write lock: the checks
reading a large shop would otherwise hold off the application's own INSERTs. The
database is put in WAL mode, where a reader never blocks the writer's commit.
"""

from __future__ import annotations

import datetime as dt
import io
import os
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import OperationalError

from regularization_pipeline.core.errors import ConfigurationError, DatabaseUnavailableError

DATABASE_URL_ENV = "REGULARIZATION_DATABASE_URL"


def database_url_from_env() -> str:
    url = os.environ.get(DATABASE_URL_ENV)
    if not url:
        raise ConfigurationError(
            f"{DATABASE_URL_ENV} is not set: give the application's SQLAlchemy database URL"
        )
    return url


def create_app_engine(
    url: str, *, pool_size: int = 5, pool_timeout: float = 30.0, echo: bool = False
) -> sa.Engine:
    """An engine with parameters hidden from error messages, so order data never reaches a log."""
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise ConfigurationError(f"invalid database URL: {exc}") from exc
    kwargs: dict = {"hide_parameters": True, "echo": echo, "future": True}
    if parsed.get_backend_name() == "sqlite":
        kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
    else:
        kwargs.update(
            pool_size=pool_size, pool_timeout=pool_timeout, pool_pre_ping=True, pool_recycle=1800
        )
    if parsed.get_backend_name() == "mysql" and parsed.drivername == "mysql":
        # The project ships PyMySQL; a bare mysql:// would ask for mysqlclient.
        parsed = parsed.set(drivername="mysql+pymysql")
    if parsed.get_backend_name() == "postgresql":
        # Short OLTP statements: PostgreSQL's JIT spent ~0.8 s compiling each batch claim.
        kwargs["connect_args"] = {"options": "-c jit=off"}
    if parsed.get_backend_name() in ("mysql", "mariadb"):
        # PostgreSQL's default. Under InnoDB's REPEATABLE READ an UPDATE scanning an index
        # range waits on every row in it, even a row held by another session that the
        # WHERE clause excludes (measured: a batch's flip waited out innodb_lock_wait_timeout
        # for an order it was not flipping); READ COMMITTED reads such rows semi-consistently
        # and moves on. Correctness rests on row locks and the compare-and-set, not snapshots.
        kwargs["isolation_level"] = "READ COMMITTED"
    engine = sa.create_engine(parsed, **kwargs)
    if engine.dialect.name == "sqlite":
        _make_sqlite_transactional(engine)
    return engine


def _make_sqlite_transactional(engine: sa.Engine) -> None:
    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
        dbapi_connection.execute("PRAGMA foreign_keys=ON")
        dbapi_connection.execute("PRAGMA busy_timeout=30000")
        # In the default rollback journal a reader still holds off every writer's commit; with
        # a write-ahead log readers and the one writer go on side by side. It stays with the file.
        dbapi_connection.execute("PRAGMA journal_mode=WAL")

    engine._connection_cls = _SqliteConnection  # noqa: SLF001 - tells reads from writes below

    @sa.event.listens_for(engine, "begin")
    def _begin(conn):
        conn.exec_driver_sql("BEGIN" if conn.autobegun else "BEGIN IMMEDIATE")


class _SqliteConnection(sa.Connection):
    """A connection that knows whether its transaction began by itself (a read) or was begun."""

    autobegun = False

    def _autobegin(self) -> None:
        self.autobegun = True
        try:
            super()._autobegin()
        finally:
            self.autobegun = False


def insert_many(conn: sa.Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert rows that all have the same keys, in one round trip, inside the caller's transaction.

    On PostgreSQL through psycopg2, more than one row is a ``COPY``: for a batch's
    outbox and audit rows it takes about half the time of the multi-row ``INSERT``
    the other backends get. One row (an order decided on its own) stays an
    ``INSERT``: COPY saves nothing there, and its errors would reach the caller
    unwrapped by SQLAlchemy, unlike those the per-order path classifies
    (deadlocks, data errors, a lost connection). Every column the rows leave out takes the table's server
    default (NULL here), as with an ``INSERT``. A time with a zone is stored as
    naive UTC on every backend, the convention of our tables.
    """
    if not rows:
        return
    copy = conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg2"
    if len(rows) == 1 or not copy:
        conn.execute(table.insert(), [{k: _naive_utc(v) for k, v in row.items()} for row in rows])
        return
    columns = list(rows[0])
    quote = conn.dialect.identifier_preparer
    sql = (
        f"COPY {quote.format_table(table)} ({', '.join(quote.quote(c) for c in columns)}) "
        "FROM STDIN WITH (FORMAT csv)"
    )
    data = io.StringIO(
        "".join(",".join(_csv_field(row[c]) for c in columns) + "\n" for row in rows)
    )
    with conn.connection.dbapi_connection.cursor() as cursor:
        cursor.copy_expert(sql, data)


def _naive_utc(value: Any) -> Any:
    # An application column with a zone hands back aware times; COPY would drop the
    # offset and the other drivers would keep the wall time, so convert first.
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.astimezone(dt.UTC).replace(tzinfo=None)
    return value


def _csv_field(value: Any) -> str:
    # COPY's CSV format: an unquoted empty field is NULL; a quoted one is the text itself,
    # commas, quotes and newlines included. Numbers and times print none of those.
    if value is None:
        return ""
    if isinstance(value, str):
        return '"' + value.replace('"', '""') + '"'
    return str(_naive_utc(value))


def supports_skip_locked(engine_or_conn: sa.Engine | sa.Connection) -> bool:
    """PostgreSQL and MySQL 8 / MariaDB 10.6 have row locks with SKIP LOCKED; SQLite has neither."""
    return engine_or_conn.dialect.name in ("postgresql", "mysql", "mariadb")


def check_reachable(engine: sa.Engine) -> None:
    """Fail fast, with the backend named and no credentials, when the database cannot be reached."""
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except OperationalError as exc:
        raise DatabaseUnavailableError(
            f"cannot connect to the application database ({engine.url.render_as_string(hide_password=True)}): "
            f"{type(exc.orig).__name__}: {str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else 'no detail'}"
        ) from exc
