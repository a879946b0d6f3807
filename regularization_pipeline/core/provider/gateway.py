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
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator

from regularization_pipeline.core.config_files import read_yaml_mapping, validate_or_explain
from regularization_pipeline.core.provider.adapter import ProviderAdapter, Request
from regularization_pipeline.core.provider.answers import (
    ProviderAnswer,
    ProviderRejectedError,
    ProviderStatus,
    ProviderUnavailableError,
)
from regularization_pipeline.core.provider.generic import GenericAdapter
from regularization_pipeline.core.provider.mollie import MollieAdapter
from regularization_pipeline.core.provider.paypal import TOKEN_PATH, PayPalAdapter
from regularization_pipeline.core.provider.ratelimit import (
    RateLimiter,
    RateLimitWaitTooLong,
    parse_retry_after,
)
from regularization_pipeline.core.provider.stripe import StripeAdapter
from regularization_pipeline.core.shop.rows import OrderRow, TransactionRow

PROVIDERS = ("generic", "stripe", "mollie", "paypal")

log = logging.getLogger("regularization_pipeline.gateway")


class PendingPayments(BaseModel):
    """Opt-in: ask the provider about payments the shop still has as pending (a lost webhook)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    statuses: list[str] = Field(
        default_factory=lambda: ["pending"],
        min_length=1,
        description="The shop's transaction statuses that mean the payment is still pending.",
    )
    set: dict[str, str] = Field(
        default_factory=dict,
        description="Further columns of the transaction row to set when the provider says captured "
        "(besides status, completed_at and updated_at): a value, or {now}.",
    )


class GatewaySettings(BaseModel):
    """Where the provider is, how its answer is read, and how fast it may be asked."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: Literal["generic", "stripe", "mollie", "paypal"] = Field(
        "generic",
        description="Whose API is asked: stripe, mollie and paypal read that provider's own objects "
        "(docs/providers.md); generic uses path_template, status_path and the value lists.",
    )
    api_version: str | None = Field(
        None,
        description="The provider API version pinned on every request (stripe: Stripe-Version, "
        "default 2024-06-20); mollie and paypal carry theirs in the path (v2).",
    )
    base_url: str = Field(
        ...,
        description="The provider API's base URL: https://api.stripe.com, https://api.mollie.com, "
        "https://api-m.paypal.com, or the generic provider's, e.g. https://api.provider.example/v1.",
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
    amount_path: str | None = Field(
        None,
        description="generic: dotted path of the captured amount in the answer; when set, a completed "
        "answer must carry the order's amount and currency (currency_path).",
    )
    currency_path: str | None = Field(
        None, description="generic: dotted path of the answer's ISO 4217 currency code."
    )
    amount_unit: Literal["major", "minor"] = Field(
        "major",
        description="generic: the amount is a decimal in major units (10.00) or an integer in the "
        "currency's minor units (1000).",
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
    pending_payments: PendingPayments | None = Field(
        None,
        description="Ask the provider about pending payments older than the grace period, and "
        "complete the payment and its order when it says captured (off unless set).",
    )
    outage_after: int = Field(
        3,
        ge=1,
        le=100,
        description="Orders in a row the provider could not answer (after retries) before the run "
        "stops asking: an outage. Fewer are each counted as that order's failure.",
    )
    max_wait_seconds: float = Field(
        60.0,
        ge=0,
        le=3600,
        description="Longest wait for the rate limiter or a Retry-After before the order is failed for this run.",
    )

    @field_validator("api_version")
    @classmethod
    def _version(cls, value: str | None, info: Any) -> str | None:
        provider = info.data.get("provider")
        if provider in ("mollie", "paypal") and value not in (None, "v2"):
            raise ValueError(f"{provider}'s API version is v2 (in the path)")
        return value

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

    @field_validator("status_path", "amount_path", "currency_path")
    @classmethod
    def _dotted(cls, value: str | None) -> str | None:
        if value is not None and (not value or any(not part for part in value.split("."))):
            raise ValueError("must be a dotted path such as status or data.status")
        return value

    def adapter(self) -> ProviderAdapter:
        """The adapter named by ``provider``."""
        if self.provider == "stripe":
            return StripeAdapter(self.api_version)
        if self.provider == "mollie":
            return MollieAdapter(self.api_version)
        if self.provider == "paypal":
            return PayPalAdapter(self.api_version)
        return GenericAdapter(self)

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
                response = self.client.get(
                    url, params=params, headers=headers, timeout=self.timeout
                )
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
