"""Optional verification with the payment provider's API."""

from __future__ import annotations

import dagster as dg
from pydantic import Field, PrivateAttr

from regularization_pipeline.core.errors import ConfigurationError
from regularization_pipeline.core.provider.gateway import GatewayVerifier
from regularization_pipeline.core.provider.settings import GatewaySettings
from regularization_pipeline.defs.resources.environment import (
    secret_from_env,
)
from regularization_pipeline.defs.shops import ShopAware

# Optional verification with the payment provider's API.
PROVIDER_URL_ENV = "REGULARIZATION_PROVIDER_URL"


PROVIDER_TOKEN_ENV = "REGULARIZATION_PROVIDER_TOKEN"  # noqa: S105 - the variable's name, not a secret


PROVIDER_SETTINGS_ENV = "REGULARIZATION_PROVIDER_SETTINGS"

# GatewaySettings fields that come from the environment, not from the settings file.
FROM_ENVIRONMENT = ("base_url",)
# The settings file holds every other GatewaySettings field: named from the model, so a field
# added to core is documented here (and in the UI) without a second list to keep in step.
FILE_SETTINGS = tuple(name for name in GatewaySettings.model_fields if name not in FROM_ENVIRONMENT)


class PaymentGatewayResource(ShopAware, dg.ConfigurableResource):
    """Optional verification of each payment with the provider's API, rate-limited; off unless base_url is set.

    The provider is asked before an order's row lock is taken, by the adapter the
    settings' ``provider`` names (stripe, mollie, paypal, generic). Captured for the
    order's amount and currency lets the order be regularized; failed, refunded,
    disputed, authorized only or another amount holds it as provider_failed; pending,
    unknown or an outage leaves it for the next run.
    The token comes from REGULARIZATION_PROVIDER_TOKEN through dg.EnvVar.
    """

    base_url: str | None = Field(
        default=None,
        description=f"{GatewaySettings.model_fields['base_url'].description} "
        "Read from REGULARIZATION_PROVIDER_URL; verification is off when unset.",
    )
    token: str | None = Field(
        default=None,
        description="Bearer token; for PayPal client_id:client_secret (REGULARIZATION_PROVIDER_TOKEN, via dg.EnvVar).",
    )
    settings_file: str | None = Field(
        default=None,
        description="YAML file with the rest of the provider settings (REGULARIZATION_PROVIDER_SETTINGS): "
        f"{', '.join(FILE_SETTINGS)}; see docs/providers.md.",
    )

    _shop_name: str | None = PrivateAttr(default=None)

    def _effective(self) -> tuple[str | None, str | None, str | None]:
        """base_url, token and settings file: the run's shop's ``provider:`` when it has one."""
        shop = self.shop()
        if shop is None or shop.provider is None:
            return self.base_url, self.token, self.settings_file
        what = f"shop {shop.name!r}: provider"
        provider = shop.provider
        token = provider.token.read(f"{what}.token") if provider.token else None
        return provider.url.read(f"{what}.url"), token, provider.settings_file

    @property
    def enabled(self) -> bool:
        return bool(self._effective()[0])

    def settings(self) -> GatewaySettings:
        """Validated settings; raises ConfigurationError naming the field or file."""
        base_url, _, settings_file = self._effective()
        return GatewaySettings.load(base_url or "", settings_file)

    def verifier(self) -> GatewayVerifier | None:
        """A verifier for one run (close it when done), or None when verification is off."""
        base_url, token, _ = self._effective()
        if not base_url:
            return None
        settings = self.settings()
        if not token:
            raise ConfigurationError(
                "provider verification is on (base_url is set) but REGULARIZATION_PROVIDER_TOKEN is not"
            )
        return GatewayVerifier(settings, token)

    @classmethod
    def from_env(cls) -> PaymentGatewayResource:
        """REGULARIZATION_PROVIDER_URL, _TOKEN (read at run time) and _SETTINGS."""
        return cls(
            base_url=secret_from_env(PROVIDER_URL_ENV),
            token=secret_from_env(PROVIDER_TOKEN_ENV),
            settings_file=secret_from_env(PROVIDER_SETTINGS_ENV),
        )
