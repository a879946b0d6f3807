"""The application's database: its engine, the schema mapping bound to it, our own tables."""

from __future__ import annotations

import dagster as dg
import sqlalchemy as sa
from pydantic import Field, PrivateAttr

from regularization_pipeline.core.shop import tables as tb
from regularization_pipeline.core.shop.binding import AppSchema, bind_schema
from regularization_pipeline.core.shop.engine import (
    DATABASE_URL_ENV,
    check_reachable,
    create_app_engine,
)
from regularization_pipeline.core.shop.mapping import (
    SCHEMA_FILE_ENV,
    SchemaMapping,
    deployment_mapping_file,
    load_mapping,
)
from regularization_pipeline.defs.resources.environment import (
    setting_from_env,
)


class AppDatabaseResource(dg.ConfigurableResource):
    """The application's database (orders, transactions) and this project's own tables in it."""

    url: str = Field(
        description="SQLAlchemy URL of the application database; set it with REGULARIZATION_DATABASE_URL."
    )
    schema_file: str | None = Field(
        default=None,
        description=(
            "YAML schema mapping (REGULARIZATION_SCHEMA_FILE); Laravel defaults when unset. "
            "Set in run config, it must be that file or one in the deployment's mappings folder."
        ),
    )
    table_prefix: str | None = Field(
        default=None,
        description="Prefix of the tables this project owns; overrides the mapping's when set.",
    )
    pool_size: int = Field(
        default=5, ge=1, le=100, description="Connections kept open (not used by SQLite)."
    )
    pool_timeout_seconds: float = Field(
        default=30.0, gt=0, le=600, description="Seconds to wait for a free connection."
    )

    _engine: sa.Engine | None = PrivateAttr(default=None)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def get_engine(self) -> sa.Engine:
        """One pooled engine per run; order data is hidden from its error messages."""
        if self._engine is None:
            self._engine = create_app_engine(
                self.url, pool_size=self.pool_size, pool_timeout=self.pool_timeout_seconds
            )
        return self._engine

    def mapping(self) -> SchemaMapping:
        path = deployment_mapping_file(self.schema_file) if self.schema_file else None
        mapping = load_mapping(path)
        if self.table_prefix is not None and self.table_prefix != mapping.table_prefix:
            mapping = SchemaMapping.parse(
                {**mapping.model_dump(), "table_prefix": self.table_prefix}, source="table_prefix"
            )
        return mapping

    def bind(self) -> AppSchema:
        """Reach the database, then check the mapping against it: both fail before anything is read."""
        engine = self.get_engine()
        check_reachable(engine)
        return bind_schema(engine, self.mapping())

    def owned_tables(self) -> tb.OwnedTables:
        return tb.owned_tables(self.mapping().table_prefix)

    @classmethod
    def from_env(cls) -> AppDatabaseResource:
        """REGULARIZATION_DATABASE_URL (read at run time) and REGULARIZATION_SCHEMA_FILE."""
        return cls(url=dg.EnvVar(DATABASE_URL_ENV), schema_file=setting_from_env(SCHEMA_FILE_ENV))
