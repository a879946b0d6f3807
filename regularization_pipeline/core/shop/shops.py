"""Many shops in one installation: the shops file (``REGULARIZATION_SHOPS_FILE``).

Each shop has a name (its Dagster partition key), its database URL read from an environment
variable or a secret file (never written in the file itself: the file is config, reviewed and
committed, the URL carries a password), its mapping file, its zone, and optional overrides of the
run options, the schedule, the provider and the publishers. Without the file the single-shop
variables work as they always have: one shop, named :data:`DEFAULT_SHOP`.

```yaml
shops:
  - name: eu
    database_url: {env: SHOP_EU_DATABASE_URL}     # or {file: /run/secrets/shop-eu-url}
    schema_file: /opt/dagster/config/eu.yaml
    timezone: Europe/Paris
    run: {limit: 200, sleep: 0}                   # RunOptions fields
    scheduled: true                               # false: only launched by hand
    provider: {url: {env: EU_PROVIDER_URL}, token: {env: EU_PROVIDER_TOKEN}}
    publishers: {kinds: [webhook], webhook_url: {env: EU_HOOK_URL}, webhook_secret: {file: /run/secrets/eu-hook}}
```
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from regularization_pipeline.core.config_files import read_yaml_mapping, validate_or_explain
from regularization_pipeline.core.errors import ConfigurationError
from regularization_pipeline.core.shop.mapping import SchemaMapping, load_mapping

# Many shops in one code location: the shops file (docs/operations.md, "Many shops"); each shop a partition.
SHOPS_FILE_ENV = "REGULARIZATION_SHOPS_FILE"
# The one shop of an installation configured by the single-shop variables alone.
DEFAULT_SHOP = "default"
# A Dagster partition key, a Kubernetes label value and a file name, all at once.
SHOP_NAME_PATTERN = r"^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$"
# The publisher settings that are secrets (they carry a password or sign requests): references only.
SECRET_PUBLISHER_FIELDS = frozenset(
    {
        "webhook_url",
        "webhook_secret",
        "webhook_secret_previous",
        "laravel_redis_url",
        "rabbitmq_url",
    }
)
MAX_SECRET_FILE_BYTES = 64 * 1024
INLINE_REFUSED = "must be {env: VARIABLE} or {file: PATH}, never the value itself"


class SecretRef(BaseModel):
    """Where a secret is read at run time: an environment variable or a file (a mounted secret)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    file: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of env or file")
        return self

    def where(self) -> str:
        return f"${self.env}" if self.env else f"file {self.file!r}"

    def read(self, what: str) -> str:
        """The secret's value; ConfigurationError naming where it was looked for (never the value)."""
        if self.env is not None:
            value = os.environ.get(self.env, "").strip()
            if not value:
                raise ConfigurationError(f"{what}: {self.where()} is not set")
            return value
        try:
            with open(self.file or "", "rb") as secret:
                data = secret.read(MAX_SECRET_FILE_BYTES + 1)
        except OSError as exc:
            raise ConfigurationError(f"{what}: cannot read {self.where()}: {exc.strerror}") from exc
        if len(data) > MAX_SECRET_FILE_BYTES:
            raise ConfigurationError(f"{what}: {self.where()} is too large for a secret")
        value = data.decode("utf-8", errors="replace").strip()
        if not value:
            raise ConfigurationError(f"{what}: {self.where()} is empty")
        return value


def _refuse_inline(value: Any) -> Any:
    if isinstance(value, str):
        raise ValueError(INLINE_REFUSED)
    return value


