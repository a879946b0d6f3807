"""The application's database: its engine, the schema mapping bound to it, our own tables."""

from __future__ import annotations

import dagster as dg
import sqlalchemy as sa
from pydantic import Field, PrivateAttr

from regularization_pipeline.core.errors import ConfigurationError
from regularization_pipeline.core.shop import tables as tb
from regularization_pipeline.core.shop.binding import AppSchema, bind_schema
from regularization_pipeline.core.shop.engine import (
    DATABASE_URL_ENV,
    URL_NOT_SET,
    check_reachable,
    create_app_engine,
)
from regularization_pipeline.core.shop.mapping import (
    SCHEMA_FILE_ENV,
    SchemaMapping,
    deployment_mapping_file,
    load_mapping,
)
from regularization_pipeline.core.shop.shops import with_overrides
from regularization_pipeline.defs.resources.environment import (
    secret_from_env,
    setting_from_env,
)
from regularization_pipeline.defs.shops import ShopAware


class AppDatabaseResource(ShopAware, dg.ConfigurableResource):
    """The application's database (orders, transactions) and this project's own tables in it."""

    url: str | None = Field(
        description="SQLAlchemy URL of the application database; set it with REGULARIZATION_DATABASE_URL "
        "(with a shops file, each shop's database_url instead).",
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
    _shop_name: str | None = PrivateAttr(default=None)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def database_url(self) -> str:
        shop = self.shop()
        if shop is not None:
            return shop.read_database_url()
        if not self.url:
            raise ConfigurationError(URL_NOT_SET)
        return self.url

    def get_engine(self) -> sa.Engine:
        """One pooled engine per run; order data is hidden from its error messages."""
        if self._engine is None:
            self._engine = create_app_engine(
                self.database_url(),
                pool_size=self.pool_size,
                pool_timeout=self.pool_timeout_seconds,
            )
        return self._engine

    def mapping(self) -> SchemaMapping:
        shop = self.shop()
        if shop is not None:
            mapping = shop.mapping()
        else:
            mapping = load_mapping(
                deployment_mapping_file(self.schema_file) if self.schema_file else None
            )
        return with_overrides(mapping, table_prefix=self.table_prefix)

    def bind(self) -> AppSchema:
        """Reach the database, then check the mapping against it: both fail before anything is read."""
        engine = self.get_engine()
        check_reachable(engine)
        return bind_schema(engine, self.mapping())

    def owned_tables(self) -> tb.OwnedTables:
        return tb.owned_tables(self.mapping().table_prefix)

    @classmethod
    def from_env(cls) -> AppDatabaseResource:
        """REGULARIZATION_DATABASE_URL (read at run time) and REGULARIZATION_SCHEMA_FILE; with a
        shops file, each run's shop gives its own (the two variables are then optional).

        Unset where the code location loads (a bare `dagster dev`), the location still loads:
        every step, sensor and schedule that needs the shop says in one line what to set,
        instead of failing in Dagster's config processing with a traceback each tick."""
        url = secret_from_env(DATABASE_URL_ENV)
        return cls(url=url, schema_file=setting_from_env(SCHEMA_FILE_ENV))
