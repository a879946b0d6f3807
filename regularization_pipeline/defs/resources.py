"""Resources: the application's database, the publishers of OrderCompleted events, the
payment provider, and the alert channels.

Each builds itself from the environment (``from_env``), which is how
``definitions.py`` gets them. Secrets never appear in code or run config: the
database URL, the webhook secret, the provider token and the alert channels'
addresses are read through ``dg.EnvVar`` at run time, so the UI shows the
variable's name, never its value.
"""

from __future__ import annotations

import os
from typing import Any

import dagster as dg
import sqlalchemy as sa
from pydantic import Field, PrivateAttr

from regularization_pipeline.core import tables as tb
from regularization_pipeline.core.alerting import Channel, EmailChannel, WebhookChannel
from regularization_pipeline.core.db import DATABASE_URL_ENV, check_reachable, create_app_engine
from regularization_pipeline.core.errors import ConfigurationError
from regularization_pipeline.core.gateway import GatewaySettings, GatewayVerifier
from regularization_pipeline.core.outbox import (
    DEFAULT_BUDGET_SECONDS,
    OutboxDispatcher,
    RetryPolicy,
)
from regularization_pipeline.core.publishers import (
    HANDLER_ENTRY_POINT_GROUP,
    PublisherSettings,
    build_publishers,
)
from regularization_pipeline.core.schema import (
    SCHEMA_FILE_ENV,
    AppSchema,
    SchemaMapping,
    bind_schema,
    load_mapping,
)

# Which publishers receive OrderCompleted (comma-separated: python, webhook, outbox) and the webhook's settings.
PUBLISHERS_ENV = "REGULARIZATION_PUBLISHERS"
WEBHOOK_URL_ENV = "REGULARIZATION_WEBHOOK_URL"
WEBHOOK_SECRET_ENV = "REGULARIZATION_WEBHOOK_SECRET"  # noqa: S105 - the variable's name, not a secret
DELIVERY_BUDGET_ENV = "REGULARIZATION_DELIVERY_BUDGET_SECONDS"
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


def secret_from_env(name: str) -> dg.EnvVar | None:
    """The variable, read at run time (the UI shows its name), when it is set where the code loads."""
    return dg.EnvVar(name) if os.environ.get(name) else None


def setting_from_env(name: str) -> str | None:
    """A plain setting (not a secret), or None while it is unset or empty."""
    return os.environ.get(name, "").strip() or None


def number_from_env(name: str) -> float | None:
    """A number set in the environment; None while it is empty (the resource's default then)."""
    text = setting_from_env(name)
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {text!r}") from None


