"""The webhook publisher: OrderCompleted POSTed, signed, with a total deadline per request.

Outcomes a publisher reports: it returns (delivered), raises
:class:`RetryableDeliveryError` (tried again later, honouring ``Retry-After``) or
:class:`PermanentDeliveryError` (dead-lettered at once); both live in ``outcomes.py``, so
only a deployment that sends webhooks imports this module and its HTTP client.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpcore
import httpx

from regularization_pipeline.core.clock import parse_retry_after
from regularization_pipeline.core.delivery.events import (
    EVENT_ID_HEADER,
    EVENT_TYPE,
    EVENT_TYPE_HEADER,
    IDEMPOTENCY_HEADER,
    SOURCE,
    OrderCompleted,
    webhook_body,
)
from regularization_pipeline.core.delivery.outcomes import (  # re-exported: older imports
    PermanentDeliveryError,
    RetryableDeliveryError,
)
from regularization_pipeline.core.delivery.signing import SIGNATURE_HEADER, signature_header
from regularization_pipeline.core.errors import ConfigurationError
from regularization_pipeline.core.redaction import redact

__all__ = ["PermanentDeliveryError", "RetryableDeliveryError", "WebhookPublisher"]


def _snippet(text: str, limit: int = 200) -> str:
    """A response body fit for ``last_error``: one line, bounded, no control characters."""
    flat = " ".join(text.split())
    return flat[:limit] + ("..." if len(flat) > limit else "")


# Of a receiver's answer only the start is ever shown (in last_error): reading stops here, so
# a 2 GiB body (or a small compressed one that inflates) costs this much memory, not its size.
MAX_RESPONSE_BYTES = 64 * 1024


def _read_head(response: httpx.Response, limit: int = MAX_RESPONSE_BYTES) -> str:
    """The first ``limit`` bytes of the (decoded) body as text; the rest is never read."""
    head = bytearray()
    for chunk in response.iter_bytes():
        head += chunk[: limit - len(head)]
        if len(head) >= limit:
            break
    return head.decode(response.encoding or "utf-8", errors="replace")


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
            with self.client.stream(
                "POST",
                self.url,
                content=body,
                headers=self.headers(event, body),
                timeout=self.timeout,
            ) as response:
                status, answer = response.status_code, _read_head(response)
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
        if 200 <= status < 300 or status == 409:
            return
        detail = f"webhook answered HTTP {status}"
        if status < 500:
            # A refusal a human may have to act on (a 400 naming a field): a short, redacted
            # excerpt of the body. A 5xx body is the receiver's own failure, in its own logs.
            detail += f": {redact(_snippet(answer))}"
        if status in (408, 429) or status >= 500:
            raise RetryableDeliveryError(
                detail, retry_after=parse_retry_after(response.headers.get("Retry-After"))
            )
        raise PermanentDeliveryError(detail)

    def close(self) -> None:
        if self._owns_client:
            self.client.close()
