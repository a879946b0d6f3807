"""Fixtures shared by every test: real SQLite, PostgreSQL and MariaDB databases.

Each server gets a fresh database per test session (``regtest_<pid>``) that is
emptied before every test. A server that is not running makes its tests skip
with a loud reason, except under ``CI=true``, where they fail instead
(``tests.support.databases.unavailable``). Helpers that are not fixtures live
in ``tests/support/``.
"""

from __future__ import annotations

import pytest

from regularization_pipeline.core.shop.engine import create_app_engine
from regularization_pipeline.demo.shop import ShopWriter
from tests.support.databases import (
    ALL_BACKENDS,
    MYSQL_ADMIN_URL,
    PG_ADMIN_URL,
    SERVER_BACKENDS,
    clean_url,
    drop_session_database,
    migrated_shop,
    session_database,
)


@pytest.fixture(scope="session")
def server_databases():
    """backend -> (url of this session's database, or None; reason when unavailable)."""
    found = {
        "postgresql": session_database(PG_ADMIN_URL, "PostgreSQL"),
        "mariadb": session_database(MYSQL_ADMIN_URL, "MariaDB"),
    }
    yield found
    for backend, admin in (("postgresql", PG_ADMIN_URL), ("mariadb", MYSQL_ADMIN_URL)):
        url = found[backend][0]
        if url:
            drop_session_database(admin, url)


@pytest.fixture(params=ALL_BACKENDS)
def db_url(request, server_databases, tmp_path) -> str:
    """A clean database URL, once per backend."""
    return clean_url(request.param, server_databases, tmp_path)


@pytest.fixture(params=SERVER_BACKENDS)
def server_db_url(request, server_databases, tmp_path) -> str:
    """A clean database URL on the servers that have row locks (PostgreSQL, MariaDB)."""
    return clean_url(request.param, server_databases, tmp_path)


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


@pytest.fixture
def shop(engine) -> ShopWriter:
    return migrated_shop(engine)


@pytest.fixture
def server_shop(server_engine) -> ShopWriter:
    return migrated_shop(server_engine)
