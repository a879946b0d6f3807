"""Apply and check the migrations of the tables this project owns.

Alembic is imported where it is used, not at load: the code location and a CLI usage
error do not need it, and the head revision is read from the scripts once per process.
"""

from __future__ import annotations

import functools
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


@functools.cache
def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config()).get_current_head()


def current_revision(engine: sa.Engine, prefix: str) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(
            conn, opts={"version_table": f"{prefix}alembic_version"}
        ).get_current_revision()


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
