"""OrderCompleted on a RabbitMQ broker (AMQP 0-9-1), from the outbox after commit, at least once.

Each event is one persistent message (``delivery_mode`` 2) whose ``message_id`` is the
idempotency key, published ``mandatory`` on a channel in confirm mode: the publish returns
only once the broker has confirmed it (written to its durable queues), so the dispatcher
records the event delivered only then. A nack, an unroutable message, or a broker that went
away before confirming raises :class:`RetryableDeliveryError`: the event stays pending and
is published again with backoff (consumers dedupe on ``message_id``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from regularization_pipeline.core.delivery.events import (
    EVENT_TYPE,
    OrderCompleted,
    webhook_body,
)
from regularization_pipeline.core.delivery.outcomes import RetryableDeliveryError

DEFAULT_ROUTING_KEY = "order-completed"


@dataclass
class RabbitMQPublisher:
    """Publishes with publisher confirms over one connection, reopened after any failure."""

    url: str
    exchange: str = ""
    routing_key: str = DEFAULT_ROUTING_KEY
    timeout_seconds: float = 5.0
    name: str = "rabbitmq"
    _connection: Any = field(default=None, init=False, repr=False)
    _channel: Any = field(default=None, init=False, repr=False)

    @property
    def max_seconds(self) -> float:
        # Connecting (socket, handshake) and one confirmed publish, each bounded by the timeout.
        return 3 * self.timeout_seconds + 1.0

    def _open(self) -> Any:
        import pika

        if self._channel is None or not self._channel.is_open:
            self.close()
            params = pika.URLParameters(self.url)
            params.socket_timeout = self.timeout_seconds
            params.stack_timeout = self.timeout_seconds
            params.blocked_connection_timeout = self.timeout_seconds
            self._connection = pika.BlockingConnection(params)
            self._channel = self._connection.channel()
            self._channel.confirm_delivery()
        return self._channel

    def publish(self, event: OrderCompleted) -> None:
        import pika
        import pika.exceptions as px

        properties = pika.BasicProperties(
            content_type="application/json",
            delivery_mode=pika.DeliveryMode.Persistent,
            message_id=event.idempotency_key,
            type=EVENT_TYPE,
            headers={"event_id": event.event_id},
        )
        try:
            self._open().basic_publish(
                self.exchange, self.routing_key, webhook_body(event), properties, mandatory=True
            )
        except (px.UnroutableError, px.NackError) as exc:
            raise RetryableDeliveryError(f"rabbitmq: {type(exc).__name__}") from None
        except (px.AMQPError, OSError) as exc:
            # Not confirmed: the broker may or may not have it; it is published again.
            self.close()
            raise RetryableDeliveryError(f"rabbitmq: {type(exc).__name__}") from None

    def describe(self) -> str:
        return (
            f"{self.name} (exchange {self.exchange or '(default)'}, routing key {self.routing_key})"
        )

    def close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except Exception:  # noqa: BLE001, S110 - a broken connection has nothing left to release
                pass
