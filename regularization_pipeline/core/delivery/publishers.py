"""Who receives each OrderCompleted: a signed webhook, in-process Python handlers, or the outbox itself.

A publisher either returns (delivered), raises :class:`RetryableDeliveryError`
(tried again later, honouring ``Retry-After``) or :class:`PermanentDeliveryError`
(dead-lettered at once). The dispatcher (``core/delivery/outbox.py``) records each
publisher's success separately, so a retry never re-runs one that succeeded.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from regularization_pipeline.core.config_files import validate_or_explain
from regularization_pipeline.core.delivery.events import (
    OrderCompleted,
)
from regularization_pipeline.core.delivery.laravel_queue import (
    DEFAULT_JOB_CLASS,
    DEFAULT_QUEUE,
    DEFAULT_REDIS_PREFIX,
    DEFAULT_TABLE,
    PHP_JOB,
    SQL_NAME,
    LaravelDatabaseQueue,
    LaravelRedisQueue,
)
from regularization_pipeline.core.delivery.rabbitmq import DEFAULT_ROUTING_KEY, RabbitMQPublisher
from regularization_pipeline.core.errors import ConfigurationError

HANDLER_ENTRY_POINT_GROUP = "regularization_pipeline.order_completed"


# --- publishers --------------------------------------------------------------------


class Publisher(Protocol):
    name: str

    def publish(self, event: OrderCompleted) -> None: ...


@dataclass
class PythonHandlersPublisher:
    """Calls in-process handlers, each recorded separately so a retry skips those that succeeded."""

    handlers: Mapping[str, Callable[[OrderCompleted], None]]
    name: str = "python"

    def sub_publishers(self) -> list[Publisher]:
        return [_HandlerPublisher(f"python:{key}", fn) for key, fn in sorted(self.handlers.items())]

    def publish(
        self, event: OrderCompleted
    ) -> None:  # pragma: no cover - expanded by the dispatcher
        for pub in self.sub_publishers():
            pub.publish(event)


@dataclass
class _HandlerPublisher:
    name: str
    fn: Callable[[OrderCompleted], None]

    def publish(self, event: OrderCompleted) -> None:
        self.fn(event)


def load_entry_point_handlers(
    group: str = HANDLER_ENTRY_POINT_GROUP,
) -> dict[str, Callable[[OrderCompleted], None]]:
    """Handlers installed under the entry-point group, by entry-point name."""
    return {ep.name: ep.load() for ep in entry_points(group=group)}


def load_named_handlers(paths: Sequence[str]) -> dict[str, Callable[[OrderCompleted], None]]:
    """Handlers named ``module:function``, by that name; a ConfigurationError names a bad one."""
    found: dict[str, Callable[[OrderCompleted], None]] = {}
    for path in paths:
        module_name, _, attribute = path.partition(":")
        try:
            handler = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError, ValueError):
            raise ConfigurationError(
                f"python handler {path!r} cannot be imported (expected module:function)"
            ) from None
        if not callable(handler):
            raise ConfigurationError(f"python handler {path!r} is not callable")
        found[path] = handler
    return found


class OutboxOnlyPublisher:
    """Delivers nothing: the application consumes the outbox table itself (docs/events.md).

    A dispatcher whose only publisher is this one claims nothing, so every row
    stays ``pending`` until the application marks it ``delivered``.
    """

    name = "outbox"
    consumes_outbox = True

    def publish(self, event: OrderCompleted) -> None:
        return None


def expand_publishers(publishers: Sequence[Any]) -> list[Publisher]:
    expanded: list[Publisher] = []
    for pub in publishers:
        expanded.extend(pub.sub_publishers() if hasattr(pub, "sub_publishers") else [pub])
    names = [p.name for p in expanded]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        # Outcomes are recorded by name: two publishers sharing one would skip each other.
        raise ConfigurationError(f"publishers: duplicate publisher name(s) {duplicates}")
    return expanded


# --- publishers from settings ------------------------------------------------------------

PublisherKind = Literal[
    "webhook", "python", "outbox", "laravel-database", "laravel-redis", "rabbitmq"
]


class PublisherSettings(BaseModel):
    """Who receives each OrderCompleted event; the Dagster resource builds these from its config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kinds: list[PublisherKind] = Field(
        default_factory=lambda: ["outbox"],
        min_length=1,
        description="'outbox' (the default: the application reads the outbox table itself; cannot "
        "be combined with the others), 'webhook' (signed HTTP POST), 'python' (handlers installed "
        "under the entry-point group or named in python_handlers), 'laravel-database' (a job row in "
        "the shop's jobs table, in the flip's own transaction), 'laravel-redis' (a job pushed to "
        "Laravel's Redis queue after commit), 'rabbitmq' (a persistent message, confirmed by the broker).",
    )
    laravel_job_class: str = Field(
        DEFAULT_JOB_CLASS,
        description="The shop's job class the Laravel worker calls, as Class@method "
        "(REGULARIZATION_LARAVEL_JOB_CLASS).",
    )
    laravel_queue: str = Field(
        DEFAULT_QUEUE,
        min_length=1,
        max_length=255,
        description="The Laravel queue name (REGULARIZATION_LARAVEL_QUEUE).",
    )
    laravel_jobs_table: str = Field(
        DEFAULT_TABLE,
        description="The shop's jobs table, in the shop's database (REGULARIZATION_LARAVEL_JOBS_TABLE).",
    )
    laravel_connection: str = Field(
        "",
        max_length=64,
        description="The name of the shop's Laravel queue connection (config/queue.php), shown in "
        "where events went; 'database' or 'redis' by default (REGULARIZATION_LARAVEL_CONNECTION).",
    )
    laravel_redis_url: SecretStr | None = Field(
        None,
        description="The shop's Redis, redis:// or rediss:// (REGULARIZATION_LARAVEL_REDIS_URL).",
    )
    laravel_redis_prefix: str = Field(
        DEFAULT_REDIS_PREFIX,
        max_length=255,
        description="The shop's Redis key prefix (config/database.php redis.options.prefix: "
        "<APP_NAME slug>_database_ by default) (REGULARIZATION_LARAVEL_REDIS_PREFIX).",
    )
    rabbitmq_url: SecretStr | None = Field(
        None, description="The broker, amqp:// or amqps:// (REGULARIZATION_RABBITMQ_URL)."
    )
    rabbitmq_exchange: str = Field(
        "",
        max_length=255,
        description="The exchange published to; empty is the default exchange "
        "(REGULARIZATION_RABBITMQ_EXCHANGE).",
    )
    rabbitmq_routing_key: str = Field(
        DEFAULT_ROUTING_KEY,
        min_length=1,
        max_length=255,
        description="The routing key (REGULARIZATION_RABBITMQ_ROUTING_KEY).",
    )
    webhook_url: str | None = Field(
        None, description="Where OrderCompleted is POSTed (http:// or https://)."
    )
    webhook_secret: SecretStr | None = Field(
        None, description="HMAC-SHA256 signing secret shared with the receiver."
    )
    webhook_secret_previous: SecretStr | None = Field(
        None,
        description="The secret being replaced, while a rotation lasts: each request is signed "
        "with both (two v1= signatures).",
    )
    connect_timeout_seconds: float = Field(3.0, gt=0, le=60, description="Webhook connect timeout.")
    read_timeout_seconds: float = Field(
        10.0, gt=0, le=300, description="Webhook read timeout (per read)."
    )
    total_timeout_seconds: float | None = Field(
        None,
        gt=0,
        le=600,
        description="Webhook total deadline per request (connect, send, receive), which a trickling "
        "receiver cannot stretch; by default the sum of the connect and read timeouts, twice each.",
    )
    handler_entry_point_group: str = Field(
        HANDLER_ENTRY_POINT_GROUP, description="Entry-point group of the python handlers."
    )
    python_handlers: list[str] = Field(
        default_factory=list,
        description="More python handlers, each as module:function (REGULARIZATION_PYTHON_HANDLERS).",
    )

    @model_validator(mode="after")
    def _coherent(self) -> PublisherSettings:
        if len(set(self.kinds)) != len(self.kinds):
            raise ValueError("kinds: each publisher kind may appear once")
        if "outbox" in self.kinds and len(self.kinds) > 1:
            raise ValueError(
                "kinds: 'outbox' means the application consumes the table itself; it cannot be combined"
            )
        if "webhook" in self.kinds:
            if not self.webhook_url or not self.webhook_url.startswith(("http://", "https://")):
                raise ValueError(
                    "webhook_url: required for the webhook publisher, as an http:// or https:// URL"
                )
            if self.webhook_secret is None or len(self.webhook_secret.get_secret_value()) < 16:
                raise ValueError(
                    "webhook_secret: required for the webhook publisher, at least 16 characters"
                )
        if "laravel-database" in self.kinds or "laravel-redis" in self.kinds:
            if not PHP_JOB.match(self.laravel_job_class):
                raise ValueError(
                    "laravel_job_class: a PHP class name such as App\\Jobs\\RegularizedOrderCompleted@handle"
                )
        if "laravel-database" in self.kinds and not SQL_NAME.match(self.laravel_jobs_table):
            raise ValueError("laravel_jobs_table: a plain table name (letters, digits, _)")
        if "laravel-redis" in self.kinds:
            url = self.laravel_redis_url.get_secret_value() if self.laravel_redis_url else ""
            if not url.startswith(("redis://", "rediss://", "unix://")):
                raise ValueError(
                    "laravel_redis_url: required for the laravel-redis publisher, as redis://host:port/db"
                )
        if "rabbitmq" in self.kinds:
            url = self.rabbitmq_url.get_secret_value() if self.rabbitmq_url else ""
            if not url.startswith(("amqp://", "amqps://")):
                raise ValueError(
                    "rabbitmq_url: required for the rabbitmq publisher, as amqp://user:password@host:5672/vhost"
                )
        previous = self.webhook_secret_previous
        if previous is not None and len(previous.get_secret_value()) < 16:
            raise ValueError("webhook_secret_previous: at least 16 characters, like webhook_secret")
        return self

    @classmethod
    def parse(cls, **values: Any) -> PublisherSettings:
        """Validate, naming every offending field (never its value) in one ConfigurationError."""
        return validate_or_explain(cls, values, "publisher settings")


