"""Fixtures shared by every test: real SQLite, PostgreSQL and MariaDB databases.

Each server gets a fresh database per test session (``regtest_<pid>``) that is
emptied before every test. A server that is not running makes its tests skip
with a loud reason, except under ``CI=true``, where they fail instead: CI must
prove the PostgreSQL and MariaDB paths, not skip them.
"""

from __future__ import annotations

import os
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import sqlalchemy as sa

from regularization_pipeline.core import migrations
from regularization_pipeline.core.db import create_app_engine
from regularization_pipeline.core.schema import SchemaMapping, bind_schema
from regularization_pipeline.demo.shop import ShopWriter

PG_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
MYSQL_ADMIN_URL = os.environ.get("TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
IN_CI = os.environ.get("CI", "").lower() == "true"
ALL_BACKENDS = ("sqlite", "postgresql", "mariadb")
SERVER_BACKENDS = ("postgresql", "mariadb")


def unavailable(reason: str):
    """Skip loudly on a developer machine; fail under CI=true."""
    if IN_CI:
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    warnings.warn(f"SKIPPING: {reason}", stacklevel=2)
    pytest.skip(f"SKIPPED LOUDLY: {reason}")


def _session_database(admin_url: str, backend: str) -> tuple[str | None, str | None]:
    name = f"regtest_{os.getpid()}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name}"))
            conn.execute(sa.text(f"CREATE DATABASE {name}"))
    except sa.exc.OperationalError as exc:
        return (
            None,
            f"{backend} is not reachable at {admin.url.render_as_string(hide_password=True)} ({type(exc.orig).__name__})",
        )
    finally:
        admin.dispose()
    return sa.engine.make_url(admin_url).set(database=name).render_as_string(
        hide_password=False
    ), None


def _drop_session_database(admin_url: str, url: str) -> None:
    drop_database(admin_url, sa.engine.make_url(url).database)


def drop_database(admin_url: str, name: str) -> None:
    """Drop a database, first ending the sessions still connected to it (PostgreSQL)."""
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        if admin.dialect.name == "postgresql":
            conn.execute(
                sa.text(
                    f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()"
                )
            )
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name}"))
    admin.dispose()


@contextmanager
def throwaway_postgres_database(prefix: str) -> Iterator[sa.URL]:
    """A fresh PostgreSQL database of its own (e.g. for Dagster's storage), dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f"CREATE DATABASE {name}"))
    except sa.exc.OperationalError as exc:
        unavailable(
            f"PostgreSQL is not reachable at {admin.url.render_as_string(hide_password=True)} ({type(exc.orig).__name__})"
        )
    finally:
        admin.dispose()
    try:
        yield sa.engine.make_url(PG_ADMIN_URL).set(database=name)
    finally:
        drop_database(PG_ADMIN_URL, name)


@pytest.fixture(scope="session")
def server_databases():
    """backend -> (url of this session's database, or None; reason when unavailable)."""
    found = {
        "postgresql": _session_database(PG_ADMIN_URL, "PostgreSQL"),
        "mariadb": _session_database(MYSQL_ADMIN_URL, "MariaDB"),
    }
    yield found
    for backend, admin in (("postgresql", PG_ADMIN_URL), ("mariadb", MYSQL_ADMIN_URL)):
        url = found[backend][0]
        if url:
            _drop_session_database(admin, url)


def wipe(engine: sa.Engine) -> None:
    md = sa.MetaData()
    md.reflect(engine)
    md.drop_all(engine)


def _url_for(backend: str, server_databases, tmp_path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'shop.db'}"
    url, reason = server_databases[backend]
    if url is None:
        unavailable(reason)
    return url


def _clean_url(backend: str, server_databases, tmp_path) -> str:
    url = _url_for(backend, server_databases, tmp_path)
    engine = create_app_engine(url)
    wipe(engine)
    engine.dispose()
    return url


@pytest.fixture(params=ALL_BACKENDS)
def db_url(request, server_databases, tmp_path) -> str:
    """A clean database URL, once per backend."""
    return _clean_url(request.param, server_databases, tmp_path)


@pytest.fixture(params=SERVER_BACKENDS)
def server_db_url(request, server_databases, tmp_path) -> str:
    """A clean database URL on the servers that have row locks (PostgreSQL, MariaDB)."""
    return _clean_url(request.param, server_databases, tmp_path)


def _engine(url: str):
    engine = create_app_engine(url, pool_size=25)
    yield engine
    engine.dispose()


@pytest.fixture
def engine(db_url):
    yield from _engine(db_url)


@pytest.fixture
def server_engine(server_db_url):
    yield from _engine(server_db_url)


def migrated_shop(engine: sa.Engine, mapping: SchemaMapping | None = None) -> ShopWriter:
    """The application's tables plus ours, migrated, with a writer to seed them."""
    mapping = mapping or SchemaMapping()
    writer = ShopWriter(engine, mapping).create()
    migrations.upgrade(engine, mapping.table_prefix)
    writer.schema = bind_schema(engine, mapping)
    return writer


@pytest.fixture
def shop(engine) -> ShopWriter:
    return migrated_shop(engine)


@pytest.fixture
def server_shop(server_engine) -> ShopWriter:
    return migrated_shop(server_engine)


# --- what the core tests read back: real rows in our own tables ------------------------


def no_sleep(_seconds: float) -> None:
    """Tests never wait: the rate-limit sleep is counted, not slept."""


def owned(engine_or_shop, prefix: str = "regularization_"):
    from regularization_pipeline.core.tables import owned_tables

    return owned_tables(getattr(getattr(engine_or_shop, "mapping", None), "table_prefix", prefix))


def outbox_per_order(shop: ShopWriter) -> dict[str, int]:
    """How many OrderCompleted outbox rows each order has."""
    ob = owned(shop).outbox
    with shop.engine.connect() as conn:
        rows = conn.execute(sa.select(ob.c.order_id, sa.func.count()).group_by(ob.c.order_id)).all()
    return {order_id: n for order_id, n in rows}


def audit_per_order(shop: ShopWriter, action: str) -> dict[str, int]:
    """How many audit rows of ``action`` each order has."""
    au = owned(shop).audit
    with shop.engine.connect() as conn:
        rows = conn.execute(
            sa.select(au.c.order_id, sa.func.count())
            .where(au.c.action == action)
            .group_by(au.c.order_id)
        ).all()
    return {order_id: n for order_id, n in rows}


def audit_of(shop: ShopWriter, order_id) -> list:
    """The audit rows of one order, oldest first."""
    au = owned(shop).audit
    with shop.engine.connect() as conn:
        return conn.execute(
            sa.select(au).where(au.c.order_id == str(order_id)).order_by(au.c.id)
        ).all()


def attempts_of(shop: ShopWriter, order_id):
    at = owned(shop).attempts
    with shop.engine.connect() as conn:
        return conn.execute(sa.select(at).where(at.c.order_id == str(order_id))).first()
