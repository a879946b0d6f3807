"""The provider settings: which adapter reads the provider's answers, where the provider is, how
its answer is read (for the generic adapter) and how fast it may be asked. Read from the file
named by ``REGULARIZATION_PROVIDER_SETTINGS``; the URL and the token come from the environment."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from regularization_pipeline.core.config_files import read_yaml_mapping, validate_or_explain
from regularization_pipeline.core.provider.adapter import ProviderAdapter
from regularization_pipeline.core.provider.answers import (
    ProviderStatus,
)
from regularization_pipeline.core.provider.generic import GenericAdapter
from regularization_pipeline.core.provider.mollie import MollieAdapter
from regularization_pipeline.core.provider.paypal import PayPalAdapter
from regularization_pipeline.core.provider.stripe import StripeAdapter

PROVIDERS = ("generic", "stripe", "mollie", "paypal")


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
