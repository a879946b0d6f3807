"""Shops as Dagster partitions: one place decides whether the code location is partitioned.

With ``REGULARIZATION_SHOPS_FILE`` set, every shop of the file is a partition of a static
partitions definition (:data:`SHOP_PARTITIONS`) that every asset and the job share; without it
there is no partitions definition and the code location is the single-shop one it always was.

Static, not dynamic: the shops file is the one source of truth, reviewed and deployed with the
code location, so the partition set is reproducible from the deployed files (a dynamic set lives
in the instance's storage, is changed at run time by whoever can add partitions, and outlives a
shop removed from the file). A shop added to the file appears on the next reload.

A run's shop is its partition (``dagster/partition``, which Dagster sets on every launch path:
the schedule, the Launchpad, a Materialize click, a backfill); a job without partitions (the
operator jobs) names it with the run tag :data:`SHOP_TAG`.
"""

from __future__ import annotations

import json
import warnings

import dagster as dg

from regularization_pipeline.core.errors import ConfigurationError
from regularization_pipeline.core.regularizer import RunOptions
from regularization_pipeline.core.shop.shops import SHOPS_FILE_ENV as SHOPS_FILE
from regularization_pipeline.core.shop.shops import ShopSettings, shops_from_env

# Partitioned asset checks are what shows each shop's check results apart; their preview warning
# would be printed by every process that loads the code location with a shops file.
warnings.filterwarnings(
    "ignore", message=".*partitions_def on an AssetCheckSpec.*", category=dg.PreviewWarning
)

PARTITION_TAG = "dagster/partition"
SHOP_TAG = "regularization/shop"
# Read by dagster-k8s's K8sRunLauncher (ignored by the Docker launcher): the run's Kubernetes Job
# and pod carry the shop as a label, so `kubectl get pods -l regularization/shop=eu` finds them.
K8S_CONFIG_TAG = "dagster-k8s/config"


def shop_tags(name: str) -> dict[str, str]:
    """The tags every run of a shop carries: its name, and its name as a pod label."""
    labels = {"labels": {SHOP_TAG: name}}
    k8s = {"job_metadata": labels, "pod_template_spec_metadata": labels}
    return {SHOP_TAG: name, K8S_CONFIG_TAG: json.dumps(k8s, sort_keys=True)}


def _load() -> dict[str, ShopSettings] | None:
    shops = shops_from_env()
    for shop in (shops or {}).values():
        try:
            RunOptions.parse(**shop.run)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{SHOPS_FILE}: shop {shop.name!r}: {exc}") from None
    return shops


# Read once when the code location loads (the run's process loads it too).
SHOPS: dict[str, ShopSettings] | None = _load()
SHOP_PARTITIONS: dg.StaticPartitionsDefinition | None = (
    dg.StaticPartitionsDefinition(list(SHOPS)) if SHOPS else None
)


def shop_name_of(run: dg.DagsterRun | None) -> str | None:
    """The shop a run is for: its partition, else its ``regularization/shop`` tag."""
    if run is None:
        return None
    return run.tags.get(PARTITION_TAG) or run.tags.get(SHOP_TAG)


def shop_of(name: str | None) -> ShopSettings | None:
    """The shop named (a run's :func:`shop_name_of`) from the shops file; None without a shops
    file (the single-shop variables). Raises ConfigurationError when a shops file is set and
    ``name`` is none of its shops."""
    if SHOPS is None:
        return None
    if name is None:
        raise ConfigurationError(
            f"{SHOPS_FILE} lists shops {', '.join(SHOPS)}: pick one (the run's partition, "
            f"or the run tag {SHOP_TAG})"
        )
    if name not in SHOPS:
        raise ConfigurationError(f"shop {name!r} is not in {SHOPS_FILE}")
    return SHOPS[name]


class ShopAware:
    """Mixed into a resource: the shop it serves, read from the run when the run starts (its
    partition or shop tag), or named with :meth:`for_shop` outside a run (the CLI's checks).
    Each resource declares ``_shop_name`` as a pydantic private attribute."""

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        # Read when first needed: a bad shop fails the step that needs it, with its reason,
        # never the resource's set-up.
        self._shop_name = shop_name_of(context.dagster_run)

    def for_shop(self, name: str | None):
        self._shop_name = name
        return self

    def shop(self) -> ShopSettings | None:
        """The shop from the shops file; None in a single-shop installation."""
        return shop_of(self._shop_name)


def partitioned_config(op_name: str) -> dg.PartitionedConfig | None:
    """The job's run config per shop: the shop's ``run:`` overrides and its tag, filled into the
    Launchpad and every scheduled or backfilled run of that partition."""
    if SHOPS is None or SHOP_PARTITIONS is None:
        return None
    shops = SHOPS
    return dg.PartitionedConfig(
        partitions_def=SHOP_PARTITIONS,
        run_config_for_partition_key_fn=lambda key: {
            "ops": {op_name: {"config": dict(shops[key].run)}}
        },
        tags_for_partition_key_fn=shop_tags,
    )
