"""Helpers the Dagster tests share: the job's selection run with dg.materialize on a real database."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from regularization_pipeline.defs import assets, checks, jobs
from regularization_pipeline.defs.resources import (
    AppDatabaseResource,
    EventPublisherResource,
    PaymentGatewayResource,
)
from regularization_pipeline.demo.handlers import DEMO_PUBLISHER_ENV
from tests.support.processes import dagster_home

ALL_ASSETS = [
    assets.app_orders,
    assets.regularized_orders,
    assets.order_completed_events,
    assets.regularization_audit,
]
ALL_CHECKS = [checks.no_orphaned_pending_orders, checks.transactions_consistent]


# The demo shop's handlers, as the demo itself registers them (the default publisher is
# the outbox, which delivers nothing).
DEMO_HANDLERS = DEMO_PUBLISHER_ENV["REGULARIZATION_PYTHON_HANDLERS"].split(",")


def instance_env(directory: Path) -> dict[str, str]:
    """The environment of Dagster's commands on a fresh instance in ``directory``: a DAGSTER_HOME
    with the repository's dagster.yaml, and the shop in ``directory``/shop.db (SQLite)."""
    home = dagster_home(directory)
    url = f"sqlite:///{directory / 'shop.db'}"
    return {**os.environ, "DAGSTER_HOME": str(home), "REGULARIZATION_DATABASE_URL": url}


def demo_publisher(**settings) -> EventPublisherResource:
    """The python publisher with the demo's handlers (plus ``settings``)."""
    kinds = settings.pop("publishers", ["python"])
    return EventPublisherResource(publishers=kinds, python_handlers=DEMO_HANDLERS, **settings)


def resources(
    db_url: str,
    publisher: EventPublisherResource | None = None,
    gateway: PaymentGatewayResource | None = None,
) -> dict:
    return {
        "app_db": AppDatabaseResource(url=db_url),
        "event_publisher": publisher or demo_publisher(),
        "payment_gateway": gateway or PaymentGatewayResource(),
    }


def materialize_all(
    db_url: str,
    instance: dg.DagsterInstance,
    raise_on_error: bool = True,
    publisher: EventPublisherResource | None = None,
    gateway: PaymentGatewayResource | None = None,
    **config,
) -> dg.ExecuteInProcessResult:
    """The job's whole selection (assets and checks), with `config` for regularized_orders."""
    return dg.materialize(
        [*ALL_ASSETS, *ALL_CHECKS],
        instance=instance,
        resources=resources(db_url, publisher, gateway),
        selection=jobs.regularize_completed_orders.selection,
        run_config={"ops": {"regularized_orders": {"config": {"sleep": 0, **config}}}},
        raise_on_error=raise_on_error,
    )


def materialization_metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    """The metadata of `asset`'s materialization, as plain values."""
    (event,) = [
        e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey(asset)
    ]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def check_evaluation(result: dg.ExecuteInProcessResult, name: str):
    (evaluation,) = [e for e in result.get_asset_check_evaluations() if e.check_name == name]
    return evaluation


def step_failure_message(result: dg.ExecuteInProcessResult, step: str) -> str:
    failures = [e for e in result.all_events if e.is_step_failure and e.step_key == step]
    assert failures, f"step {step} did not fail"
    error = failures[0].step_failure_data.error
    return error.message + "".join((c.message if c else "") for c in [error.cause])