class AppDatabaseResource(dg.ConfigurableResource):
    """The application's database (orders, transactions) and this project's own tables in it."""

    url: str = Field(
        description="SQLAlchemy URL of the application database; set it with REGULARIZATION_DATABASE_URL."
    )
    schema_file: str | None = Field(
        default=None,
        description="YAML schema mapping (REGULARIZATION_SCHEMA_FILE); Laravel defaults when unset.",
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
        mapping = load_mapping(self.schema_file)
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


class EventPublisherResource(dg.ConfigurableResource):
    """Who receives each OrderCompleted event, and how delivery is retried.

    Validated and built by core's PublisherSettings; the webhook secret comes
    from REGULARIZATION_WEBHOOK_SECRET through dg.EnvVar, never from run config.
    """

    publishers: list[str] = Field(
        default=["python"],
        description="Publishers by name: 'python' (handlers installed under the entry-point group), "
        "'webhook' (signed HTTP POST to webhook_url), 'outbox' (the application reads the outbox table itself).",
    )
    webhook_url: str | None = Field(
        default=None, description="Where the webhook publisher POSTs (REGULARIZATION_WEBHOOK_URL)."
    )
    webhook_secret: str | None = Field(
        default=None,
        description="HMAC signing secret of the webhook publisher (REGULARIZATION_WEBHOOK_SECRET).",
    )
    connect_timeout_seconds: float = Field(default=3.0, description="Webhook connect timeout.")
    read_timeout_seconds: float = Field(default=10.0, description="Webhook read timeout.")
    total_timeout_seconds: float | None = Field(
        default=None,
        description="Webhook total deadline per request (connect, send, receive), which a receiver "
        "trickling its answer cannot stretch; by default the connect and read timeouts, twice each. "
        "The lease must exceed it.",
    )
    delivery_budget_seconds: float = Field(
        default=DEFAULT_BUDGET_SECONDS,
        gt=0,
        le=86_400,
        description="A run's delivery step stops after this long, well inside the job's 900 s limit; "
        "what is left waits for the next run (REGULARIZATION_DELIVERY_BUDGET_SECONDS).",
    )
    handler_entry_point_group: str = Field(
        default=HANDLER_ENTRY_POINT_GROUP,
        description="Entry-point group the python handlers are loaded from.",
    )
    max_attempts: int = Field(
        default=8, ge=1, le=100, description="Delivery attempts before an event is dead-lettered."
    )
    base_delay_seconds: float = Field(
        default=30.0, ge=0, le=86_400, description="First retry delay; doubles per attempt."
    )
    max_delay_seconds: float = Field(
        default=3600.0, ge=0, le=86_400, description="Upper bound of the retry delay."
    )
    lease_seconds: float = Field(
        default=120.0,
        gt=0,
        le=86_400,
        description="How long a claimed event is reserved for this run.",
    )

    def settings(self) -> PublisherSettings:
        """Raises ConfigurationError naming the offending fields (never the secret's value)."""
        return PublisherSettings.parse(
            kinds=self.publishers,
            webhook_url=self.webhook_url,
            webhook_secret=self.webhook_secret,
            connect_timeout_seconds=self.connect_timeout_seconds,
            read_timeout_seconds=self.read_timeout_seconds,
            total_timeout_seconds=self.total_timeout_seconds,
            handler_entry_point_group=self.handler_entry_point_group,
        )

    def build_publishers(self) -> list[Any]:
        """The configured publishers; release them with core's close_publishers."""
        return build_publishers(self.settings())

    def dispatcher(
        self,
        engine: sa.Engine,
        tables: tb.OwnedTables,
        publishers: list[Any],
        owner: str | None = None,
    ) -> OutboxDispatcher:
        retry = RetryPolicy(
            max_attempts=self.max_attempts,
            base_delay_seconds=self.base_delay_seconds,
            max_delay_seconds=self.max_delay_seconds,
        )
        return OutboxDispatcher(
            engine,
            tables,
            publishers,
            retry=retry,
            lease_seconds=self.lease_seconds,
            budget_seconds=self.delivery_budget_seconds,
            owner=owner,
        )

    @classmethod
    def from_env(cls) -> EventPublisherResource:
        """REGULARIZATION_PUBLISHERS, the webhook's URL and secret (read at run time), and
        REGULARIZATION_DELIVERY_BUDGET_SECONDS."""
        names = (setting_from_env(PUBLISHERS_ENV) or "python").split(",")
        budget = number_from_env(DELIVERY_BUDGET_ENV)
        return cls(
            publishers=[name.strip() for name in names if name.strip()],
            webhook_url=secret_from_env(WEBHOOK_URL_ENV),
            webhook_secret=secret_from_env(WEBHOOK_SECRET_ENV),
            **({"delivery_budget_seconds": budget} if budget is not None else {}),
        )


class PaymentGatewayResource(dg.ConfigurableResource):
    """Optional verification of each payment with the provider's API, rate-limited; off unless base_url is set.

    The provider is asked before an order's row lock is taken. Completed lets
    the order be regularized; failed or refunded reports it as an
    inconsistency; pending, unknown or an outage leaves it for the next run.
    The token comes from REGULARIZATION_PROVIDER_TOKEN through dg.EnvVar.
    """

    base_url: str | None = Field(
        default=None,
        description="Provider API base URL (REGULARIZATION_PROVIDER_URL); verification is off when unset.",
    )
    token: str | None = Field(
        default=None, description="Bearer token (REGULARIZATION_PROVIDER_TOKEN, via dg.EnvVar)."
    )
    settings_file: str | None = Field(
        default=None,
        description="YAML file with the rest of the provider settings: path_template, status_path, the status values, "
        "max_requests_per_second, burst, timeouts, retries (REGULARIZATION_PROVIDER_SETTINGS); see docs/events.md.",
    )

    @property
    def enabled(self) -> bool:
        return bool(self.base_url)

    def settings(self) -> GatewaySettings:
        """Validated settings; raises ConfigurationError naming the field or file."""
        return GatewaySettings.load(self.base_url or "", self.settings_file)

    def verifier(self) -> GatewayVerifier | None:
        """A verifier for one run (close it when done), or None when verification is off."""
        if not self.enabled:
            return None
        settings = self.settings()
        if not self.token:
            raise ConfigurationError(
                "provider verification is on (base_url is set) but REGULARIZATION_PROVIDER_TOKEN is not"
            )
        return GatewayVerifier(settings, self.token)

    @classmethod
    def from_env(cls) -> PaymentGatewayResource:
        """REGULARIZATION_PROVIDER_URL, _TOKEN (read at run time) and _SETTINGS."""
        return cls(
            base_url=secret_from_env(PROVIDER_URL_ENV),
            token=secret_from_env(PROVIDER_TOKEN_ENV),
            settings_file=secret_from_env(PROVIDER_SETTINGS_ENV),
        )


class AlertResource(dg.ConfigurableResource):
    """Where the alert sensors send their messages, and the thresholds they alert on.

    Channels: a Slack-compatible webhook (REGULARIZATION_ALERT_WEBHOOK_URL, via
    dg.EnvVar) and e-mail over SMTP (REGULARIZATION_ALERT_SMTP_*; the password
    via dg.EnvVar). A channel without its address is off; with both off, alerts
    are only written to the sensor's log.
    """

    webhook_url: str | None = Field(
        default=None,
        description="Slack-compatible incoming webhook URL (REGULARIZATION_ALERT_WEBHOOK_URL); off when unset.",
    )
    smtp_host: str | None = Field(
        default=None,
        description="SMTP server (REGULARIZATION_ALERT_SMTP_HOST); e-mail is off when unset.",
    )
    smtp_port: int = Field(
        default=25, ge=1, le=65_535, description="SMTP port (REGULARIZATION_ALERT_SMTP_PORT)."
    )
    smtp_from: str = Field(
        default="regularization@localhost",
        description="Sender address (REGULARIZATION_ALERT_SMTP_FROM).",
    )
    smtp_to: list[str] = Field(
        default=[], description="Recipients (REGULARIZATION_ALERT_SMTP_TO, comma-separated)."
    )
    smtp_starttls: bool = Field(
        default=False,
        description="Upgrade the connection with STARTTLS (REGULARIZATION_ALERT_SMTP_STARTTLS).",
    )
    smtp_username: str | None = Field(
        default=None,
        description="SMTP login (REGULARIZATION_ALERT_SMTP_USERNAME); no login when unset.",
    )
    smtp_password: str | None = Field(
        default=None,
        description="SMTP password (REGULARIZATION_ALERT_SMTP_PASSWORD, via dg.EnvVar).",
    )
    timeout_seconds: float = Field(
        default=10.0, gt=0, le=120, description="Connect and read timeout of each channel."
    )
    stale_orphan_minutes: float = Field(
        default=60.0,
        gt=0,
        description="Alert when the oldest orphan's payment is older than this: the webhook path is likely broken.",
    )
    max_error_rate: float = Field(
        default=0.2,
        ge=0,
        le=1,
        description="Alert when a run's error_rate (failed + quarantined over processed) exceeds this.",
    )

    def channels(self) -> list[Channel]:
        """The channels that are on."""
        found: list[Channel] = []
        if self.webhook_url:
            found.append(WebhookChannel(self.webhook_url, timeout_seconds=self.timeout_seconds))
        if self.smtp_host and self.smtp_to:
            found.append(
                EmailChannel(
                    self.smtp_host,
                    self.smtp_port,
                    self.smtp_from,
                    list(self.smtp_to),
                    starttls=self.smtp_starttls,
                    username=self.smtp_username,
                    password=self.smtp_password,
                    timeout_seconds=self.timeout_seconds,
                )
            )
        return found

    @classmethod
    def from_env(cls) -> AlertResource:
        """REGULARIZATION_ALERT_*: the webhook URL (it embeds its token) and the SMTP password
        are read at run time through EnvVar; the rest is plain settings, read here."""
        thresholds = {
            "stale_orphan_minutes": number_from_env(ALERT_STALE_ORPHAN_MINUTES_ENV),
            "max_error_rate": number_from_env(ALERT_MAX_ERROR_RATE_ENV),
        }
        recipients = (setting_from_env(ALERT_SMTP_TO_ENV) or "").split(",")
        return cls(
            **{field: value for field, value in thresholds.items() if value is not None},
            webhook_url=secret_from_env(ALERT_WEBHOOK_URL_ENV),
            smtp_host=setting_from_env(ALERT_SMTP_HOST_ENV),
            smtp_port=int(setting_from_env(ALERT_SMTP_PORT_ENV) or 25),
            smtp_from=setting_from_env(ALERT_SMTP_FROM_ENV) or "regularization@localhost",
            smtp_to=[address.strip() for address in recipients if address.strip()],
            smtp_starttls=(setting_from_env(ALERT_SMTP_STARTTLS_ENV) or "").lower()
            in ("1", "true", "yes"),
            smtp_username=setting_from_env(ALERT_SMTP_USERNAME_ENV),
            smtp_password=secret_from_env(ALERT_SMTP_PASSWORD_ENV),
        )
