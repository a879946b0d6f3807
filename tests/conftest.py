"""Fixtures shared by every test: real SQLite, PostgreSQL and MariaDB databases.

Each server gets a fresh database per test session (``regtest_<pid>``) that is
emptied before every test. A server that is not running makes its tests skip
with a loud reason, except under ``CI=true``, where they fail instead
(``tests.support.databases.unavailable``). Helpers that are not fixtures live
in ``tests/support/``.
"""

from __future__ import annotations

import re
from pathlib import Path

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


# --- markers ------------------------------------------------------------------------------
# Folders whose tests need more than the databases: `make test-fast` leaves them out by marker.
FOLDER_MARKERS = {
    "tests/ui/": ("browser", "drives the Dagster UI in a real Chromium"),
    "tests/deploy/": ("deployment", "builds or checks the container deployment"),
}
ARCHITECTURE = Path(__file__).resolve().parent.parent / "docs" / "architecture.md"
_GUARANTEE_ROW = re.compile(
    r"^\| (?P<what>[^|]+?) \| `(?P<marker>guarantee_[a-z_]+)` \|.*\| (?P<tests>[^|]+) \|$"
)


def guarantee_evidence() -> dict[str, tuple[str, list[str]]]:
    """marker -> (the guarantee, the test files proving it), read from docs/architecture.md's
    "Where each guarantee lives": the table is the one place that says which tests are its evidence."""
    found = {}
    for line in ARCHITECTURE.read_text(encoding="utf-8").splitlines():
        row = _GUARANTEE_ROW.match(line)
        if row:
            paths = re.findall(r"`(tests/[^`]+\.py)`", row["tests"])
            found[row["marker"]] = (row["what"], paths)
    return found


def pytest_configure(config: pytest.Config) -> None:
    for marker, description in FOLDER_MARKERS.values():
        config.addinivalue_line("markers", f"{marker}: {description}")
    for marker, (what, _) in guarantee_evidence().items():
        config.addinivalue_line("markers", f"{marker}: evidence of the guarantee '{what}'")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = Path(str(config.rootpath))
    evidence = guarantee_evidence()
    for item in items:
        path = Path(str(item.path)).relative_to(root).as_posix()
        for folder, (marker, _) in FOLDER_MARKERS.items():
            if path.startswith(folder):
                item.add_marker(marker)
        for marker, (_, paths) in evidence.items():
            if path in paths:
                item.add_marker(marker)