class ProviderRef(BaseModel):
    """The shop's own payment provider: its URL and token by reference, the rest in a file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: SecretRef
    token: SecretRef | None = None
    settings_file: str | None = None

    @field_validator("url", "token", mode="before")
    @classmethod
    def _by_reference(cls, value: Any) -> Any:
        return _refuse_inline(value)


class ShopSettings(BaseModel):
    """One shop of the shops file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=SHOP_NAME_PATTERN, description="The shop's name: its partition key.")
    database_url: SecretRef = Field(description="The shop's SQLAlchemy URL, by reference.")
    schema_file: str | None = Field(
        None,
        description="The shop's mapping file; REGULARIZATION_SCHEMA_FILE's, else Laravel's defaults, when unset.",
    )
    timezone: str | None = Field(
        None, description="The shop's zone; overrides the mapping's timezone."
    )
    table_prefix: str | None = Field(None, description="Overrides the mapping's table_prefix.")
    scheduled: bool = Field(
        True, description="false: the schedule leaves the shop out (launch it by hand)."
    )
    run: dict[str, Any] = Field(
        default_factory=dict, description="Run option overrides (RunOptions fields)."
    )
    provider: ProviderRef | None = Field(
        None, description="The shop's provider; the installation's when unset."
    )
    publishers: dict[str, Any] = Field(
        default_factory=dict,
        description="Publisher setting overrides (kinds, webhook_url, laravel_queue, ...); secrets by reference.",
    )

    @field_validator("database_url", mode="before")
    @classmethod
    def _by_reference(cls, value: Any) -> Any:
        return _refuse_inline(value)

    @field_validator("publishers")
    @classmethod
    def _secrets_by_reference(cls, value: dict[str, Any]) -> dict[str, Any]:
        checked = dict(value)
        for field in SECRET_PUBLISHER_FIELDS & value.keys():
            if not isinstance(value[field], dict):
                raise ValueError(f"{field} {INLINE_REFUSED}")
            checked[field] = SecretRef.model_validate(value[field])
        return checked

    def publisher_overrides(self) -> dict[str, Any]:
        """The publisher overrides, each secret read now (at run time, in the run's process)."""
        return {
            key: value.read(f"shop {self.name!r}: publishers.{key}")
            if isinstance(value, SecretRef)
            else value
            for key, value in self.publishers.items()
        }

    def read_database_url(self) -> str:
        return self.database_url.read(f"shop {self.name!r}: database_url")

    def mapping(self) -> SchemaMapping:
        """The shop's mapping file (REGULARIZATION_SCHEMA_FILE's when unset), with its zone and
        table prefix over the file's."""
        return with_overrides(
            load_mapping(self.schema_file), timezone=self.timezone, table_prefix=self.table_prefix
        )


def with_overrides(mapping: SchemaMapping, **overrides: str | None) -> SchemaMapping:
    """``mapping`` with each override that is set and differs, validated again as a whole."""
    changed = {
        key: value
        for key, value in overrides.items()
        if value is not None and value != getattr(mapping, key)
    }
    if not changed:
        return mapping
    return SchemaMapping.parse({**mapping.model_dump(), **changed}, source=" and ".join(changed))


class ShopsFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    shops: list[dict[str, Any]] = Field(min_length=1)


def load_shops(path: str | os.PathLike[str]) -> dict[str, ShopSettings]:
    """The shops of the file, by name, in the file's order; one ConfigurationError naming the
    file, the shop and the field for anything wrong (a secret's value is never quoted)."""
    shown = f"shops file {str(Path(path))!r}"
    listed = validate_or_explain(ShopsFile, read_yaml_mapping(path, "shops file"), shown)
    shops: dict[str, ShopSettings] = {}
    for index, raw in enumerate(listed.shops):
        label = (
            raw.get("name")
            if isinstance(raw, dict) and isinstance(raw.get("name"), str)
            else f"#{index + 1}"
        )
        shop = validate_or_explain(ShopSettings, raw, f"{shown}, shop {label!r}")
        if shop.name in shops:
            raise ConfigurationError(f"{shown}: shop {shop.name!r} is listed twice")
        shops[shop.name] = shop
    return shops


def shops_file_from_env() -> str | None:
    return os.environ.get(SHOPS_FILE_ENV, "").strip() or None


def shops_from_env() -> dict[str, ShopSettings] | None:
    """The shops of ``$REGULARIZATION_SHOPS_FILE``, or None: the single-shop variables then."""
    path = shops_file_from_env()
    return load_shops(path) if path else None
