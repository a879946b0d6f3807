"""The alert routes (webhooks in their formats, e-mail, each taking its severities), the
thresholds and the links every message carries."""

from __future__ import annotations

from typing import Any

import dagster as dg
from pydantic import Field, field_validator

from regularization_pipeline.core.alerting.alert import SEVERITIES
from regularization_pipeline.core.alerting.formats import FORMATS, AlertLinks
from regularization_pipeline.core.alerting.incidents import (
    Channel,
    EmailChannel,
    Renotify,
    WebhookChannel,
)
from regularization_pipeline.core.alerting.routes import EMAIL, read_routes_file, webhook_of
from regularization_pipeline.core.errors import ConfigurationError
from regularization_pipeline.defs.resources.environment import (
    ReadFromEnvironment,
    boolean_from_env,
    build_leniently,
    integer_from_env,
    list_from_env,
    number_from_env,
    read_setting,
    secret_from_env,
    setting_from_env,
)

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


# More channels, each with its format and severities (core/alerting/routes.py); the severities
# the single webhook and e-mail take (comma-separated, all while unset).
ALERT_ROUTES_FILE_ENV = "REGULARIZATION_ALERT_ROUTES_FILE"


ALERT_WEBHOOK_SEVERITIES_ENV = "REGULARIZATION_ALERT_WEBHOOK_SEVERITIES"


ALERT_SMTP_SEVERITIES_ENV = "REGULARIZATION_ALERT_SMTP_SEVERITIES"


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


