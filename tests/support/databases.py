"""Real SQLite, PostgreSQL and MariaDB databases for the tests, and the loud skip.

A server that is not running makes its tests skip with a loud reason, except
under ``CI=true``, where they fail instead: CI must prove the PostgreSQL and
MariaDB paths, not skip them.
"""

from __future__ import annotations

import os
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa

from regularization_pipeline.core.shop import migrations
from regularization_pipeline.core.shop.binding import bind_schema
from regularization_pipeline.core.shop.engine import create_app_engine
from regularization_pipeline.core.shop.mapping import SchemaMapping
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


def session_database(admin_url: str, backend: str) -> tuple[str | None, str | None]:
    name = f"regtest_{os.getpid()}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name}"))
            # As Laravel creates a MariaDB/MySQL database, not as the server defaults it.
            laravel = " CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci" * (backend == "MariaDB")
            conn.execute(sa.text(f"CREATE DATABASE {name}{laravel}"))
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


def drop_session_database(admin_url: str, url: str) -> None:
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
def throwaway_database(prefix: str, admin_url: str = PG_ADMIN_URL) -> Iterator[sa.URL]:
    """A fresh database of its own on ``admin_url``'s server (a MariaDB one as Laravel creates
    it), dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    laravel = " CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci" * (admin.dialect.name == "mysql")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f"CREATE DATABASE {name}{laravel}"))
    except sa.exc.OperationalError as exc:
        unavailable(
            f"{admin.dialect.name} is not reachable at {admin.url.render_as_string(hide_password=True)} ({type(exc.orig).__name__})"
        )
    finally:
        admin.dispose()
    try:
        yield sa.engine.make_url(admin_url).set(database=name)
    finally:
        drop_database(admin_url, name)


def throwaway_postgres_database(prefix: str):
    """A fresh PostgreSQL database of its own (e.g. for Dagster's storage), dropped afterwards."""
    return throwaway_database(prefix, PG_ADMIN_URL)


def wipe(engine: sa.Engine) -> None:
    md = sa.MetaData()
    md.reflect(engine)
    md.drop_all(engine)


def url_for(backend: str, server_databases, tmp_path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'shop.db'}"
    url, reason = server_databases[backend]
    if url is None:
        unavailable(reason)
    return url


def clean_url(backend: str, server_databases, tmp_path) -> str:
    """The backend's test database, emptied."""
    url = url_for(backend, server_databases, tmp_path)
    engine = create_app_engine(url)
    wipe(engine)
    engine.dispose()
    return url


def migrated_shop(
    engine: sa.Engine, mapping: SchemaMapping | None = None, **writer_options: Any
) -> ShopWriter:
    """The application's tables plus ours, migrated, with a writer to seed them.

    ``writer_options`` go to :class:`ShopWriter` (``now``, ``time_type``).
    """
    mapping = mapping or SchemaMapping()
    writer = ShopWriter(engine, mapping, **writer_options).create()
    migrations.upgrade(engine, mapping.table_prefix)
    writer.schema = bind_schema(engine, mapping)
    return writer
