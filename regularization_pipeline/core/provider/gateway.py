"""Asks the payment provider what it knows about a transaction, rate-limited.

:class:`GatewayVerifier` is the :class:`~regularization_pipeline.core.decisions.verification.PaymentVerifier`
the Regularizer calls before it locks an order. It turns the provider's
answer into a :class:`ProviderAnswer`; the rules that act on it live in
``verification.apply_provider_answer``:

- completed -> the order is regularized;
- failed / refunded -> reported as an inconsistency, never flipped;
- pending, a value the mapping does not know, a missing status, malformed
  JSON, a provider that does not know the transaction (404) or refuses a
  request about it (another 4xx) -> left alone, with the reason in the audit trail;
- 401 and 403 -> raised (:class:`ProviderRejectedError`): the run stops;
- connection errors, timeouts, 5xx and repeated 429s after a few retries ->
  raised (:class:`ProviderUnavailableError`); the Regularizer leaves the order
  for the next run without counting a failure, and stops asking this run.

Nothing the provider or the token says reaches the logs: only the transaction
id, the HTTP status and the mapped status value.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator

from regularization_pipeline.core.config_files import read_yaml_mapping, validate_or_explain
from regularization_pipeline.core.provider.answers import (
    ProviderAnswer,
    ProviderRejectedError,
    ProviderStatus,
    ProviderUnavailableError,
)
from regularization_pipeline.core.provider.ratelimit import (
    RateLimiter,
    RateLimitWaitTooLong,
    parse_retry_after,
)
from regularization_pipeline.core.redaction import redact
from regularization_pipeline.core.shop.rows import OrderRow, TransactionRow

log = logging.getLogger("regularization_pipeline.gateway")


class GatewaySettings(BaseModel):
    """Where the provider is, how its answer is read, and how fast it may be asked."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str = Field(
        ..., description="The provider API's base URL, e.g. https://api.provider.example/v1."
    )
    path_template: str = Field(
        "/payments/{reference}",
        description="Path appended to base_url; {reference} is the transaction's provider reference "
        "(its id when the mapping has no reference column), {transaction_id} and {order_id} are also available.",
    )
    status_path: str = Field(
        "status", description="Dotted path of the status in the JSON answer, e.g. data.status."
    )
    completed_values: list[str] = Field(
        default_factory=lambda: ["completed", "succeeded", "paid", "captured"]
    )
    failed_values: list[str] = Field(
        default_factory=lambda: ["failed", "declined", "canceled", "cancelled", "expired"]
    )
    refunded_values: list[str] = Field(
        default_factory=lambda: ["refunded", "partially_refunded", "chargeback", "disputed"]
    )
    pending_values: list[str] = Field(
        default_factory=lambda: ["pending", "processing", "requires_action", "authorized"]
    )
    connect_timeout_seconds: float = Field(
        3.0, gt=0, le=60, description="Connect timeout of one request."
    )
    read_timeout_seconds: float = Field(
        10.0, gt=0, le=300, description="Read timeout of one request."
    )
    max_requests_per_second: float = Field(
        5.0, gt=0, le=10_000, description="Token-bucket rate of provider requests."
    )
    burst: int = Field(
        1, ge=1, le=1_000, description="Requests allowed back to back before the rate applies."
    )
    max_retries: int = Field(
        2, ge=0, le=10, description="Extra tries after a transport error, timeout or 5xx."
    )
    retry_delay_seconds: float = Field(
        0.5, ge=0, le=60, description="First delay between those tries; doubles each time."
    )
    max_rate_limited_retries: int = Field(
        3, ge=0, le=20, description="Tries after a 429 before giving up on this order."
    )
    max_wait_seconds: float = Field(
        60.0,
        ge=0,
        le=3600,
        description="Longest wait for the rate limiter or a Retry-After before the order is failed for this run.",
    )

    @field_validator("base_url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("path_template")
    @classmethod
    def _placeholders(cls, value: str) -> str:
        try:
            value.format(reference="r", transaction_id="t", order_id="o")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"unknown placeholder {exc}; use {{reference}}, {{transaction_id}} or {{order_id}}"
            ) from exc
        return value if value.startswith("/") else "/" + value

    @field_validator("status_path")
    @classmethod
    def _dotted(cls, value: str) -> str:
        if not value or any(not part for part in value.split(".")):
            raise ValueError("must be a dotted path such as status or data.status")
        return value

    @classmethod
    def parse(cls, **values: Any) -> GatewaySettings:
        """Validate, naming every offending field (never its value) in one ConfigurationError."""
        return validate_or_explain(cls, values, "gateway settings")

    @classmethod
    def load(cls, base_url: str, settings_file: str | None = None) -> GatewaySettings:
        """``base_url`` plus the rest from a YAML file (status path and values, rate, timeouts)."""
        values = read_yaml_mapping(settings_file, "provider settings file") if settings_file else {}
        return cls.parse(**{**values, "base_url": base_url})

    def classify(self, value: Any) -> str:
        """The provider's status value as one of completed/failed/refunded/pending/unknown."""
        if not isinstance(value, str):
            return ProviderStatus.UNKNOWN
        text = value.strip().lower()
        for status, values in (
            (ProviderStatus.COMPLETED, self.completed_values),
            (ProviderStatus.FAILED, self.failed_values),
            (ProviderStatus.REFUNDED, self.refunded_values),
            (ProviderStatus.PENDING, self.pending_values),
        ):
            if text in {v.strip().lower() for v in values}:
                return status
        return ProviderStatus.UNKNOWN


