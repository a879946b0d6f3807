"""Who receives each OrderCompleted: a signed webhook, in-process Python handlers, or the outbox itself.

A publisher either returns (delivered), raises :class:`RetryableDeliveryError`
(tried again later, honouring ``Retry-After``) or :class:`PermanentDeliveryError`
(dead-lettered at once). The dispatcher (``core/outbox.py``) records each
publisher's success separately, so a retry never re-runs one that succeeded.
"""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Literal, Protocol

import httpcore
import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from regularization_pipeline.core.errors import ConfigurationError
from regularization_pipeline.core.events import (
    EVENT_ID_HEADER,
    EVENT_TYPE,
    EVENT_TYPE_HEADER,
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    SOURCE,
    OrderCompleted,
    signature_header,
    webhook_body,
)
from regularization_pipeline.core.ratelimit import parse_retry_after
from regularization_pipeline.core.schema import validate_or_explain

HANDLER_ENTRY_POINT_GROUP = "regularization_pipeline.order_completed"


# --- publishers --------------------------------------------------------------------


class PermanentDeliveryError(Exception):
    """The consumer refused the event for good (e.g. HTTP 400): dead-letter it, do not retry."""


class RetryableDeliveryError(Exception):
    """A transient failure; ``retry_after`` (seconds) overrides the backoff when the consumer asked."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


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


def _snippet(text: str, limit: int = 200) -> str:
    """A response body fit for ``last_error``: one line, bounded, no control characters."""
    flat = " ".join(text.split())
    return flat[:limit] + ("..." if len(flat) > limit else "")


# --- a total deadline per request ----------------------------------------------------------
# httpx's timeouts are per phase and per read: a receiver that trickles a byte a second keeps
# every read short and the request alive for ever. Every socket operation below is given
# what is left of the request's deadline instead, so no receiver can stretch a request past it.


class _Deadline(threading.local):
    at: float | None = None

    def remaining(self, timeout: float | None) -> float | None:
        if self.at is None:
            return timeout
        left = self.at - time.monotonic()
        if left <= 0:
            raise httpcore.ReadTimeout("the request's total deadline has passed")
        return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, deadline: _Deadline):
        self._inner, self._deadline = inner, deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._deadline.remaining(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._deadline.remaining(timeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context, server_hostname=None, timeout=None) -> _DeadlineStream:
        inner = self._inner.start_tls(
            ssl_context, server_hostname, self._deadline.remaining(timeout)
        )
        return _DeadlineStream(inner, self._deadline)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self, deadline: _Deadline):
        self._inner, self._deadline = httpcore.SyncBackend(), deadline

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        stream = self._inner.connect_tcp(
            host, port, self._deadline.remaining(timeout), local_address, socket_options
        )
        return _DeadlineStream(stream, self._deadline)

    def connect_unix_socket(self, path, timeout=None, socket_options=None):  # pragma: no cover
        stream = self._inner.connect_unix_socket(
            path, self._deadline.remaining(timeout), socket_options
        )
        return _DeadlineStream(stream, self._deadline)

    def sleep(self, seconds: float) -> None:  # pragma: no cover
        self._inner.sleep(seconds)


def _deadline_transport(deadline: _Deadline) -> httpx.HTTPTransport:
    transport = httpx.HTTPTransport()
    # httpx takes no network backend; its pool does, and every connection is opened through it.
    transport._pool._network_backend = _DeadlineBackend(deadline)  # noqa: SLF001
    return transport


class WebhookPublisher:
    """POSTs the signed OrderCompleted payload to the application's webhook URL.

    Outcomes: 2xx delivered; 409 delivered as well (the receiver says it
    already processed this idempotency key, which is what a duplicate
    delivery should get); 408, 429, 5xx, timeouts and connection errors are
    retried, honouring ``Retry-After``; any other status (3xx included:
    a signed body is never sent on to a redirect target) is permanent and
    dead-letters the event with the status and the start of the response.

    Each request has a total deadline, ``total_timeout_seconds`` (connect, send and receive),
    which a receiver trickling its answer cannot stretch: it is ``max_seconds``, which the
    dispatcher's lease must outlive.

    ``previous_secret``, while a secret rotates: every request then carries a second ``v1``
    signature made with it, so a receiver still holding the old secret accepts it too.
    """

    def __init__(
        self,
        url: str,
        secret: str,
        *,
        previous_secret: str | None = None,
        connect_timeout_seconds: float = 3.0,
        read_timeout_seconds: float = 10.0,
        total_timeout_seconds: float | None = None,
        name: str = "webhook",
        client: httpx.Client | None = None,
        clock: Callable[[], float] = time.time,
    ):
        if not url.startswith(("http://", "https://")):
            raise ConfigurationError("webhook_url must be an http:// or https:// URL")
        if not secret:
            raise ConfigurationError("webhook_secret is empty: deliveries must be signed")
        self.url = url
        self.name = name
        self._secrets = [s.encode("utf-8") for s in (secret, previous_secret) if s]
        self.clock = clock
        self.timeout = httpx.Timeout(
            connect=connect_timeout_seconds,
            read=read_timeout_seconds,
            write=read_timeout_seconds,
            pool=connect_timeout_seconds,
        )
        # By default the sum of the phases: what a well-behaved receiver could take, made a hard limit.
        phases = connect_timeout_seconds * 2 + read_timeout_seconds * 2
        self.total_timeout_seconds = float(total_timeout_seconds or phases)
        self._deadline = _Deadline()
        self._owns_client = client is None
        self.client = client or httpx.Client(
            timeout=self.timeout,
            transport=_deadline_transport(self._deadline),
            follow_redirects=False,
            headers={"User-Agent": f"{SOURCE}/webhook"},
        )

    @property
    def max_seconds(self) -> float:
        """The longest one delivery can take, whatever the receiver does: the lease must outlast it."""
        return self.total_timeout_seconds

    def headers(self, event: OrderCompleted, body: bytes) -> dict[str, str]:
        timestamp = int(self.clock())
        return {
            "Content-Type": "application/json",
            IDEMPOTENCY_HEADER: event.idempotency_key,
            EVENT_ID_HEADER: event.event_id,
            EVENT_TYPE_HEADER: EVENT_TYPE,
            SIGNATURE_HEADER: signature_header(self._secrets, timestamp, body),
        }

    def publish(self, event: OrderCompleted) -> None:
        body = webhook_body(event)
        self._deadline.at = time.monotonic() + self.total_timeout_seconds
        try:
            response = self.client.post(
                self.url, content=body, headers=self.headers(event, body), timeout=self.timeout
            )
        except httpx.TimeoutException as exc:
            # The last read was given what was left of the deadline: ending near it is the deadline.
            if time.monotonic() >= self._deadline.at - 0.05:
                raise RetryableDeliveryError(
                    f"webhook exceeded its {self.total_timeout_seconds:g}s total deadline"
                ) from exc
            raise RetryableDeliveryError(f"webhook timed out ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            # The exception text is the socket error; the URL stays out of last_error and logs.
            raise RetryableDeliveryError(f"webhook unreachable ({type(exc).__name__})") from exc
        finally:
            self._deadline.at = None
        status = response.status_code
        if 200 <= status < 300 or status == 409:
            return
        detail = f"webhook answered HTTP {status}: {_snippet(response.text)}"
        if status in (408, 429) or status >= 500:
            raise RetryableDeliveryError(
                detail, retry_after=parse_retry_after(response.headers.get("Retry-After"))
            )
        raise PermanentDeliveryError(detail)

    def close(self) -> None:
        if self._owns_client:
            self.client.close()


# --- publishers from settings ------------------------------------------------------------

PublisherKind = Literal["webhook", "python", "outbox"]


class PublisherSettings(BaseModel):
    """Who receives each OrderCompleted event; the Dagster resource builds these from its config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kinds: list[PublisherKind] = Field(
        default_factory=lambda: ["outbox"],
        min_length=1,
        description="'outbox' (the default: the application reads the outbox table itself; cannot "
        "be combined with the others), 'webhook' (signed HTTP POST), 'python' (handlers installed "
        "under the entry-point group or named in python_handlers).",
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
        previous = self.webhook_secret_previous
        if previous is not None and len(previous.get_secret_value()) < 16:
            raise ValueError("webhook_secret_previous: at least 16 characters, like webhook_secret")
        return self

    @classmethod
    def parse(cls, **values: Any) -> PublisherSettings:
        """Validate, naming every offending field (never its value) in one ConfigurationError."""
        return validate_or_explain(cls, values, "publisher settings")


def build_publishers(
    settings: PublisherSettings,
    handlers: Mapping[str, Callable[[OrderCompleted], None]] | None = None,
) -> list[Any]:
    """The publishers ``settings`` names, in order. ``handlers`` replaces the entry-point lookup (tests)."""
    built: list[Any] = []
    for kind in settings.kinds:
        if kind == "webhook":
            built.append(
                WebhookPublisher(
                    settings.webhook_url or "",
                    settings.webhook_secret.get_secret_value() if settings.webhook_secret else "",
                    previous_secret=settings.webhook_secret_previous.get_secret_value()
                    if settings.webhook_secret_previous
                    else None,
                    connect_timeout_seconds=settings.connect_timeout_seconds,
                    read_timeout_seconds=settings.read_timeout_seconds,
                    total_timeout_seconds=settings.total_timeout_seconds,
                )
            )
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


def describe_destination(publishers: Sequence[Any]) -> str:
    """Where a run's events went, in words, for its report."""
    names = [pub.name for pub in expand_publishers(publishers)]
    if names == [OutboxOnlyPublisher.name]:
        return "outbox: left in the outbox table for the application to consume"
    return "delivered to " + ", ".join(names)


def close_publishers(publishers: Sequence[Any]) -> None:
    """Release the connection pools of publishers that hold one."""
    for pub in publishers:
        close = getattr(pub, "close", None)
        if callable(close):
            close()