class AlertResource(ReadFromEnvironment, dg.ConfigurableResource):
    """Where the alert sensors send their messages, in which format, and the thresholds they alert on.

    Channels: a webhook (REGULARIZATION_ALERT_WEBHOOK_*, the URL via dg.EnvVar), e-mail over
    SMTP (REGULARIZATION_ALERT_SMTP_*, the password via dg.EnvVar) and the routes file's
    webhooks and e-mail recipients. A channel without its address is off; with none, alerts
    are only logged. A variable that cannot be read leaves its default in use, and every alert
    sensor names it on each tick.
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
    webhook_severities: list[str] = Field(
        default=list(SEVERITIES),
        description="Severities the webhook takes (REGULARIZATION_ALERT_WEBHOOK_SEVERITIES, "
        "comma-separated): e.g. critical for a pager, error,warning for a chat channel.",
    )
    routes_file: str | None = Field(
        default=None,
        description="YAML file of more routes: webhooks (name, format, address, severities) and "
        "e-mail (name, recipients, severities) (REGULARIZATION_ALERT_ROUTES_FILE; docs/monitoring.md).",
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
    smtp_severities: list[str] = Field(
        default=list(SEVERITIES),
        description="Severities e-mail takes (REGULARIZATION_ALERT_SMTP_SEVERITIES, comma-separated).",
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

    def renotify(self) -> Renotify:
        return Renotify(self.renotify_factor, self.renotify_step, self.remind_minutes * 60)

    def links(self) -> AlertLinks:
        return AlertLinks(
            environment=self.environment,
            ui_url=self.ui_url,
            runbook_url=self.runbook_url,
            routing_key=self.pagerduty_routing_key,
        )

    @field_validator("webhook_severities", "smtp_severities")
    @classmethod
    def _known_severities(cls, value: list[str]) -> list[str]:
        unknown = [v for v in value if v not in SEVERITIES]
        if unknown or not value:
            raise ValueError(f"severities are {', '.join(SEVERITIES)}; got {', '.join(value)}")
        return value

    def warnings(self) -> list[str]:
        """What is wrong with the settings: unreadable variables, and channels left off by a gap."""
        found = self.unread_variables()
        channels, off = self.routes()
        if self.smtp_host and not any(isinstance(c, EmailChannel) for c in channels):
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
        return found + off

    def channels(self) -> list[Channel]:
        """The channels that are on, each with the severities of its route."""
        return self.routes()[0]

    def routes(self) -> tuple[list[Channel], list[str]]:
        """The channels that are on, and what keeps a route of the routes file off."""
        found: list[Channel] = []
        if self.webhook_url:
            found.append(
                WebhookChannel(
                    self.webhook_url,
                    timeout_seconds=self.timeout_seconds,
                    fmt=self.webhook_format,
                    links=self.links(),
                    secret=self.webhook_secret,
                    severities=tuple(self.webhook_severities),
                )
            )
        if self.smtp_host and self.smtp_to:
            found.append(self._email(self.smtp_to, "email", self.smtp_severities))
        return self._file_routes(found)

    def _file_routes(self, found: list[Channel]) -> tuple[list[Channel], list[str]]:
        if not self.routes_file:
            return found, []
        try:
            specs = read_routes_file(self.routes_file)
        except ConfigurationError as exc:
            return found, [f"{exc}: its routes are off"]
        problems = []
        for spec in specs:
            if spec.name in {c.name for c in found}:
                problems.append(
                    f"alert route {spec.name!r} is the name of a channel set by variables: it is off"
                )
                continue
            try:
                found.append(self._route(spec))
            except ConfigurationError as exc:
                problems.append(f"{exc}: the route is off")
        return found, problems

    def _route(self, spec) -> Channel:
        """The channel of a route of the routes file; e-mail goes through the variables' server."""
        if spec.format != EMAIL:
            return webhook_of(spec, self.links(), self.timeout_seconds)
        if not self.smtp_host:
            raise ConfigurationError(f"alert route {spec.name!r}: {ALERT_SMTP_HOST_ENV} is not set")
        return self._email(spec.to, spec.name, spec.severities)

    def _email(self, recipients, name: str, severities) -> EmailChannel:
        return EmailChannel(
            self.smtp_host or "",
            self.smtp_port,
            self.smtp_from,
            list(recipients),
            starttls=self.smtp_starttls,
            username=self.smtp_username,
            password=self.smtp_password,
            timeout_seconds=self.timeout_seconds,
            name=name,
            ca_file=self.smtp_ca_file,
            links=self.links(),
            severities=tuple(severities),
        )

    @classmethod
    def read_env(cls) -> tuple[AlertResource, dict[str, str]]:
        """REGULARIZATION_ALERT_*: the URLs (they embed tokens), secrets and the SMTP password are
        read at run time through EnvVar; the rest is plain settings, read here, leniently."""
        unread: dict[str, str] = {}
        env_of = {
            **ALERT_NUMBER_ENVS,
            "smtp_port": ALERT_SMTP_PORT_ENV,
            "smtp_starttls": ALERT_SMTP_STARTTLS_ENV,
            "webhook_format": ALERT_WEBHOOK_FORMAT_ENV,
            "webhook_severities": ALERT_WEBHOOK_SEVERITIES_ENV,
            "smtp_severities": ALERT_SMTP_SEVERITIES_ENV,
        }
        fmt = setting_from_env(ALERT_WEBHOOK_FORMAT_ENV)
        values: dict[str, Any] = {
            field: read_setting(number_from_env, name, field, unread)
            for field, name in ALERT_NUMBER_ENVS.items()
        }
        values.update(
            webhook_url=secret_from_env(ALERT_WEBHOOK_URL_ENV),
            webhook_format=fmt.lower() if fmt else None,
            webhook_secret=secret_from_env(ALERT_WEBHOOK_SECRET_ENV),
            webhook_severities=[v.lower() for v in list_from_env(ALERT_WEBHOOK_SEVERITIES_ENV)]
            or None,
            routes_file=setting_from_env(ALERT_ROUTES_FILE_ENV),
            pagerduty_routing_key=secret_from_env(ALERT_PAGERDUTY_ROUTING_KEY_ENV),
            environment=setting_from_env(ALERT_ENVIRONMENT_ENV),
            ui_url=setting_from_env(ALERT_UI_URL_ENV),
            runbook_url=setting_from_env(ALERT_RUNBOOK_URL_ENV),
            heartbeat_url=secret_from_env(ALERT_HEARTBEAT_URL_ENV),
            smtp_host=setting_from_env(ALERT_SMTP_HOST_ENV),
            smtp_port=read_setting(integer_from_env, ALERT_SMTP_PORT_ENV, "smtp_port", unread),
            smtp_from=setting_from_env(ALERT_SMTP_FROM_ENV),
            smtp_to=list_from_env(ALERT_SMTP_TO_ENV),
            smtp_starttls=read_setting(
                boolean_from_env, ALERT_SMTP_STARTTLS_ENV, "smtp_starttls", unread
            ),
            smtp_ca_file=setting_from_env(ALERT_SMTP_CA_FILE_ENV),
            smtp_username=setting_from_env(ALERT_SMTP_USERNAME_ENV),
            smtp_password=secret_from_env(ALERT_SMTP_PASSWORD_ENV),
            smtp_severities=[v.lower() for v in list_from_env(ALERT_SMTP_SEVERITIES_ENV)] or None,
        )
        return build_leniently(cls, values, env_of, unread)
