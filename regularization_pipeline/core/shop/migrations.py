"""Apply and check the migrations of the tables this project owns."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from regularization_pipeline.core.errors import MigrationsMissingError

_SCRIPTS = Path(__file__).resolve().parents[2] / "migrations"


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_SCRIPTS))
    return cfg


def head_revision() -> str:
    return ScriptDirectory.from_config(_config()).get_current_head()


def current_revision(engine: sa.Engine, prefix: str) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(
            conn, opts={"version_table": f"{prefix}alembic_version"}
        ).get_current_revision()


def upgrade(engine: sa.Engine, prefix: str, revision: str = "head") -> str:
    """``alembic upgrade head`` for our tables under ``prefix``; returns the revision reached."""
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
