"""What the job builds from the environment, built here first: the shop's database with its
mapping checked, the provider verifier and the publishers. A bad setting is one line (exit 2)
before anything runs."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from regularization_pipeline.core.detection.shop_rules import require_sound_shop
from regularization_pipeline.core.errors import ConfigurationError
from regularization_pipeline.core.shop import migrations
from regularization_pipeline.core.shop.binding import AppSchema, bind_schema
from regularization_pipeline.core.shop.engine import (
    check_reachable,
    create_app_engine,
    database_url_from_env,
)
from regularization_pipeline.core.shop.mapping import SchemaMapping, load_mapping
from regularization_pipeline.core.shop.shops import (
    SHOPS_FILE_ENV as SHOPS_FILE,
)
from regularization_pipeline.core.shop.shops import (
    ShopSettings,
    shops_from_env,
)


@dataclass
class _Selected:
    """The shop ``--shop NAME`` picked from the shops file (None: the single-shop variables)."""

    shop: ShopSettings | None = None


SELECTED = _Selected()


def select_shop(name: str | None) -> ShopSettings | None:
    """The shop every command of this process works on; refuses (exit 2) an unknown one, and a
    shops file without --shop where the command needs one shop."""
    shops = shops_from_env()
    if name is None:
        SELECTED.shop = None
        return None
    if shops is None:
        raise ConfigurationError(f"--shop {name} needs {SHOPS_FILE}: no shops file is set")
    if name not in shops:
        raise ConfigurationError(
            f"shop {name!r} is not in {SHOPS_FILE} (its shops: {', '.join(shops)})"
        )
    SELECTED.shop = shops[name]
    return SELECTED.shop


def require_one_shop() -> ShopSettings | None:
    """The selected shop; with a shops file, refuses to guess which."""
    if SELECTED.shop is None:
        shops = shops_from_env()
        if shops is not None:
            raise ConfigurationError(
                f"{SHOPS_FILE} lists shops {', '.join(shops)}: pick one with --shop NAME"
            )
    return SELECTED.shop


def database_url() -> str:
    shop = require_one_shop()
    return shop.read_database_url() if shop is not None else database_url_from_env()


def shop_mapping() -> SchemaMapping:
    shop = require_one_shop()
    return shop.mapping() if shop is not None else load_mapping()


@dataclass
class OpenDatabase:
    engine: Any
    schema: AppSchema
    prefix: str

    def tables(self):
        from regularization_pipeline.core.shop.tables import owned_tables

        return owned_tables(self.prefix)


def open_database(
    parser: argparse.ArgumentParser, *, migrated: bool = False, checked: bool = True
) -> OpenDatabase:
    """The application database with its mapping checked (and our tables, when ``migrated``).

    ``checked``: the mapping is also read against the shop's rows as every run reads it
    (:func:`~regularization_pipeline.core.detection.shop_rules.require_sound_shop`); only
    ``doctor``, which reports those findings itself, opens the database without.

    Raises the RegularizationError that names what is wrong (main() makes it exit 2).
    """
    engine = create_app_engine(database_url())
    try:
        mapping = shop_mapping()
        check_reachable(engine)
        schema = bind_schema(engine, mapping)
        if migrated:
            migrations.require_migrated(engine, mapping.table_prefix)
        if checked:
            require_sound_shop(engine, schema)
    except BaseException:
        engine.dispose()
        raise
    return OpenDatabase(engine, schema, mapping.table_prefix)


def read_only(
    parser: argparse.ArgumentParser,
    query: Callable[[Any, AppSchema], list],
    *,
    checked: bool = True,
) -> list:
    db = open_database(parser, checked=checked)
    try:
        with db.engine.connect() as conn:
            return query(conn, db.schema)
    finally:
        db.engine.dispose()


def check_delivery_settings() -> None:
    """The publishers the job would build, built and closed: a bad choice is refused now."""
    from regularization_pipeline.core.delivery.publishers import close_publishers
    from regularization_pipeline.defs.resources import EventPublisherResource

    resource = EventPublisherResource.from_env().process_config_and_initialize()
    resource.for_shop(_selected_name())
    close_publishers(resource.build_publishers())


def payment_verifier():
    """The provider verification the job would use, from the same variables (None when off)."""
    from regularization_pipeline.defs.resources import PaymentGatewayResource

    # The resource the code location builds, its EnvVar fields resolved as a run would.
    resource = PaymentGatewayResource.from_env().process_config_and_initialize()
    return resource.for_shop(_selected_name()).verifier()


def _selected_name() -> str | None:
    return SELECTED.shop.name if SELECTED.shop is not None else None


def check_provider_settings() -> None:
    """Refuse bad provider settings now (ConfigurationError), as the job would later."""
    verifier = payment_verifier()
    if verifier is not None:
        verifier.close()
