"""The code location: every asset, check, job, schedule, sensor and resource, assembled once."""

from __future__ import annotations

import os

import dagster as dg

from regularization_pipeline.core.db import DATABASE_URL_ENV
from regularization_pipeline.core.schema import SCHEMA_FILE_ENV
from regularization_pipeline.defs import alerts, assets, checks, jobs, operator_jobs
from regularization_pipeline.defs.resources import (
    AlertResource,
    AppDatabaseResource,
    EventPublisherResource,
    PaymentGatewayResource,
)
from regularization_pipeline.demo.handlers import DEMO_DATABASE_URL

# Which publishers receive OrderCompleted (comma-separated: python, webhook, outbox) and the webhook's settings.
PUBLISHERS_ENV = "REGULARIZATION_PUBLISHERS"
WEBHOOK_URL_ENV = "REGULARIZATION_WEBHOOK_URL"
WEBHOOK_SECRET_ENV = "REGULARIZATION_WEBHOOK_SECRET"  # noqa: S105 - the variable's name, not a secret
# Optional verification with the payment provider's API.
PROVIDER_URL_ENV = "REGULARIZATION_PROVIDER_URL"
PROVIDER_TOKEN_ENV = "REGULARIZATION_PROVIDER_TOKEN"  # noqa: S105 - the variable's name, not a secret
PROVIDER_SETTINGS_ENV = "REGULARIZATION_PROVIDER_SETTINGS"
# Alert channels (docs/monitoring.md): each is off while its address is unset; alerts are then only logged.
ALERT_WEBHOOK_URL_ENV = "REGULARIZATION_ALERT_WEBHOOK_URL"
ALERT_SMTP_HOST_ENV = "REGULARIZATION_ALERT_SMTP_HOST"
ALERT_SMTP_PORT_ENV = "REGULARIZATION_ALERT_SMTP_PORT"
ALERT_SMTP_FROM_ENV = "REGULARIZATION_ALERT_SMTP_FROM"
ALERT_SMTP_TO_ENV = "REGULARIZATION_ALERT_SMTP_TO"
ALERT_SMTP_STARTTLS_ENV = "REGULARIZATION_ALERT_SMTP_STARTTLS"
ALERT_SMTP_USERNAME_ENV = "REGULARIZATION_ALERT_SMTP_USERNAME"
ALERT_SMTP_PASSWORD_ENV = "REGULARIZATION_ALERT_SMTP_PASSWORD"  # noqa: S105 - the variable's name, not a secret
# The alert thresholds; the resource's defaults while unset.
ALERT_STALE_ORPHAN_MINUTES_ENV = "REGULARIZATION_ALERT_STALE_ORPHAN_MINUTES"
ALERT_MAX_ERROR_RATE_ENV = "REGULARIZATION_ALERT_MAX_ERROR_RATE"


def _database_url() -> str | dg.EnvVar:
    # The URL may carry a password: read it at run time through EnvVar so it is
    # never stored in run config or shown in the UI. Without it, the embedded
    # demo shop (`make demo`) is the default, so `dagster dev` works on a fresh clone.
    return dg.EnvVar(DATABASE_URL_ENV) if os.environ.get(DATABASE_URL_ENV) else DEMO_DATABASE_URL


def _from_env(name: str) -> dg.EnvVar | None:
    """The variable, read at run time, when it is set where the code location loads."""
    return dg.EnvVar(name) if os.environ.get(name) else None


def _number_from_env(name: str) -> float | None:
    """A threshold set in the environment; None while it is empty (the resource's default then)."""
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {text!r}") from None


def _alert_resource() -> AlertResource:
    # The webhook URL embeds its token and the password is a secret: both through EnvVar,
    # so the UI shows the variable names. The rest is plain settings, read here.
    env = os.environ
    thresholds = {
        "stale_orphan_minutes": _number_from_env(ALERT_STALE_ORPHAN_MINUTES_ENV),
        "max_error_rate": _number_from_env(ALERT_MAX_ERROR_RATE_ENV),
    }
    return AlertResource(
        **{field: value for field, value in thresholds.items() if value is not None},
        webhook_url=_from_env(ALERT_WEBHOOK_URL_ENV),
        smtp_host=env.get(ALERT_SMTP_HOST_ENV) or None,
        smtp_port=int(env.get(ALERT_SMTP_PORT_ENV) or 25),
        smtp_from=env.get(ALERT_SMTP_FROM_ENV) or "regularization@localhost",
        smtp_to=[a.strip() for a in env.get(ALERT_SMTP_TO_ENV, "").split(",") if a.strip()],
        smtp_starttls=env.get(ALERT_SMTP_STARTTLS_ENV, "").lower() in ("1", "true", "yes"),
        smtp_username=env.get(ALERT_SMTP_USERNAME_ENV) or None,
        smtp_password=_from_env(ALERT_SMTP_PASSWORD_ENV),
    )


defs = dg.Definitions(
    assets=[
        assets.app_orders,
        assets.regularized_orders,
        assets.order_completed_events,
        assets.regularization_audit,
    ],
    asset_checks=[checks.no_orphaned_pending_orders, checks.transactions_consistent],
    jobs=[jobs.regularize_completed_orders, *operator_jobs.OPERATOR_JOBS],
    schedules=[jobs.regularize_completed_orders_every_5_minutes],
    sensors=[jobs.regularize_on_orphan_alert, *alerts.ALERT_SENSORS],
    resources={
        "alerts": _alert_resource(),
        "app_db": AppDatabaseResource(url=_database_url(), schema_file=_from_env(SCHEMA_FILE_ENV)),
        "event_publisher": EventPublisherResource(
            publishers=[
                name.strip()
                for name in os.environ.get(PUBLISHERS_ENV, "python").split(",")
                if name.strip()
            ],
            webhook_url=_from_env(WEBHOOK_URL_ENV),
            webhook_secret=_from_env(WEBHOOK_SECRET_ENV),
        ),
        "payment_gateway": PaymentGatewayResource(
            base_url=_from_env(PROVIDER_URL_ENV),
            token=_from_env(PROVIDER_TOKEN_ENV),
            settings_file=_from_env(PROVIDER_SETTINGS_ENV),
        ),
    },
)
