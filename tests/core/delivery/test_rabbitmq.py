"""The RabbitMQ publisher against the loopback broker (127.0.0.1:5672, guest/guest): confirms,
persistent messages keyed by the idempotency key, a broker that goes away mid-run, redelivery.

Each test declares a queue of its own; a TCP proxy stands between us and the broker so a test
can make the broker vanish without stopping the one other work on this machine uses.
"""

from __future__ import annotations

import json
import uuid

import pytest

from regularization_pipeline.core.delivery.outbox import OutboxDispatcher, RetryPolicy
from regularization_pipeline.core.delivery.publishers import PublisherSettings, build_publishers
from regularization_pipeline.core.delivery.rabbitmq import RabbitMQPublisher
from regularization_pipeline.core.errors import ConfigurationError
from regularization_pipeline.core.shop.tables import DEAD, DELIVERED, PENDING
from tests.support.databases import unavailable
from tests.support.rows import outbox_rows, owned
from tests.support.seeds import seed_events
from tests.support.tcp_proxy import TcpProxy

BROKER = "amqp://guest:guest@127.0.0.1:5672/%2F"
IMMEDIATE = RetryPolicy(max_attempts=3, base_delay_seconds=0.0, jitter=0.0)


@pytest.fixture
def queue_name():
    import pika

    try:
        connection = pika.BlockingConnection(pika.URLParameters(BROKER))
    except pika.exceptions.AMQPError as exc:
        unavailable(f"RabbitMQ on 127.0.0.1:5672 is not reachable ({type(exc).__name__})")
    channel = connection.channel()
    name = f"regtest-{uuid.uuid4().hex[:12]}"
    channel.queue_declare(name, durable=True)
    yield name
    channel.queue_delete(name)
    connection.close()


def messages(queue: str) -> list:
    """Every message on ``queue``, taken off it: (properties, payload)."""
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(BROKER))
    channel, found = connection.channel(), []
    while True:
        method, properties, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            break
        found.append((properties, json.loads(body)))
    connection.close()
    return found


def test_every_event_is_one_persistent_confirmed_message_keyed_by_its_idempotency_key(
    shop, queue_name
):
    rows = seed_events(shop, 3)
    broker = RabbitMQPublisher(BROKER, routing_key=queue_name)
    assert OutboxDispatcher(shop.engine, owned(shop), [broker]).dispatch().delivered == 3
    broker.close()
    got = messages(queue_name)
    assert [p.message_id for p, _ in got] == [r.idempotency_key for r in rows]
    assert {p.delivery_mode for p, _ in got} == {2}
    assert [body["event_id"] for _, body in got] == [r.event_id for r in rows]
    assert {r.state for r in outbox_rows(shop)} == {DELIVERED}


def test_an_unroutable_message_is_not_confirmed_so_not_delivered(shop, queue_name):
    seed_events(shop, 2)
    nowhere = RabbitMQPublisher(BROKER, routing_key=f"{queue_name}-no-such-queue")
    summary = OutboxDispatcher(shop.engine, owned(shop), [nowhere], retry=IMMEDIATE).dispatch()
    nowhere.close()
    assert (summary.delivered, summary.retried) == (0, 2)
    assert {r.state for r in outbox_rows(shop)} == {PENDING}


def test_a_broker_gone_mid_run_leaves_unconfirmed_events_pending_and_the_next_run_sends_them(
    shop, queue_name
):
    rows = seed_events(shop, 5)
    proxy = TcpProxy("127.0.0.1", 5672)
    via = RabbitMQPublisher(
        f"amqp://guest:guest@127.0.0.1:{proxy.port}/%2F", routing_key=queue_name, timeout_seconds=2
    )
    sent = []

    class BrokerVanishes:
        """Before the third event, the broker goes away while the publish is on the wire."""

        name = via.name
        max_seconds = via.max_seconds

        def publish(self, event):
            sent.append(event.event_id)
            if len(sent) == 3:
                proxy.drop_next_request()
            elif len(sent) == 4:
                proxy.refuse()
            via.publish(event)

    first = OutboxDispatcher(shop.engine, owned(shop), [BrokerVanishes()], retry=IMMEDIATE)
    summary = first.dispatch()
    assert summary.delivered == 2 and summary.retried == 3
    confirmed = {r.idempotency_key for r in outbox_rows(shop) if r.state == DELIVERED}
    on_broker = messages(queue_name)
    # Nothing is marked delivered that the broker did not confirm, and nothing confirmed is lost.
    assert confirmed == {p.message_id for p, _ in on_broker}
    assert confirmed == {r.idempotency_key for r in rows[:2]}

    proxy.restore()
    again = OutboxDispatcher(shop.engine, owned(shop), [via], retry=IMMEDIATE).dispatch()
    assert again.delivered == 3
    assert sorted(p.message_id for p, _ in messages(queue_name)) == sorted(
        r.idempotency_key for r in rows[2:]
    )
    via.close()
    proxy.close()


def test_dead_events_are_redelivered_once_the_broker_is_back(shop, queue_name):
    rows = seed_events(shop, 2)
    down = RabbitMQPublisher("amqp://guest:guest@127.0.0.1:1/%2F", routing_key=queue_name)
    dispatcher = OutboxDispatcher(
        shop.engine, owned(shop), [down], retry=RetryPolicy(max_attempts=1)
    )
    assert dispatcher.dispatch().dead == 2
    assert {r.state for r in outbox_rows(shop)} == {DEAD}
    up = RabbitMQPublisher(BROKER, routing_key=queue_name)
    back = OutboxDispatcher(shop.engine, owned(shop), [up])
    assert back.redeliver(all_dead=True) == 2
    assert back.dispatch().delivered == 2
    up.close()
    assert sorted(p.message_id for p, _ in messages(queue_name)) == sorted(
        r.idempotency_key for r in rows
    )


@pytest.mark.parametrize(
    "settings",
    [{"kinds": ["rabbitmq"]}, {"kinds": ["rabbitmq"], "rabbitmq_url": "http://broker"}],
)
def test_a_rabbitmq_publisher_without_a_broker_url_is_refused_in_one_line(settings):
    with pytest.raises(ConfigurationError) as refused:
        PublisherSettings.parse(**settings)
    assert "rabbitmq_url" in str(refused.value) and "\n" not in str(refused.value)


def test_settings_build_the_broker_publisher():
    settings = PublisherSettings.parse(
        kinds=["rabbitmq"], rabbitmq_url=BROKER, rabbitmq_exchange="shop", rabbitmq_routing_key="o"
    )
    (broker,) = build_publishers(settings)
    assert (broker.exchange, broker.routing_key) == ("shop", "o")
