"""The code location: every asset, check, job, schedule, sensor and resource, assembled once.

Each resource builds itself from the environment (``from_env``, one module each in
``defs/resources/``, secrets through ``dg.EnvVar``); docs/ lists the variables.
"""

import dagster as dg

from regularization_pipeline.defs import (
    alerts,
    assets,
    check_jobs,
    checks,
    delivery_jobs,
    jobs,
    operator_jobs,
)
from regularization_pipeline.defs.resources import (
    AlertResource,
    AppDatabaseResource,
    EventPublisherResource,
    PaymentGatewayResource,
)
from regularization_pipeline.logging_json import quiet_http_client_loggers

# Every Dagster process loads this module: no httpx request line (a URL with its token) is logged.
quiet_http_client_loggers()

defs = dg.Definitions(
    assets=[
        assets.app_orders,
        assets.regularized_orders,
        assets.order_completed_events,
        assets.regularization_audit,
    ],
    asset_checks=[checks.no_orphaned_pending_orders, checks.transactions_consistent],
    jobs=[
        jobs.regularize_completed_orders,
        delivery_jobs.deliver_order_completed_events,
        check_jobs.check_app_orders,
        *operator_jobs.OPERATOR_JOBS,
        *alerts.ALERT_JOBS,
    ],
    schedules=[
        jobs.regularize_completed_orders_every_5_minutes,
        delivery_jobs.deliver_order_completed_events_every_minute,
        check_jobs.check_app_orders_every_2_minutes,
    ],
    sensors=[
        jobs.regularize_on_orphan_alert,
        check_jobs.check_app_orders_after_each_run,
        *alerts.ALERT_SENSORS,
    ],
    resources={
        "alerts": AlertResource.from_env(),
        "app_db": AppDatabaseResource.from_env(),
        "event_publisher": EventPublisherResource.from_env(),
        "payment_gateway": PaymentGatewayResource.from_env(),
    },
)
