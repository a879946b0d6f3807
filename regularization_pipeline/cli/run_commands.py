"""``run`` (the job once, like the artisan command) and ``migrate`` (our own tables)."""

from __future__ import annotations

import argparse
import os
import sys
import uuid

from regularization_pipeline.cli.arguments import DEBUG, EXIT_FAILED, EXIT_OK, run_config_from_args
from regularization_pipeline.cli.environment import (
    check_delivery_settings,
    check_provider_settings,
    database_url,
    open_database,
    require_one_shop,
    shop_mapping,
)
from regularization_pipeline.cli.launching import (
    dagster_instance,
    ensure_instance_config,
    launch_job,
    print_report,
)
from regularization_pipeline.core.errors import ConfigurationError
from regularization_pipeline.core.shop import migrations, run_lock
from regularization_pipeline.core.shop.engine import check_reachable, create_app_engine


def cmd_run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:

    config = run_config_from_args(args, parser)
    if not os.environ.get("DAGSTER_HOME"):
        raise ConfigurationError(
            "DAGSTER_HOME is not set: point it at the Dagster instance directory "
            "(`make dev` uses .dagster_home)"
        )

    # What the job would refuse under a stack trace, refused here in one line and before
    # anything runs: the URL (the code location's own default is the demo shop, so a run
    # from the command line must name it), the mapping, the server, our tables, the
    # publishers and the provider settings.
    db = open_database(parser, migrated=True)
    shop = require_one_shop()
    if shop is not None:
        config = {**shop.run, **config}  # the shop's own options, under the command line's
    run_id = str(uuid.uuid4())
    try:
        check_delivery_settings()
        check_provider_settings()
        created = ensure_instance_config(os.environ["DAGSTER_HOME"])
        if created:
            print(created, file=sys.stderr)
        # The shop's lock first: a second run answers busy without touching anything.
        with (
            run_lock.hold(db.engine, db.prefix, run_id),
            dagster_instance(os.environ["DAGSTER_HOME"]) as instance,
        ):
            log_level = "DEBUG" if DEBUG.on else "INFO"
            report = launch_job(
                instance,
                config,
                log_level=log_level,
                run_id=run_id,
                shop_lock=run_lock.lock_key(db.engine, db.prefix),
                shop=shop.name if shop is not None else None,
            )
    finally:
        db.engine.dispose()
    print_report(report)
    if not report.success:
        return EXIT_FAILED
    if report.events.get("all_deliveries_failed"):
        print("error: every OrderCompleted delivery of this run failed", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_FAILED if report.orders_failed else EXIT_OK


def cmd_migrate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    engine = create_app_engine(database_url())
    prefix = shop_mapping().table_prefix
    try:
        check_reachable(engine)
        revision = migrations.upgrade(engine, prefix)
    finally:
        engine.dispose()
    print(
        f"migrated {engine.url.render_as_string(hide_password=True)} (tables {prefix}*) to revision {revision}"
    )
    return EXIT_OK
