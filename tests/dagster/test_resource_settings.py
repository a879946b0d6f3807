"""The resources are core's settings models, declared once: every PublisherSettings field is a
field of EventPublisherResource (same default, same words) and reaches core when a run starts,
from code or from its variable; the gateway resource names every GatewaySettings field."""

from __future__ import annotations

import dagster as dg
import pytest
from pydantic import SecretStr

from regularization_pipeline.core.delivery.publishers import PublisherSettings
from regularization_pipeline.core.errors import ConfigurationError
from regularization_pipeline.core.provider.settings import GatewaySettings
from regularization_pipeline.defs.resources import EventPublisherResource, PaymentGatewayResource
from regularization_pipeline.defs.resources.event_publisher import RESOURCE_NAMES, SETTINGS_ENVS

# A valid value for each field, none its default, so a field that does not reach core shows.
VALUES = {
    "kinds": ["webhook", "laravel-redis", "rabbitmq"],
    "laravel_job_class": "App\\Jobs\\PaidOrder@handle",
    "laravel_queue": "orders",
    "laravel_jobs_table": "queued_jobs",
    "laravel_connection": "shop-redis",
    "laravel_redis_url": "redis://cache.internal:6379/2",
    "laravel_redis_prefix": "shop_database_",
    "rabbitmq_url": "amqp://shop:pw@broker.internal:5672/orders",
    "rabbitmq_exchange": "shop.events",
    "rabbitmq_routing_key": "order.completed",
    "webhook_url": "https://shop.example/hooks/order-completed",
    "webhook_secret": "s" * 24,
    "webhook_secret_previous": "p" * 24,
    "connect_timeout_seconds": 1.5,
    "read_timeout_seconds": 4.5,
    "total_timeout_seconds": 9.0,
    "handler_entry_point_group": "shop.order_completed",
    "python_handlers": ["shop.handlers:enroll"],
}


def _plain(value):
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def test_every_publisher_setting_is_a_resource_field_with_core_default_and_words():
    resource_fields = EventPublisherResource.model_fields
    for name, info in PublisherSettings.model_fields.items():
        field = resource_fields.get(RESOURCE_NAMES.get(name, name))
        assert field is not None, f"PublisherSettings.{name} does not reach the resource"
        assert field.default == info.get_default(call_default_factory=True), name
        assert field.description.startswith(info.description), name


def test_every_publisher_setting_given_to_the_resource_reaches_core():
    given = {name: VALUES[name] for name in PublisherSettings.model_fields if name in VALUES}
    resource = EventPublisherResource(**{RESOURCE_NAMES.get(n, n): v for n, v in given.items()})
    settings = resource.settings()
    assert set(resource.own_settings()) == set(PublisherSettings.model_fields)
    for name, value in given.items():
        assert _plain(getattr(settings, name)) == value, name


def test_every_publisher_variable_reaches_core_through_the_environment(monkeypatch):
    for field, env in SETTINGS_ENVS.items():
        value = VALUES[field]
        monkeypatch.setenv(env, ",".join(value) if isinstance(value, list) else str(value))
    resource = EventPublisherResource.from_env()
    assert resource.unread_variables() == []
    # A secret stays the variable's name until the resource is initialized for a run.
    assert resource.webhook_secret == "REGULARIZATION_WEBHOOK_SECRET"
    settings = resource.process_config_and_initialize().settings()
    for field in SETTINGS_ENVS:
        assert _plain(getattr(settings, field)) == VALUES[field], field


def test_a_bad_publisher_setting_fails_the_run_naming_the_field_never_the_value(monkeypatch):
    monkeypatch.setenv("REGULARIZATION_PUBLISHERS", "webhook")
    monkeypatch.setenv("REGULARIZATION_WEBHOOK_URL", "https://shop.example/hook")
    monkeypatch.setenv("REGULARIZATION_WEBHOOK_SECRET", "short-secret")
    resource = EventPublisherResource.from_env().process_config_and_initialize()
    with pytest.raises(Exception, match=r"webhook_secret: .*at least 16 characters") as caught:
        resource.settings()
    assert "short-secret" not in str(caught.value)


def test_every_gateway_setting_is_a_resource_field_or_named_for_the_settings_file():
    fields = PaymentGatewayResource.model_fields
    described = fields["settings_file"].description
    for name, info in GatewaySettings.model_fields.items():
        if name in fields:  # the URL, from its variable
            assert fields[name].description.startswith(info.description), name
        else:
            assert f" {name}," in described or f" {name};" in described, name


def _max_attempts_seen_by_a_run(resource, run_config: dict) -> int | str:
    """What a run's step reads from the resource, as the Launchpad's config reaches it."""

    @dg.op
    def deliver(event_publisher: EventPublisherResource):
        try:
            return event_publisher.settings() and event_publisher.max_attempts
        except ConfigurationError as exc:
            return str(exc)

    job = dg.GraphDefinition(name="delivery", node_defs=[deliver]).to_job(
        resource_defs={"event_publisher": resource}
    )
    return job.execute_in_process(run_config=run_config).output_for_node("deliver")


def test_an_unreadable_variable_is_named_by_the_run_and_is_no_launchpad_field(monkeypatch):
    monkeypatch.setenv("REGULARIZATION_DELIVERY_MAX_ATTEMPTS", "three")
    resource = EventPublisherResource.from_env()  # the code location still loads
    # The Launchpad shows the resource's config fields: settings, nothing the code found wrong.
    shown = set(resource.get_resource_definition().config_schema.config_type.fields)
    assert "max_attempts" in shown and not shown - set(EventPublisherResource.model_fields)
    assert not {"problems", "unread"} & shown
    # The run is rebuilt from that config and still refuses, naming the variable.
    assert _max_attempts_seen_by_a_run(resource, {}) == (
        "REGULARIZATION_DELIVERY_MAX_ATTEMPTS must be a whole number, got 'three'"
    )
    # A value typed into the Launchpad stands in for the variable it replaces.
    given = {"resources": {"event_publisher": {"config": {"max_attempts": 4}}}}
    assert _max_attempts_seen_by_a_run(resource, given) == 4
