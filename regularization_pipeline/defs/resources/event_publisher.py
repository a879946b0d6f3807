"""Who receives OrderCompleted (webhook, Python handlers, Laravel's queue, the outbox alone) and
how delivery retries: the publishers and the outbox dispatcher."""

from __future__ import annotations

from typing import Any

import dagster as dg
import pydantic
import sqlalchemy as sa
from pydantic import Field, PrivateAttr

from regularization_pipeline.core.delivery.outbox import (
    DEFAULT_BUDGET_SECONDS,
    OutboxDispatcher,
    RetryPolicy,
)
from regularization_pipeline.core.delivery.publishers import PublisherSettings, build_publishers
from regularization_pipeline.core.errors import ConfigurationError
from regularization_pipeline.core.shop import tables as tb
from regularization_pipeline.defs.config_fields import fields_like
from regularization_pipeline.defs.resources.environment import (
    ReadFromEnvironment,
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

# The resource's name of a PublisherSettings field, where it differs.
RESOURCE_NAMES = {"kinds": "publishers"}

# PublisherSettings fields read through dg.EnvVar at run time (URLs may carry a password):
# the UI shows the variable's name, never its value.
SECRET_ENVS = {
    "webhook_url": WEBHOOK_URL_ENV,
    "webhook_secret": WEBHOOK_SECRET_ENV,
    "webhook_secret_previous": WEBHOOK_SECRET_PREVIOUS_ENV,
    "laravel_redis_url": LARAVEL_REDIS_URL_ENV,
    "rabbitmq_url": RABBITMQ_URL_ENV,
}

# PublisherSettings fields read as comma-separated lists.
LIST_ENVS = {"kinds": PUBLISHERS_ENV, "python_handlers": PYTHON_HANDLERS_ENV}

# Every PublisherSettings field an environment variable sets; the others keep their default.
SETTINGS_ENVS = {**LIST_ENVS, **SECRET_ENVS, **LARAVEL_ENVS, **RABBITMQ_ENVS}


def _named(env_of: dict[str, str]) -> dict[str, str]:
    """The variable, said in the field's description where core's words do not name it."""
    core = PublisherSettings.model_fields
    return {
        field: f" Read from {env}."
        for field, env in env_of.items()
        if env not in (core[field].description or "")
    }


class _EventPublisherResourceBase(ShopAware, ReadFromEnvironment, dg.ConfigurableResource):
    """Who receives each OrderCompleted event, and how delivery is retried.

    The publisher fields are core's PublisherSettings, field by field (generated, so one added
    to core reaches the resource), validated by it when a run starts; the secrets and the URLs
    come from their variables through dg.EnvVar, never from run config.
    """

    delivery_budget_seconds: float = Field(
        default=DEFAULT_BUDGET_SECONDS,
        gt=0,
        le=86_400,
        description="A run's delivery step stops after this long, well inside the job's 900 s limit; "
        "what is left waits for the next run (REGULARIZATION_DELIVERY_BUDGET_SECONDS).",
    )
    max_attempts: int = Field(
        default=RetryPolicy.max_attempts,
        ge=1,
        le=100,
        description="Delivery attempts before an event is dead-lettered.",
    )
    base_delay_seconds: float = Field(
        default=RetryPolicy.base_delay_seconds,
        ge=0,
        le=86_400,
        description="First retry delay; doubles per attempt.",
    )
    max_delay_seconds: float = Field(
        default=RetryPolicy.max_delay_seconds,
        ge=0,
        le=86_400,
        description="Upper bound of the retry delay.",
    )
    lease_seconds: float = Field(
        default=120.0,
        gt=0,
        le=86_400,
        description="How long a claimed event is reserved for this run.",
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
        if unread := self.unread_variables():
            raise ConfigurationError("; ".join(unread))
        return PublisherSettings.parse(**{**self.own_settings(), **self.shop_overrides()})

    def own_settings(self) -> dict[str, Any]:
        """This resource's values of every PublisherSettings field, by core's names."""
        return {
            name: getattr(self, RESOURCE_NAMES.get(name, name))
            for name in PublisherSettings.model_fields
        }

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
    def read_env(cls) -> tuple[EventPublisherResource, dict[str, str]]:
        """Every PublisherSettings field its variable sets (SETTINGS_ENVS: REGULARIZATION_PUBLISHERS,
        outbox when unset, REGULARIZATION_PYTHON_HANDLERS, the webhook's URL and secret read at run
        time, the Laravel queue's REGULARIZATION_LARAVEL_*, the broker's REGULARIZATION_RABBITMQ_*),
        then the retry settings and the budget, REGULARIZATION_DELIVERY_*: a bad one fails the
        runs, naming it."""
        unread: dict[str, str] = {}
        retry = {
            field: read_setting(
                integer_from_env if field == "max_attempts" else number_from_env, env, field, unread
            )
            for field, env in DELIVERY_ENVS.items()
        }
        values = {RESOURCE_NAMES.get(f, f): _from_env(f, env) for f, env in SETTINGS_ENVS.items()}
        env_of = {RESOURCE_NAMES.get(f, f): env for f, env in SETTINGS_ENVS.items()}
        return build_leniently(cls, {**retry, **values}, {**DELIVERY_ENVS, **env_of}, unread)


def _from_env(field: str, env: str) -> Any:
    """A PublisherSettings field's value from its variable, None while it is unset."""
    if field in SECRET_ENVS:
        return secret_from_env(env)
    if field in LIST_ENVS:
        return list_from_env(env) or None
    return setting_from_env(env)


# One field per PublisherSettings field, generated so that a field added to core reaches the
# resource (and the UI) without a second list to keep in step.
EventPublisherResource = pydantic.create_model(
    "EventPublisherResource",
    __base__=_EventPublisherResourceBase,
    __module__=__name__,
    __doc__=_EventPublisherResourceBase.__doc__,
    **fields_like(
        PublisherSettings, renames=RESOURCE_NAMES, notes=_named({**SECRET_ENVS, **LIST_ENVS})
    ),
)