def _webhook_publisher(settings: PublisherSettings) -> Publisher:
    # Its HTTP client (httpx, httpcore) is loaded only where a webhook is sent.
    from regularization_pipeline.core.delivery.webhook import WebhookPublisher

    return WebhookPublisher(
        settings.webhook_url or "",
        settings.webhook_secret.get_secret_value() if settings.webhook_secret else "",
        previous_secret=settings.webhook_secret_previous.get_secret_value()
        if settings.webhook_secret_previous
        else None,
        connect_timeout_seconds=settings.connect_timeout_seconds,
        read_timeout_seconds=settings.read_timeout_seconds,
        total_timeout_seconds=settings.total_timeout_seconds,
    )


def build_publishers(
    settings: PublisherSettings,
    handlers: Mapping[str, Callable[[OrderCompleted], None]] | None = None,
    engine: Any = None,
) -> list[Any]:
    """The publishers ``settings`` names, in order. ``handlers`` replaces the entry-point lookup (tests).

    ``engine`` is the shop's database, where the laravel-database publisher writes.
    """
    built: list[Any] = []
    for kind in settings.kinds:
        if kind == "laravel-database":
            built.append(
                LaravelDatabaseQueue(
                    engine,
                    table=settings.laravel_jobs_table,
                    queue=settings.laravel_queue,
                    job_class=settings.laravel_job_class,
                    connection=settings.laravel_connection or "database",
                )
            )
        elif kind == "laravel-redis":
            built.append(
                LaravelRedisQueue(
                    settings.laravel_redis_url.get_secret_value()
                    if settings.laravel_redis_url
                    else "",
                    queue=settings.laravel_queue,
                    prefix=settings.laravel_redis_prefix,
                    job_class=settings.laravel_job_class,
                    connection=settings.laravel_connection or "redis",
                )
            )
        elif kind == "rabbitmq":
            built.append(
                RabbitMQPublisher(
                    settings.rabbitmq_url.get_secret_value() if settings.rabbitmq_url else "",
                    exchange=settings.rabbitmq_exchange,
                    routing_key=settings.rabbitmq_routing_key,
                )
            )
        elif kind == "webhook":
            built.append(_webhook_publisher(settings))
        elif kind == "python":
            found = handlers if handlers is not None else _python_handlers(settings)
            built.append(PythonHandlersPublisher(dict(found)))
        else:
            built.append(OutboxOnlyPublisher())
    return built


