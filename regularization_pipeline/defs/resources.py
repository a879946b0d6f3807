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
from pydantic import Field, PrivateAttr, ValidationError

from regularization_pipeline.core.alerting.formats import FORMATS, AlertLinks
from regularization_pipeline.core.alerting.incidents import (
    Channel,
    EmailChannel,
    Renotify,
    WebhookChannel,
)
from regularization_pipeline.core.delivery.outbox import (
    DEFAULT_BUDGET_SECONDS,
    OutboxDispatcher,
    RetryPolicy,
)
from regularization_pipeline.core.delivery.publishers import (
    HANDLER_ENTRY_POINT_GROUP,
    PublisherSettings,
    build_publishers,
)
from regularization_pipeline.core.errors import ConfigurationError
from regularization_pipeline.core.provider.gateway import GatewaySettings, GatewayVerifier
from regularization_pipeline.core.shop import tables as tb
from regularization_pipeline.core.shop.engine import (
    DATABASE_URL_ENV,
    check_reachable,
    create_app_engine,
)
from regularization_pipeline.core.shop.mapping import (
    SCHEMA_FILE_ENV,
    AppSchema,
    SchemaMapping,
    bind_schema,
    load_mapping,
)

# Which publishers receive OrderCompleted (comma-separated: python, webhook, outbox) and the webhook's settings.
PUBLISHERS_ENV = "REGULARIZATION_PUBLISHERS"
PYTHON_HANDLERS_ENV = "REGULARIZATION_PYTHON_HANDLERS"
WEBHOOK_URL_ENV = "REGULARIZATION_WEBHOOK_URL"
WEBHOOK_SECRET_ENV = "REGULARIZATION_WEBHOOK_SECRET"  # noqa: S105 - the variable's name, not a secret
# The secret being replaced, set only while a rotation lasts (docs/events.md, "Rotating the secret").
WEBHOOK_SECRET_PREVIOUS_ENV = "REGULARIZATION_WEBHOOK_SECRET_PREVIOUS"  # noqa: S105 - a name
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
ALERT_SMTP_CA_FILE_ENV = "REGULARIZATION_ALERT_SMTP_CA_FILE"
# The webhook's body format, signature, and what every message links to.
ALERT_WEBHOOK_FORMAT_ENV = "REGULARIZATION_ALERT_WEBHOOK_FORMAT"
ALERT_WEBHOOK_SECRET_ENV = "REGULARIZATION_ALERT_WEBHOOK_SECRET"  # noqa: S105 - the variable's name
ALERT_PAGERDUTY_ROUTING_KEY_ENV = "REGULARIZATION_ALERT_PAGERDUTY_ROUTING_KEY"
ALERT_ENVIRONMENT_ENV = "REGULARIZATION_ALERT_ENVIRONMENT"
ALERT_UI_URL_ENV = "REGULARIZATION_ALERT_UI_URL"
ALERT_RUNBOOK_URL_ENV = "REGULARIZATION_ALERT_RUNBOOK_URL"
# Pinged (GET) after each successful run seen by the watchdog: a dead-man's switch outside Dagster.
ALERT_HEARTBEAT_URL_ENV = "REGULARIZATION_ALERT_HEARTBEAT_URL"
# The alert thresholds; the resource's defaults while unset.
ALERT_STALE_ORPHAN_MINUTES_ENV = "REGULARIZATION_ALERT_STALE_ORPHAN_MINUTES"
ALERT_MAX_ERROR_RATE_ENV = "REGULARIZATION_ALERT_MAX_ERROR_RATE"
# Each numeric setting of AlertResource: field -> variable.
ALERT_NUMBER_ENVS = {
    "stale_orphan_minutes": ALERT_STALE_ORPHAN_MINUTES_ENV,
    "max_error_rate": ALERT_MAX_ERROR_RATE_ENV,
    "max_regularized_per_hour": "REGULARIZATION_ALERT_MAX_REGULARIZED_PER_HOUR",
    "max_outbox_pending": "REGULARIZATION_ALERT_MAX_OUTBOX_PENDING",
    "no_success_minutes": "REGULARIZATION_ALERT_NO_SUCCESS_MINUTES",
    "renotify_factor": "REGULARIZATION_ALERT_RENOTIFY_FACTOR",
    "renotify_step": "REGULARIZATION_ALERT_RENOTIFY_STEP",
    "remind_minutes": "REGULARIZATION_ALERT_REMIND_MINUTES",
    "timeout_seconds": "REGULARIZATION_ALERT_TIMEOUT_SECONDS",
}
# The delivery retry settings of EventPublisherResource: field -> variable.
DELIVERY_ENVS = {
    "max_attempts": "REGULARIZATION_DELIVERY_MAX_ATTEMPTS",
    "base_delay_seconds": "REGULARIZATION_DELIVERY_BASE_DELAY_SECONDS",
    "max_delay_seconds": "REGULARIZATION_DELIVERY_MAX_DELAY_SECONDS",
    "delivery_budget_seconds": DELIVERY_BUDGET_ENV,
}


