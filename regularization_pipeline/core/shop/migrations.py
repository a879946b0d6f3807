"""Apply and check the migrations of the tables this project owns.

Alembic is imported where it is used, not at load: the code location and a CLI usage
error do not need it. A run only checks the revision (the version table against the scripts'
head, both read without Alembic); Alembic is loaded to upgrade.
"""

from __future__ import annotations

import ast
import functools
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa

from regularization_pipeline.core.errors import MigrationsMissingError

if TYPE_CHECKING:
    from alembic.config import Config

_SCRIPTS = Path(__file__).resolve().parents[2] / "migrations"


def _config() -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_SCRIPTS))
    return cfg


# Runs in threads of one process (tests, a per-thread runner) ask for the head together; it is
# read once, by one of them.
_HEAD_LOCK = threading.Lock()


def head_revision() -> str:
    """The newest revision of our scripts, read from their ``revision`` and ``down_revision``
    lines: every run checks it, and Alembic's own reading loads Alembic and imports each script
    (tests/core/shop/test_migrations.py holds the two readings equal)."""
    with _HEAD_LOCK:
        return _read_head_revision()


@functools.cache
def _read_head_revision() -> str:
    revisions, parents = set(), set()
    for script in sorted((_SCRIPTS / "versions").glob("*.py")):
        names = _assigned(script)
        revisions.add(names.get("revision"))
        down = names.get("down_revision")
        parents.update(down if isinstance(down, tuple) else (down,))
    heads = revisions - parents - {None}
    if len(heads) == 1:
        return str(heads.pop())
    from alembic.script import ScriptDirectory  # several heads, or none: Alembic says which

    return ScriptDirectory.from_config(_config()).get_current_head()


def _assigned(script: Path) -> dict[str, object]:
    """The constants a migration script assigns at its top level (it is not imported)."""
    found = {}
    for node in ast.parse(script.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name) and isinstance(node.value, ast.Constant | ast.Tuple):
                found[target.id] = ast.literal_eval(node.value)
    return found


def current_revision(engine: sa.Engine, prefix: str) -> str | None:
    """The revision our tables are at (None: never migrated), read from Alembic's version table."""
    table = f"{prefix}alembic_version"
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table(table):
            return None
        found = conn.execute(sa.select(sa.column("version_num")).select_from(sa.table(table)))
        versions = sorted(str(row[0]) for row in found)
    return ",".join(versions) or None


def upgrade(engine: sa.Engine, prefix: str, revision: str = "head") -> str:
    """``alembic upgrade head`` for our tables under ``prefix``; returns the revision reached."""
    from alembic import command

    cfg = _config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        cfg.attributes["table_prefix"] = prefix
        command.upgrade(cfg, revision)
    return current_revision(engine, prefix)


def require_migrated(engine: sa.Engine, prefix: str) -> None:
    """Refuse to run while our tables are missing or behind, with the command that fixes it."""
    current, head = current_revision(engine, prefix), head_revision()
    if current != head:
        state = "missing" if current is None else f"at revision {current}, expected {head}"
        raise MigrationsMissingError(
            f"the pipeline's own tables ({prefix}audit, {prefix}outbox, ...) are {state}: "
            f"run `regularize-completed-orders migrate` first"
        )