_MISSING = object()


def dig(document: Any, dotted: str) -> Any:
    """The value at ``a.b.0.c`` in parsed JSON, or a sentinel when any step is missing."""
    node = document
    for part in dotted.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
    return node


def _shown(value: Any) -> str:
    """A provider status value short and printable enough for an audit reason."""
    text = value if isinstance(value, str) else json.dumps(value)[:40]
    return redact("".join(ch for ch in text if ch.isprintable())[:40])  # foreign text (#26)


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
        self.sleeper = sleeper
        self.limiter = limiter or RateLimiter(
            settings.max_requests_per_second, settings.burst, sleeper=sleeper
        )
        headers = {"Accept": "application/json", "User-Agent": "regularization_pipeline/gateway"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.timeout = httpx.Timeout(
            connect=settings.connect_timeout_seconds,
            read=settings.read_timeout_seconds,
            write=settings.read_timeout_seconds,
            pool=settings.connect_timeout_seconds,
        )
        self._owns_client = client is None
        self.client = client or httpx.Client(timeout=self.timeout, follow_redirects=False)
        self._headers = headers
        self.requests_sent = 0
        self.rate_limited_responses = 0  # HTTP 429s received, for the run's metrics

    def url_for(self, order: OrderRow, transaction: TransactionRow) -> str:
        def q(value: Any) -> str:
            return urllib.parse.quote(str(value), safe="")

        reference = (
            transaction.reference if transaction.reference not in (None, "") else transaction.id
        )
        path = self.settings.path_template.format(
            reference=q(reference), transaction_id=q(transaction.id), order_id=q(order.id)
        )
        return self.settings.base_url + path

    def check(self, order: OrderRow, transaction: TransactionRow) -> ProviderAnswer:
        response = self._get(self.url_for(order, transaction), transaction)
        return self._answer(response)

    def _get(self, url: str, transaction: TransactionRow) -> httpx.Response:
        s = self.settings
        failures = rate_limited = 0
        while True:
            try:
                self.limiter.acquire(max_wait=s.max_wait_seconds)
            except RateLimitWaitTooLong as exc:
                raise ProviderUnavailableError(f"provider rate limit: {exc}") from exc
            self.requests_sent += 1
            try:
                response = self.client.get(url, headers=self._headers, timeout=self.timeout)
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

    def _answer(self, response: httpx.Response) -> ProviderAnswer:
        status = response.status_code
        if status == 404:
            return ProviderAnswer(
                ProviderStatus.UNKNOWN, "provider does not know the transaction (HTTP 404)"
            )
        if status in (401, 403):
            raise ProviderRejectedError(f"provider refused our credentials (HTTP {status})")
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
        value = dig(document, self.settings.status_path)
        if value is _MISSING:
            return ProviderAnswer(
                ProviderStatus.UNKNOWN,
                f"no status at {self.settings.status_path!r} in the provider's answer",
            )
        mapped = self.settings.classify(value)
        if mapped == ProviderStatus.UNKNOWN:
            return ProviderAnswer(
                ProviderStatus.UNKNOWN, f"unrecognised provider status {_shown(value)!r}"
            )
        if mapped == ProviderStatus.PENDING:
            return ProviderAnswer(ProviderStatus.PENDING, f"provider status {_shown(value)!r}")
        return ProviderAnswer(mapped, f"provider status {_shown(value)!r}")

    def close(self) -> None:
        if self._owns_client:
            self.client.close()

    def __enter__(self) -> GatewayVerifier:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