def secret_from_env(name: str) -> dg.EnvVar | None:
    """The variable, read at run time (the UI shows its name), when it is set where the code loads."""
    return dg.EnvVar(name) if os.environ.get(name) else None


def setting_from_env(name: str) -> str | None:
    """A plain setting (not a secret), or None while it is unset or empty."""
    return os.environ.get(name, "").strip() or None


def list_from_env(name: str) -> list[str]:
    """A comma-separated setting as a list, empty items left out."""
    return [item.strip() for item in (setting_from_env(name) or "").split(",") if item.strip()]


def number_from_env(name: str, kind: type = float) -> Any:
    """A number (``kind`` float or int) set in the environment; None while it is empty (the
    resource's default then)."""
    text = setting_from_env(name)
    if text is None:
        return None
    try:
        return kind(text)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise ValueError(f"{name} must be {what}, got {text!r}") from None


def integer_from_env(name: str) -> int | None:
    return number_from_env(name, int)


def boolean_from_env(name: str) -> bool | None:
    """true/false (also 1/0, yes/no, on/off); None while it is empty. A typo is an error, never "off"."""
    text = setting_from_env(name)
    if text is None:
        return None
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be true or false, got {text!r}")


def build_leniently(
    cls: type[dg.ConfigurableResource],
    values: dict[str, Any],
    env_of: dict[str, str],
    problems: list[str],
) -> Any:
    """``cls(**values, problems=...)``, leaving out (with a problem naming its variable) each value
    the resource refuses: a bad setting must never stop the code location from loading."""
    values = {k: v for k, v in values.items() if v is not None}
    while True:
        try:
            return cls(**values, problems=problems)
        except ValidationError as exc:
            refused = [e for e in exc.errors() if e["loc"] and e["loc"][0] in values]
            if not refused:
                raise
            for error in refused:
                field = str(error["loc"][0])
                problems.append(
                    f"{env_of.get(field, field)}={values.pop(field, None)!r} refused "
                    f"({error['msg']})"
                )


