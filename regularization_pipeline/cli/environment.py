"""What the job builds from the environment, built here first: the shop's database with its
mapping checked, the provider verifier and the publishers. A bad setting is one line (exit 2)
before anything runs."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from regularization_pipeline.core.detection.shop_rules import require_sound_shop
from regularization_pipeline.core.shop import migrations
from regularization_pipeline.core.shop.binding import AppSchema, bind_schema
from regularization_pipeline.core.shop.engine import (
    check_reachable,
    create_app_engine,
    database_url_from_env,
)
from regularization_pipeline.core.shop.mapping import load_mapping


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
    engine = create_app_engine(database_url_from_env())
    try:
        mapping = load_mapping()
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
    close_publishers(resource.build_publishers())


def payment_verifier():
    """The provider verification the job would use, from the same variables (None when off)."""
    from regularization_pipeline.defs.resources import PaymentGatewayResource

    # The resource the code location builds, its EnvVar fields resolved as a run would.
    return PaymentGatewayResource.from_env().process_config_and_initialize().verifier()


def check_provider_settings() -> None:
    """Refuse bad provider settings now (ConfigurationError), as the job would later."""
    verifier = payment_verifier()
    if verifier is not None:
        verifier.close()