def _python_handlers(settings: PublisherSettings) -> dict[str, Callable[[OrderCompleted], None]]:
    found = load_entry_point_handlers(settings.handler_entry_point_group)
    found.update(load_named_handlers(settings.python_handlers))
    if not found:
        # Delivering to nobody would mark every event delivered: lost for the application.
        raise ConfigurationError(
            "publishers: 'python' is chosen but no handler is installed under the entry-point "
            f"group {settings.handler_entry_point_group!r} nor named in python_handlers "
            "(REGULARIZATION_PYTHON_HANDLERS)"
        )
    return found


OUTBOX_ONLY = "outbox: left in the outbox table for the application to consume"


def describe_destination(publishers: Sequence[Any]) -> str:
    """Who receives the events, in words, for a run's report (``delivered_to``)."""
    expanded = expand_publishers(publishers)
    if [pub.name for pub in expanded] == [OutboxOnlyPublisher.name]:
        return OUTBOX_ONLY
    return ", ".join(pub.describe() if hasattr(pub, "describe") else pub.name for pub in expanded)


def delivery_line(destination: str, delivered: int, retried: int, dead: int) -> str:
    """What one delivery did, said so that a failure never reads as a delivery:
    ``to webhook: 0 of 6 event(s) delivered, 6 dead-lettered, 0 to retry``."""
    if destination == OUTBOX_ONLY:
        return destination
    attempted = delivered + retried + dead
    if not attempted:
        return f"to {destination}: no event was due"
    return (
        f"to {destination}: {delivered} of {attempted} event(s) delivered, "
        f"{dead} dead-lettered, {retried} to retry"
    )


def close_publishers(publishers: Sequence[Any]) -> None:
    """Release the connection pools of publishers that hold one."""
    for pub in publishers:
        close = getattr(pub, "close", None)
        if callable(close):
            close()
