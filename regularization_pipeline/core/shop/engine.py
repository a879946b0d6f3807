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
import decimal
import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import OperationalError

from regularization_pipeline.core.errors import (
    ConfigurationError,
    DatabaseUnavailableError,
    describe_connection_failure,
)

DATABASE_URL_ENV = "REGULARIZATION_DATABASE_URL"


# One line wherever the shop's URL is missing: the CLI, a step, a sensor's or a schedule's tick.
URL_NOT_SET = (
    f"{DATABASE_URL_ENV} is not set: give the application's SQLAlchemy database URL "
    "(docs/launching.md, section The environment)"
)


def database_url_from_env() -> str:
    url = os.environ.get(DATABASE_URL_ENV)
    if not url:
        raise ConfigurationError(URL_NOT_SET)
    return url


SUPPORTED_BACKENDS = ("postgresql", "mysql", "mariadb", "sqlite")


def create_app_engine(
    url: str, *, pool_size: int = 5, pool_timeout: float = 30.0, echo: bool = False
) -> sa.Engine:
    """An engine with parameters hidden from error messages, so order data never reaches a log."""
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise ConfigurationError(f"invalid database URL: {exc}") from exc
    if parsed.get_backend_name() not in SUPPORTED_BACKENDS:
        # An oracle:// or mssql:// URL failed later on a missing driver, as an unexpected error.
        raise ConfigurationError(
            f"invalid database URL: {parsed.get_backend_name()!r} is not supported "
            "(use postgresql, mysql/mariadb or sqlite)"
        )
    if parsed.get_backend_name() in ("mysql", "mariadb") and not parsed.database:
        raise ConfigurationError("invalid database URL: a MariaDB/MySQL URL must name its database")
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
        # TimeZone pinned: a naive time compared with a timestamptz column is read in the
        # session's zone, which would otherwise be whatever the server or role says.
        kwargs["connect_args"] = {"options": "-c jit=off -c TimeZone=UTC"}
    if parsed.get_backend_name() in ("mysql", "mariadb"):
        # PostgreSQL's default. Under InnoDB's REPEATABLE READ an UPDATE scanning an index
        # range waits on every row in it, even a row held by another session that the
        # WHERE clause excludes (measured: a batch's flip waited out innodb_lock_wait_timeout
        # for an order it was not flipping); READ COMMITTED reads such rows semi-consistently
        # and moves on. Correctness rests on row locks and the compare-and-set, not snapshots.
        kwargs["isolation_level"] = "READ COMMITTED"
    try:
        engine = sa.create_engine(parsed, **kwargs)
    except (sa.exc.NoSuchModuleError, ModuleNotFoundError) as exc:
        raise ConfigurationError(
            f"invalid database URL: the driver {parsed.drivername!r} is not installed"
        ) from exc
    if engine.dialect.name == "sqlite":
        _make_sqlite_transactional(engine)
    if engine.dialect.name in ("mysql", "mariadb"):
        _collate_as_the_database(engine)
    return engine


def _collate_as_the_database(engine: sa.Engine) -> None:
    # An order id meets our tables as CAST(id AS CHAR), which takes the connection's
    # collation (the driver's utf8mb4_general_ci); our tables take the database's
    # (utf8mb4_unicode_ci where Laravel made it). Two implicit collations of one
    # character set refuse to compare ([1267] Illegal mix of collations), so the session
    # takes the database's. Of two character sets, Unicode wins on its own.
    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record):
        with dbapi_connection.cursor() as cursor:
            cursor.execute(
                "SET collation_connection = IF(@@character_set_database = "
                "@@character_set_connection, @@collation_database, @@collation_connection)"
            )


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


def insert_row(
    conn: sa.Connection,
    table: sa.Table,
    row: Mapping[str, Any],
    shared: Mapping[str, Any] | None = None,
) -> None:
    """Insert one row (``shared``: more of its columns, a decision's times) in the caller's transaction.

    A batch's rows are rendered by the database instead (:func:`json_rowset`). A time with a
    zone is stored as naive UTC on every backend, the convention of our tables.
    """
    values = {**row, **(shared or {})}
    conn.execute(table.insert(), {k: _naive_utc(v) for k, v in values.items()})


def _naive_utc(value: Any) -> Any:
    # An application column with a zone hands back aware times; COPY would drop the
    # offset and the other drivers would keep the wall time, so convert first.
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.astimezone(dt.UTC).replace(tzinfo=None)
    return value


