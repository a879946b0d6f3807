"""Who receives OrderCompleted (webhook, Python handlers, Laravel's queue, the outbox alone) and
how delivery retries: the publishers and the outbox dispatcher."""

from __future__ import annotations

from typing import Any

import dagster as dg
import sqlalchemy as sa
from pydantic import Field, PrivateAttr

from regularization_pipeline.core.delivery.laravel_queue import (
    DEFAULT_JOB_CLASS,
    DEFAULT_QUEUE,
    DEFAULT_REDIS_PREFIX,
    DEFAULT_TABLE,
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
from regularization_pipeline.core.shop import tables as tb
from regularization_pipeline.defs.resources.environment import (
    build_leniently,
    integer_from_env,
    list_from_env,
    number_from_env,
    read_setting,
    secret_from_env,
    setting_from_env,
)
from regularization_pipeline.defs.shops import ShopAware

# Which publishers receive OrderCompleted (comma-separated: python, webhook, outbox) and the webhook's settings.
PUBLISHERS_ENV = "REGULARIZATION_PUBLISHERS"


PYTHON_HANDLERS_ENV = "REGULARIZATION_PYTHON_HANDLERS"


WEBHOOK_URL_ENV = "REGULARIZATION_WEBHOOK_URL"


WEBHOOK_SECRET_ENV = "REGULARIZATION_WEBHOOK_SECRET"  # noqa: S105 - the variable's name, not a secret


# The secret being replaced, set only while a rotation lasts (docs/events.md, "Rotating the secret").
WEBHOOK_SECRET_PREVIOUS_ENV = "REGULARIZATION_WEBHOOK_SECRET_PREVIOUS"  # noqa: S105 - a name


# The Laravel queue publishers (laravel-database, laravel-redis): field -> variable.
LARAVEL_ENVS = {
    "laravel_job_class": "REGULARIZATION_LARAVEL_JOB_CLASS",
    "laravel_queue": "REGULARIZATION_LARAVEL_QUEUE",
    "laravel_jobs_table": "REGULARIZATION_LARAVEL_JOBS_TABLE",
    "laravel_connection": "REGULARIZATION_LARAVEL_CONNECTION",
    "laravel_redis_prefix": "REGULARIZATION_LARAVEL_REDIS_PREFIX",
}


# The broker of the rabbitmq publisher (its URL holds the password: read at run time).
RABBITMQ_URL_ENV = "REGULARIZATION_RABBITMQ_URL"


RABBITMQ_ENVS = {
    "rabbitmq_exchange": "REGULARIZATION_RABBITMQ_EXCHANGE",
    "rabbitmq_routing_key": "REGULARIZATION_RABBITMQ_ROUTING_KEY",
}


# The shop's Redis for laravel-redis (it may carry a password: read at run time).
LARAVEL_REDIS_URL_ENV = "REGULARIZATION_LARAVEL_REDIS_URL"


DELIVERY_BUDGET_ENV = "REGULARIZATION_DELIVERY_BUDGET_SECONDS"


# The delivery retry settings of EventPublisherResource: field -> variable.
DELIVERY_ENVS = {
    "max_attempts": "REGULARIZATION_DELIVERY_MAX_ATTEMPTS",
    "base_delay_seconds": "REGULARIZATION_DELIVERY_BASE_DELAY_SECONDS",
    "max_delay_seconds": "REGULARIZATION_DELIVERY_MAX_DELAY_SECONDS",
    "delivery_budget_seconds": DELIVERY_BUDGET_ENV,
}


class EventPublisherResource(ShopAware, dg.ConfigurableResource):
    """Who receives each OrderCompleted event, and how delivery is retried.

    Validated and built by core's PublisherSettings; the webhook secret comes
    from REGULARIZATION_WEBHOOK_SECRET through dg.EnvVar, never from run config.
    """

    publishers: list[str] = Field(
        default=["outbox"],
        description="Publishers by name: 'outbox' (the default: the application reads the outbox "
        "table itself), 'webhook' (signed HTTP POST to webhook_url), 'python' (handlers installed "
        "under the entry-point group or named in python_handlers), 'laravel-database' (a job in "
        "the shop's jobs table, in the flip's transaction), 'laravel-redis' (Laravel's Redis queue), "
        "'rabbitmq' (AMQP with publisher confirms).",
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
    laravel_job_class: str = Field(
        default=DEFAULT_JOB_CLASS,
        description="The shop's job class the Laravel worker calls, Class@method "
        "(REGULARIZATION_LARAVEL_JOB_CLASS).",
    )
    laravel_queue: str = Field(
        default=DEFAULT_QUEUE, description="The Laravel queue name (REGULARIZATION_LARAVEL_QUEUE)."
    )
    laravel_jobs_table: str = Field(
        default=DEFAULT_TABLE,
        description="The shop's jobs table, for laravel-database (REGULARIZATION_LARAVEL_JOBS_TABLE).",
    )
    laravel_connection: str = Field(
        default="",
        description="The shop's Laravel queue connection name, shown in where events went "
        "(REGULARIZATION_LARAVEL_CONNECTION).",
    )
    laravel_redis_url: str | None = Field(
        default=None,
        description="The shop's Redis for laravel-redis, redis://host:port/db "
        "(REGULARIZATION_LARAVEL_REDIS_URL).",
    )
    laravel_redis_prefix: str = Field(
        default=DEFAULT_REDIS_PREFIX,
        description="The shop's Redis key prefix (REGULARIZATION_LARAVEL_REDIS_PREFIX).",
    )
    rabbitmq_url: str | None = Field(
        default=None,
        description="The broker of the rabbitmq publisher (REGULARIZATION_RABBITMQ_URL).",
    )
    rabbitmq_exchange: str = Field(
        default="",
        description="The exchange; empty is the default exchange (REGULARIZATION_RABBITMQ_EXCHANGE).",
    )
    rabbitmq_routing_key: str = Field(
        default="order-completed",
        description="The routing key (REGULARIZATION_RABBITMQ_ROUTING_KEY).",
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

    _shop_name: str | None = PrivateAttr(default=None)

    def shop_overrides(self) -> dict[str, Any]:
        """The run's shop's ``publishers:`` settings from the shops file (its secrets read now)."""
        shop = self.shop()
        return shop.publisher_overrides() if shop is not None else {}

    def kinds(self) -> list[str]:
        return list(self.shop_overrides().get("kinds", self.publishers))

    def settings(self) -> PublisherSettings:
        """Raises ConfigurationError naming the offending fields (never the secret's value)."""
        if self.problems:
            raise ConfigurationError("; ".join(self.problems))
        return PublisherSettings.parse(**{**self._own_settings(), **self.shop_overrides()})

    def _own_settings(self) -> dict[str, Any]:
        return dict(
            kinds=self.publishers,
            webhook_url=self.webhook_url,
            webhook_secret=self.webhook_secret,
            webhook_secret_previous=self.webhook_secret_previous,
            connect_timeout_seconds=self.connect_timeout_seconds,
            read_timeout_seconds=self.read_timeout_seconds,
            total_timeout_seconds=self.total_timeout_seconds,
            handler_entry_point_group=self.handler_entry_point_group,
            python_handlers=self.python_handlers,
            laravel_job_class=self.laravel_job_class,
            laravel_queue=self.laravel_queue,
            laravel_jobs_table=self.laravel_jobs_table,
            laravel_connection=self.laravel_connection,
            laravel_redis_url=self.laravel_redis_url,
            laravel_redis_prefix=self.laravel_redis_prefix,
            rabbitmq_url=self.rabbitmq_url,
            rabbitmq_exchange=self.rabbitmq_exchange,
            rabbitmq_routing_key=self.rabbitmq_routing_key,
        )

    def build_publishers(self, engine: sa.Engine | None = None) -> list[Any]:
        """The configured publishers (``engine``: the shop's database, where laravel-database
        writes); release them with core's close_publishers."""
        return build_publishers(self.settings(), engine=engine)

    def publishers_for_the_flip(self, engine: sa.Engine) -> list[Any]:
        """The publishers, when one of them writes in the flip's own transaction (laravel-database);
        none otherwise, so bad settings of an after-commit publisher fail only the delivery step
        and the flips still commit with their outbox rows."""
        if "laravel-database" not in self.kinds():
            return []
        return self.build_publishers(engine)

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
        webhook's URL and secret (read at run time), the Laravel queue's REGULARIZATION_LARAVEL_*, the broker's REGULARIZATION_RABBITMQ_*, the retry settings and the
        budget, REGULARIZATION_DELIVERY_*: a bad one fails the runs, naming it."""
        problems: list[str] = []
        retry = {
            "max_attempts": read_setting(integer_from_env, DELIVERY_ENVS["max_attempts"], problems),
            "base_delay_seconds": read_setting(
                number_from_env, DELIVERY_ENVS["base_delay_seconds"], problems
            ),
            "max_delay_seconds": read_setting(
                number_from_env, DELIVERY_ENVS["max_delay_seconds"], problems
            ),
            "delivery_budget_seconds": read_setting(
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
                "laravel_redis_url": secret_from_env(LARAVEL_REDIS_URL_ENV),
                **{field: setting_from_env(env) for field, env in LARAVEL_ENVS.items()},
                "rabbitmq_url": secret_from_env(RABBITMQ_URL_ENV),
                **{field: setting_from_env(env) for field, env in RABBITMQ_ENVS.items()},
            },
            {
                **DELIVERY_ENVS,
                **LARAVEL_ENVS,
                **RABBITMQ_ENVS,
                "laravel_redis_url": LARAVEL_REDIS_URL_ENV,
                "rabbitmq_url": RABBITMQ_URL_ENV,
            },
            problems,
        )
        return resource
