"""Asks the payment provider what it knows about a transaction, rate-limited.

``provider`` picks the adapter that reads the provider's own objects
(:mod:`.stripe`, :mod:`.mollie`, :mod:`.paypal`, or :mod:`.generic` for any other);
this module is the transport they share.

:class:`GatewayVerifier` is the :class:`~regularization_pipeline.core.decisions.verification.PaymentVerifier`
the Regularizer calls before it locks an order. It turns the provider's
answer into a :class:`ProviderAnswer`; the rules that act on it live in
``verification.apply_provider_answer``:

- completed, for the order's amount and currency -> the order is regularized;
- failed, refunded, disputed, authorized only, another amount or currency ->
  held as ``provider_failed`` with a machine-readable reason, never flipped;
- pending, a value the mapping does not know, a missing status, malformed
  JSON, a provider that does not know the transaction (404) or refuses a
  request about it (another 4xx) -> left alone, with the reason in the audit trail;
- 401 and 403 -> raised (:class:`ProviderRejectedError`): the Regularizer stops
  the run when it is the run's first answer, and holds that one order otherwise;
- connection errors, timeouts, 5xx and repeated 429s after a few retries ->
  raised (:class:`ProviderUnavailableError`); the Regularizer goes on with the
  next order and stops asking only after several in a row (an outage).

Nothing the provider or the token says reaches the logs: only the transaction
id, the HTTP status and the mapped status value.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # loaded when a verifier is built: a shop without a provider never needs it
    import httpx

from regularization_pipeline.core.provider.adapter import Request
from regularization_pipeline.core.provider.answers import (
    ProviderAnswer,
    ProviderRejectedError,
    ProviderStatus,
    ProviderUnavailableError,
)
from regularization_pipeline.core.provider.paypal import TOKEN_PATH
from regularization_pipeline.core.provider.ratelimit import (
    RateLimiter,
    RateLimitWaitTooLong,
    parse_retry_after,
)
from regularization_pipeline.core.provider.settings import GatewaySettings
from regularization_pipeline.core.shop.rows import OrderRow, TransactionRow

log = logging.getLogger("regularization_pipeline.gateway")
# A payment object with its charge expanded is a few KiB; anything past this is not an answer.
MAX_ANSWER_BYTES = 1024 * 1024


class GatewayVerifier:
    """``check(order, transaction) -> ProviderAnswer`` over HTTP, rate-limited, with bounded retries."""

    def __init__(
        self,
        settings: GatewaySettings,
        token: str | None = None,
        *,
        client: httpx.Client | None = None,
        limiter: RateLimiter | None = None,
        sleeper: Callable[[float], None] = time.sleep,
    ):
        self.settings = settings
        self.adapter = settings.adapter()
        self.sleeper = sleeper
        self.limiter = limiter or RateLimiter(
            settings.max_requests_per_second, settings.burst, sleeper=sleeper
        )
        self._token = token
        import httpx

        self.timeout = httpx.Timeout(
            connect=settings.connect_timeout_seconds,
            read=settings.read_timeout_seconds,
            write=settings.read_timeout_seconds,
            pool=settings.connect_timeout_seconds,
        )
        self._owns_client = client is None
        self.client = client or httpx.Client(timeout=self.timeout, follow_redirects=False)
        self._base_headers = {
            "Accept": "application/json",
            "User-Agent": "regularization_pipeline/gateway",
        }
        self._headers: dict[str, str] | None = None  # with the credentials, built on first use
        self.requests_sent = 0
        self.rate_limited_responses = 0  # HTTP 429s received, for the run's metrics
        self.answers_received = 0  # requests the provider answered with our credentials accepted

    @property
    def outage_after(self) -> int:
        return self.settings.outage_after

    def url_for(self, order: OrderRow, transaction: TransactionRow) -> str:
        return self.settings.base_url + self.adapter.request(order, transaction).path

    def check(self, order: OrderRow, transaction: TransactionRow) -> ProviderAnswer:
        request = self.adapter.request(order, transaction)
        response = self._get(self.settings.base_url + request.path, transaction, request)
        return self._answer(response)

    def _credentials(self) -> dict[str, str]:
        if self._headers is None:
            token = self._token
            if self.adapter.name == "paypal" and token:
                token = self._paypal_access_token(token)
            self._headers = {**self._base_headers, **self.adapter.headers(token)}
        return self._headers

    def _paypal_access_token(self, credentials: str) -> str:
        """PayPal's OAuth client-credentials exchange (``client_id:client_secret``), once per verifier."""
        import httpx

        client_id, _, secret = credentials.partition(":")
        try:
            self.limiter.acquire(max_wait=self.settings.max_wait_seconds)
        except RateLimitWaitTooLong as exc:
            raise ProviderUnavailableError(f"provider rate limit: {exc}") from exc
        self.requests_sent += 1
        try:
            response = self.client.post(
                self.settings.base_url + TOKEN_PATH,
                auth=(client_id, secret),
                data={"grant_type": "client_credentials"},
                headers=self._base_headers,
                timeout=self.timeout,
            )
        except httpx.TransportError as exc:
            raise ProviderUnavailableError(
                f"provider unreachable ({type(exc).__name__}) at its token endpoint"
            ) from exc
        if response.status_code in (400, 401, 403):
            raise ProviderRejectedError(
                f"provider refused our credentials (HTTP {response.status_code} at its token endpoint)"
            )
        try:
            token = response.json().get("access_token")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            token = None
        if response.status_code != 200 or not isinstance(token, str) or not token:
            raise ProviderUnavailableError(
                f"provider gave no access token (HTTP {response.status_code})"
            )
        return token

    def _get(
        self, url: str, transaction: TransactionRow, request: Request | None = None
    ) -> httpx.Response:
        import httpx

        s = self.settings
        headers = self._credentials()
        params = request.params if request is not None else []
        failures = rate_limited = 0
        while True:
            try:
                self.limiter.acquire(max_wait=s.max_wait_seconds)
            except RateLimitWaitTooLong as exc:
                raise ProviderUnavailableError(f"provider rate limit: {exc}") from exc
            self.requests_sent += 1
            try:
                response = self._bounded_get(url, params, headers)
            except httpx.TransportError as exc:  # timeouts included
                problem = f"provider unreachable ({type(exc).__name__})"
            else:
                status = response.status_code
                if status == 429:
                    wait = parse_retry_after(response.headers.get("Retry-After"))
                    # Without a Retry-After, wait a full second's budget before asking again.
                    self.limiter.back_off(
                        wait if wait is not None else max(1.0, 1.0 / s.max_requests_per_second)
                    )
                    rate_limited += 1
                    self.rate_limited_responses += 1
                    log.warning(
                        "transaction %s: provider rate-limited us (429), retry after %s s",
                        transaction.id,
                        "?" if wait is None else f"{wait:g}",
                    )
                    if rate_limited > s.max_rate_limited_retries:
                        raise ProviderUnavailableError(
                            f"provider kept answering HTTP 429 after {rate_limited} tries"
                        )
                    continue
                if status < 500:
                    return response
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                if retry_after is not None:
                    self.limiter.back_off(retry_after)
                problem = f"provider answered HTTP {status}"
            failures += 1
            if failures > s.max_retries:
                raise ProviderUnavailableError(f"{problem} after {failures} tries")
            log.warning("transaction %s: %s, retrying", transaction.id, problem)
            self.sleeper(s.retry_delay_seconds * 2 ** (failures - 1))

    def _bounded_get(self, url: str, params, headers: dict[str, str]) -> httpx.Response:
        """The provider's answer with at most ``MAX_ANSWER_BYTES`` of its body read: a provider
        (or anything at its address) sending gigabytes costs one buffer, not the memory."""
        import httpx

        request = self.client.build_request(
            "GET", url, params=params, headers=headers, timeout=self.timeout
        )
        streamed = self.client.send(request, stream=True)
        try:
            body, oversized = bytearray(), False
            for chunk in streamed.iter_bytes():
                body += chunk
                if len(body) > MAX_ANSWER_BYTES:
                    oversized = True
                    break
        finally:
            streamed.close()
        return httpx.Response(
            streamed.status_code,
            headers={k: v for k, v in streamed.headers.items() if k.lower() == "retry-after"},
            content=b"" if oversized else bytes(body),
            request=request,
            extensions={"oversized": oversized},
        )

    def _answer(self, response: httpx.Response) -> ProviderAnswer:
        status = response.status_code
        if response.extensions.get("oversized"):
            self.answers_received += 1
            return ProviderAnswer(
                ProviderStatus.UNKNOWN,
                f"provider answered more than {MAX_ANSWER_BYTES // 1024} KiB (HTTP {status})",
            )
        if status == 404:
            self.answers_received += 1
            return ProviderAnswer(
                ProviderStatus.UNKNOWN, "provider does not know the transaction (HTTP 404)"
            )
        if status in (401, 403):
            raise ProviderRejectedError(f"provider refused our credentials (HTTP {status})")
        self.answers_received += 1
        if not 200 <= status < 300:
            # Any other refusal (400, 409, 410, 422...) is about this transaction, not our
            # credentials: the order is left alone, and the run goes on with the others.
            return ProviderAnswer(ProviderStatus.UNKNOWN, f"provider answered HTTP {status}")
        try:
            document = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return ProviderAnswer(
                ProviderStatus.UNKNOWN, f"provider answered malformed JSON (HTTP {status})"
            )
        return self.adapter.read(document)

    def close(self) -> None:
        if self._owns_client:
            self.client.close()

    def __enter__(self) -> GatewayVerifier:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