def json_rowset(
    dialect: sa.engine.Dialect, columns: Sequence[tuple[str, Any]], param: str, name: str = "v"
) -> sa.Subquery:
    """Rows sent as one JSON array of arrays in the bound parameter ``param``, as a table.

    ``columns``: (name, SQLAlchemy type) of each position of a row. A batch's rows go as one
    ``json.dumps`` of short lists, one escaped string the database expands (PostgreSQL's
    ``json_array_elements``, MariaDB's ``JSON_TABLE``, SQLite's ``json_each``): no value is
    encoded row by row in Python. Strings come out as text, a JSON ``null`` as NULL, other
    values cast to their type (SQLite keeps text, which its column affinity converts as the
    driver's values would be).
    """
    if dialect.name == "postgresql":
        select = ", ".join(
            f"CAST(value->>{i} AS {_sql_type(dialect, kind)}) AS {column}"
            for i, (column, kind) in enumerate(columns)
        )
        sql = f"SELECT {select} FROM json_array_elements(CAST(:{param} AS json)) AS r(value)"  # noqa: S608 - our names
    elif dialect.name in ("mysql", "mariadb"):
        paths = ", ".join(
            f"{column} {_sql_type(dialect, kind)} PATH '$[{i}]'"
            for i, (column, kind) in enumerate(columns)
        )
        names = ", ".join(column for column, _ in columns)
        sql = f"SELECT {names} FROM JSON_TABLE(:{param}, '$[*]' COLUMNS ({paths})) AS r"  # noqa: S608 - our names
    else:
        select = ", ".join(
            f"json_extract(value, '$[{i}]') AS {column}" for i, (column, _) in enumerate(columns)
        )
        sql = f"SELECT {select} FROM json_each(:{param})"  # noqa: S608 - our names
    typed = [sa.column(column, kind) for column, kind in columns]
    return sa.text(sql).columns(*typed).subquery(name)


def _sql_type(dialect: sa.engine.Dialect, kind: Any) -> str:
    if isinstance(kind, sa.String):
        # Text of any length: a value too long for its column is cut by the statement itself.
        return "LONGTEXT" if dialect.name in ("mysql", "mariadb") else "TEXT"
    if isinstance(kind, sa.DateTime) and dialect.name in ("mysql", "mariadb"):
        return "DATETIME(6)"  # the fraction reaches the column, which keeps what it keeps
    return kind.compile(dialect=dialect)


def rows_as_json(rows: Sequence[Sequence[Any]]) -> str:
    """The parameter of :func:`json_rowset`: times as naive UTC text, decimals as text."""
    return json.dumps(rows, default=_json_value, ensure_ascii=False, separators=(",", ":"))


def _json_value(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return _naive_utc(value).isoformat(sep=" ", timespec="microseconds")
    if isinstance(value, decimal.Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not a rowset value")


def supports_skip_locked(engine_or_conn: sa.Engine | sa.Connection) -> bool:
    """PostgreSQL and MySQL 8 / MariaDB 10.6 have row locks with SKIP LOCKED; SQLite has neither.

    Older MySQL and MariaDB servers are refused at start (:func:`require_capabilities`).
    """
    return engine_or_conn.dialect.name in ("postgresql", "mysql", "mariadb")


# The first release of each with SELECT ... FOR UPDATE SKIP LOCKED.
SKIP_LOCKED_SINCE = {"MariaDB": (10, 6), "MySQL": (8, 0, 1)}


def skip_locked_refusal(version: str) -> str | None:
    """Why a MySQL or MariaDB server reporting ``version`` (``SELECT VERSION()``) cannot run us, or None."""
    # MariaDB may report itself to old clients as "5.5.5-10.5.23-MariaDB-log".
    text = version.removeprefix("5.5.5-")
    server = "MariaDB" if "mariadb" in text.lower() else "MySQL"
    numbers = tuple(int(n) for n in re.findall(r"\d+", text.split("-")[0])[:3])
    need = SKIP_LOCKED_SINCE[server]
    if numbers >= need:
        return None
    return (
        f"{server} {text.split('-')[0]} has no SELECT ... FOR UPDATE SKIP LOCKED, which the "
        f"pipeline needs to lock orders without waiting on another run or the application: "
        f"upgrade to {server} {'.'.join(map(str, need))} or later"
    )


def server_version(conn: sa.Connection) -> str:
    """The server's own version string (SQLite's library version)."""
    if conn.dialect.name == "sqlite":
        return conn.exec_driver_sql("SELECT sqlite_version()").scalar_one()
    if conn.dialect.name == "postgresql":
        return conn.exec_driver_sql("SHOW server_version").scalar_one()
    return conn.exec_driver_sql("SELECT VERSION()").scalar_one()


def require_capabilities(engine: sa.Engine) -> None:
    """Refuse, once at start, a server whose locking the pipeline cannot rely on."""
    if engine.dialect.name not in ("mysql", "mariadb"):
        return  # every PostgreSQL we support has SKIP LOCKED; SQLite locks the database
    with engine.connect() as conn:
        refusal = skip_locked_refusal(server_version(conn))
    if refusal:
        raise ConfigurationError(refusal)


def check_reachable(engine: sa.Engine) -> None:
    """Fail fast, with the backend named and no credentials, when the database cannot be reached."""
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except OperationalError as exc:
        raise DatabaseUnavailableError(
            f"cannot connect to the application database ({engine.url.render_as_string(hide_password=True)}): "
            f"{describe_connection_failure(exc)}"
        ) from exc