def _read(parse, name: str, problems: list[str]) -> Any:
    """``parse(name)``; a value it refuses becomes a problem (and the default), never a crash."""
    try:
        return parse(name)
    except ValueError as exc:
        problems.append(str(exc))
        return None


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
        default=["outbox"],
        description="Publishers by name: 'outbox' (the default: the application reads the outbox "
        "table itself), 'webhook' (signed HTTP POST to webhook_url), 'python' (handlers installed "
        "under the entry-point group or named in python_handlers).",
    )
    webhook_url: str | None = Field(
        default=None, description="Where the webhook publisher POSTs (REGULARIZATION_WEBHOOK_URL)."
    )
    webhook_secret: str | None = Field(
        default=None,
        description="HMAC signing secret of the webhook publisher (REGULARIZATION_WEBHOOK_SECRET).",
    )
    webhook_secret_previous: str | None = Field(
        default=None,
        description="The secret being replaced, while a rotation lasts: each request then carries "
        "a second v1= signature (REGULARIZATION_WEBHOOK_SECRET_PREVIOUS).",
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
    python_handlers: list[str] = Field(
        default=[],
        description="More python handlers, each as module:function (REGULARIZATION_PYTHON_HANDLERS).",
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
    problems: list[str] = Field(
        default=[],
        description="Delivery variables (REGULARIZATION_DELIVERY_*) that could not be read: a run refuses to start.",
    )

    def settings(self) -> PublisherSettings:
        """Raises ConfigurationError naming the offending fields (never the secret's value)."""
        if self.problems:
            raise ConfigurationError("; ".join(self.problems))
        return PublisherSettings.parse(
            kinds=self.publishers,
            webhook_url=self.webhook_url,
            webhook_secret=self.webhook_secret,
            webhook_secret_previous=self.webhook_secret_previous,
            connect_timeout_seconds=self.connect_timeout_seconds,
            read_timeout_seconds=self.read_timeout_seconds,
            total_timeout_seconds=self.total_timeout_seconds,
            handler_entry_point_group=self.handler_entry_point_group,
            python_handlers=self.python_handlers,
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
        """REGULARIZATION_PUBLISHERS (outbox when unset), REGULARIZATION_PYTHON_HANDLERS, the
        webhook's URL and secret (read at run time), the retry settings and the
        budget, REGULARIZATION_DELIVERY_*: a bad one fails the runs, naming it."""
        problems: list[str] = []
        retry = {
            "max_attempts": _read(integer_from_env, DELIVERY_ENVS["max_attempts"], problems),
            "base_delay_seconds": _read(
                number_from_env, DELIVERY_ENVS["base_delay_seconds"], problems
            ),
            "max_delay_seconds": _read(
                number_from_env, DELIVERY_ENVS["max_delay_seconds"], problems
            ),
            "delivery_budget_seconds": _read(
                number_from_env, DELIVERY_ENVS["delivery_budget_seconds"], problems
            ),
        }
        resource = build_leniently(
            cls,
            {
                **retry,
                "publishers": list_from_env(PUBLISHERS_ENV) or ["outbox"],
                "python_handlers": list_from_env(PYTHON_HANDLERS_ENV),
                "webhook_url": secret_from_env(WEBHOOK_URL_ENV),
                "webhook_secret": secret_from_env(WEBHOOK_SECRET_ENV),
                "webhook_secret_previous": secret_from_env(WEBHOOK_SECRET_PREVIOUS_ENV),
            },
            DELIVERY_ENVS,
            problems,
        )
        return resource


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
    """Where the alert sensors send their messages, in which format, and the thresholds they alert on.

    Channels: a webhook (REGULARIZATION_ALERT_WEBHOOK_URL, via dg.EnvVar) in
    the format of REGULARIZATION_ALERT_WEBHOOK_FORMAT, signed with
    REGULARIZATION_ALERT_WEBHOOK_SECRET, and e-mail over SMTP
    (REGULARIZATION_ALERT_SMTP_*; the password via dg.EnvVar). A channel without
    its address is off; with both off, alerts are only written to the sensor's
    log. A variable that cannot be read is listed in ``problems`` and its
    default used: every alert sensor reports it on each tick.
    """

    webhook_url: str | None = Field(
        default=None,
        description="Alert webhook URL (REGULARIZATION_ALERT_WEBHOOK_URL); off when unset.",
    )
    webhook_format: str = Field(
        default="slack",
        pattern="^(" + "|".join(FORMATS) + ")$",
        description='Body of each webhook message (REGULARIZATION_ALERT_WEBHOOK_FORMAT): slack ({"text"}), '
        "json (a generic event), pagerduty (Events API v2) or alertmanager (POST /api/v2/alerts).",
    )
    webhook_secret: str | None = Field(
        default=None,
        description="HMAC secret signing each webhook body like OrderCompleted's (REGULARIZATION_ALERT_WEBHOOK_SECRET).",
    )
    pagerduty_routing_key: str | None = Field(
        default=None,
        description="PagerDuty integration key (REGULARIZATION_ALERT_PAGERDUTY_ROUTING_KEY, via dg.EnvVar).",
    )
    environment: str = Field(
        default="production",
        description="Environment name in every message and dedup key (REGULARIZATION_ALERT_ENVIRONMENT).",
    )
    ui_url: str | None = Field(
        default=None,
        description="Base URL of the Dagster UI, for the run link (REGULARIZATION_ALERT_UI_URL).",
    )
    runbook_url: str | None = Field(
        default=None,
        description="URL of docs/monitoring.md as operators read it; each alert links its section "
        "(REGULARIZATION_ALERT_RUNBOOK_URL).",
    )
    heartbeat_url: str | None = Field(
        default=None,
        description="Pinged after each successful run the watchdog sees, for an external dead-man's switch "
        "(REGULARIZATION_ALERT_HEARTBEAT_URL, via dg.EnvVar).",
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
    smtp_starttls: bool | None = Field(
        default=None,
        description="Upgrade the connection with STARTTLS (REGULARIZATION_ALERT_SMTP_STARTTLS); when unset, "
        "on exactly when a login is set. A login is never sent without it.",
    )
    smtp_ca_file: str | None = Field(
        default=None,
        description="CA bundle trusted for STARTTLS (REGULARIZATION_ALERT_SMTP_CA_FILE); the system's when unset.",
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
        description="Alert when a fixable orphan left after a run was paid longer ago than this.",
    )
    max_error_rate: float = Field(
        default=0.2,
        ge=0,
        le=1,
        description="Alert when a run's error_rate (failed + quarantined over processed) exceeds this.",
    )
    max_regularized_per_hour: float = Field(
        default=5,
        ge=0,
        description="Alert (webhook_path) when the job regularizes more orphans than this in the last hour: "
        "payment webhooks are being lost.",
    )
    max_outbox_pending: float = Field(
        default=50,
        ge=0,
        description="Alert when more OrderCompleted events than this wait in the outbox.",
    )
    no_success_minutes: float = Field(
        default=30,
        gt=0,
        description="Watchdog: alert when no run of the job has succeeded for this long.",
    )
    renotify_factor: float = Field(
        default=2.0,
        ge=0,
        description="Re-notify an open incident that grew by this factor since its last message (0: off).",
    )
    renotify_step: float = Field(
        default=10,
        ge=0,
        description="Re-notify an open incident that grew by this many since its last message (0: off).",
    )
    remind_minutes: float = Field(
        default=240,
        ge=0,
        description="Remind of an open incident this long after its last message (0: never).",
    )
    problems: list[str] = Field(
        default=[],
        description="Alert variables that could not be read (their defaults are used); every sensor reports them.",
    )

    def renotify(self) -> Renotify:
        return Renotify(self.renotify_factor, self.renotify_step, self.remind_minutes * 60)

    def links(self) -> AlertLinks:
        return AlertLinks(
            environment=self.environment,
            ui_url=self.ui_url,
            runbook_url=self.runbook_url,
            routing_key=self.pagerduty_routing_key,
        )

    def warnings(self) -> list[str]:
        """What is wrong with the settings: unreadable variables, and channels left off by a gap."""
        found = list(self.problems)
        if self.smtp_host and not self.smtp_to:
            found.append(
                f"{ALERT_SMTP_HOST_ENV} is set but {ALERT_SMTP_TO_ENV} is empty: e-mail alerts are off"
            )
        if (
            self.webhook_url
            and self.webhook_format == "pagerduty"
            and not self.pagerduty_routing_key
        ):
            found.append(
                f"{ALERT_WEBHOOK_FORMAT_ENV}=pagerduty needs {ALERT_PAGERDUTY_ROUTING_KEY_ENV}: "
                "PagerDuty will refuse every event"
            )
        return found

    def channels(self) -> list[Channel]:
        """The channels that are on."""
        found: list[Channel] = []
        if self.webhook_url:
            found.append(
                WebhookChannel(
                    self.webhook_url,
                    timeout_seconds=self.timeout_seconds,
                    fmt=self.webhook_format,
                    links=self.links(),
                    secret=self.webhook_secret,
                )
            )
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
                    ca_file=self.smtp_ca_file,
                )
            )
        return found

    @classmethod
    def from_env(cls) -> AlertResource:
        """REGULARIZATION_ALERT_*: the URLs (they embed tokens), secrets and the SMTP password are
        read at run time through EnvVar; the rest is plain settings, read here, leniently."""
        problems: list[str] = []
        env_of = {
            **ALERT_NUMBER_ENVS,
            "smtp_port": ALERT_SMTP_PORT_ENV,
            "smtp_starttls": ALERT_SMTP_STARTTLS_ENV,
            "webhook_format": ALERT_WEBHOOK_FORMAT_ENV,
        }
        fmt = setting_from_env(ALERT_WEBHOOK_FORMAT_ENV)
        values: dict[str, Any] = {
            field: _read(number_from_env, name, problems)
            for field, name in ALERT_NUMBER_ENVS.items()
        }
        values.update(
            webhook_url=secret_from_env(ALERT_WEBHOOK_URL_ENV),
            webhook_format=fmt.lower() if fmt else None,
            webhook_secret=secret_from_env(ALERT_WEBHOOK_SECRET_ENV),
            pagerduty_routing_key=secret_from_env(ALERT_PAGERDUTY_ROUTING_KEY_ENV),
            environment=setting_from_env(ALERT_ENVIRONMENT_ENV),
            ui_url=setting_from_env(ALERT_UI_URL_ENV),
            runbook_url=setting_from_env(ALERT_RUNBOOK_URL_ENV),
            heartbeat_url=secret_from_env(ALERT_HEARTBEAT_URL_ENV),
            smtp_host=setting_from_env(ALERT_SMTP_HOST_ENV),
            smtp_port=_read(integer_from_env, ALERT_SMTP_PORT_ENV, problems),
            smtp_from=setting_from_env(ALERT_SMTP_FROM_ENV),
            smtp_to=list_from_env(ALERT_SMTP_TO_ENV),
            smtp_starttls=_read(boolean_from_env, ALERT_SMTP_STARTTLS_ENV, problems),
            smtp_ca_file=setting_from_env(ALERT_SMTP_CA_FILE_ENV),
            smtp_username=setting_from_env(ALERT_SMTP_USERNAME_ENV),
            smtp_password=secret_from_env(ALERT_SMTP_PASSWORD_ENV),
        )
        return build_leniently(cls, values, env_of, problems)
