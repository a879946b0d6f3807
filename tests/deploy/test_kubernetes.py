"""The Kubernetes path: the Helm values of docs/operations.md against the shape of the Dagster
chart's schema, their `concurrency:` block loaded into a real instance, and Dagster's own
K8sRunLauncher building a shop's run Job (in dagster-k8s's unit-test style: a fake kubeconfig,
the batch API replaced at its boundary, the Job body inspected)."""

from __future__ import annotations

import json
import re
from typing import Any, Literal
from unittest import mock

import dagster as dg
import pytest
import yaml
from pydantic import BaseModel, ConfigDict

from regularization_pipeline.defs import jobs
from regularization_pipeline.defs.shops import K8S_CONFIG_TAG, SHOP_TAG, shop_tags
from tests.support import ROOT

RUNBOOK = ROOT / "docs" / "operations.md"


def helm_values() -> dict:
    """The one YAML block of the runbook's "Scaling past one machine" section."""
    text = RUNBOOK.read_text()
    section = text[text.index("## Scaling past one machine") :].split("\n## ", 1)[0]
    (block,) = re.findall(r"```yaml\n(.*?)```", section, re.S)
    return yaml.safe_load(block)


# The chart's schema (helm/dagster/schema/.../subschema/concurrency.py, daemon.py,
# run_launcher.py at dagster 1.13), the parts these values use: unknown keys are refused there.
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ConcurrencyPools(_Strict):
    defaultLimit: int | None = None
    granularity: Literal["run", "op"] | None = None
    opGranularityRunBuffer: int | None = None


class PerUniqueValue(_Strict):
    applyLimitPerUniqueValue: bool


class TagConcurrencyLimit(_Strict):
    key: str
    value: str | PerUniqueValue | None = None
    limit: int


class ConcurrencyRuns(_Strict):
    maxConcurrentRuns: int | None = None
    tagConcurrencyLimits: list[TagConcurrencyLimit] = []


class Concurrency(_Strict):
    enabled: bool = False
    pools: ConcurrencyPools = ConcurrencyPools()
    runs: ConcurrencyRuns = ConcurrencyRuns()


class QueuedRunCoordinatorConfig(_Strict):
    maxConcurrentRuns: int | None = None
    tagConcurrencyLimits: list[TagConcurrencyLimit] | None = None
    dequeueIntervalSeconds: int | None = None


class K8sRunLauncherConfig(_Strict):
    envSecrets: list[dict[str, str]] = []
    envConfigMaps: list[dict[str, str]] = []
    envVars: list[str] = []
    resources: dict[str, Any] | None = None
    labels: dict[str, str] | None = None
    runK8sConfig: dict[str, Any] | None = None


def test_the_runbooks_helm_values_fit_the_charts_schema_with_limits_in_concurrency_only():
    values = helm_values()
    concurrency = Concurrency.model_validate(values["concurrency"])
    assert concurrency.enabled
    launcher = values["runLauncher"]
    assert launcher["type"] == "K8sRunLauncher"
    k8s = K8sRunLauncherConfig.model_validate(launcher["config"]["k8sRunLauncher"])
    assert {"name": "regularization-secrets"} in k8s.envSecrets
    coordinator = values["dagsterDaemon"]["runCoordinator"]
    queued = QueuedRunCoordinatorConfig.model_validate(
        coordinator.get("config", {}).get("queuedRunCoordinator", {})
    )
    # The chart's template fails `helm template` when both places set limits.
    assert queued.maxConcurrentRuns is None and not queued.tagConcurrencyLimits
    # A pool without a limit is never blocked.
    assert concurrency.pools.defaultLimit == 1


def rendered_concurrency(values: dict) -> dict:
    """What the chart's `dagsterYaml.concurrency` template writes into dagster.yaml."""
    pools, runs = values["concurrency"]["pools"], values["concurrency"]["runs"]
    return {
        "pools": {"default_limit": pools["defaultLimit"], "granularity": pools["granularity"]},
        "runs": {
            "max_concurrent_runs": runs["maxConcurrentRuns"],
            "tag_concurrency_limits": runs["tagConcurrencyLimits"],
        },
    }


def test_the_helm_concurrency_block_loads_into_an_instance_as_the_docker_instances_limits():
    concurrency = rendered_concurrency(helm_values())
    docker = yaml.safe_load((ROOT / "docker" / "dagster.yaml").read_text())["concurrency"]
    assert concurrency["pools"] == docker["pools"]
    assert concurrency["runs"]["tag_concurrency_limits"] == docker["runs"]["tag_concurrency_limits"]
    with dg.instance_for_test(overrides={"concurrency": concurrency}) as instance:
        config = instance.get_concurrency_config()
        queue = config.run_queue_config
        limits = {
            (lim["key"], json.dumps(lim.get("value"))) for lim in queue.tag_concurrency_limits
        }
        assert (jobs.CONCURRENCY_TAG, json.dumps(jobs.JOB_NAME)) in limits
        assert ("dagster/partition", json.dumps({"applyLimitPerUniqueValue": True})) in limits
        assert queue.max_concurrent_runs == 10
        assert config.pool_config.default_pool_limit == 1


# --- K8sRunLauncher, at the batch API's boundary -------------------------------------------

FAKE_KUBECONFIG = """
apiVersion: v1
kind: Config
clusters:
- cluster: {server: "https://127.0.0.1:6443", insecure-skip-tls-verify: true}
  name: fake
contexts:
- context: {cluster: fake, user: fake}
  name: fake
current-context: fake
users:
- name: fake
  user: {token: not-a-token}
"""


@pytest.fixture
def kubeconfig_file(tmp_path):
    path = tmp_path / "kubeconfig"
    path.write_text(FAKE_KUBECONFIG)
    return str(path)


def test_k8s_run_launcher_builds_a_shops_run_job_with_its_image_secrets_label_and_resources(
    kubeconfig_file,
):
    from dagster._core.launcher import LaunchRunContext
    from dagster._core.remote_representation.handle import RepositoryHandle
    from dagster._core.test_utils import create_run_for_test, in_process_test_workspace
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
    from dagster._utils.hosted_user_process import remote_job_from_recon_job
    from dagster_k8s import K8sRunLauncher

    values = helm_values()["runLauncher"]["config"]["k8sRunLauncher"]
    batch_api = mock.MagicMock()
    launcher = K8sRunLauncher(
        service_account_name="dagster",
        instance_config_map="dagster-instance",
        postgres_password_secret="dagster-postgresql-secret",
        dagster_home="/opt/dagster/dagster_home",
        job_image="registry.example.com/regularization_pipeline:1.0.0",
        load_incluster_config=False,
        kubeconfig_file=kubeconfig_file,
        k8s_client_batch_api=batch_api,
        env_secrets=[secret["name"] for secret in values["envSecrets"]],
        resources=values["resources"],
    )
    recon_job = dg.reconstructable(regularize_job)
    origin = LoadableTargetOrigin(python_file=__file__, attribute="regularize_job")
    with (
        dg.instance_for_test() as instance,
        in_process_test_workspace(instance, origin) as workspace,
    ):
        location = workspace.get_code_location(workspace.code_location_names[0])
        handle = RepositoryHandle.from_location(
            repository_name=recon_job.repository.get_definition().name, code_location=location
        )
        remote_job = remote_job_from_recon_job(
            recon_job, op_selection=None, repository_handle=handle
        )
        run = create_run_for_test(
            instance,
            job_name="regularize_job",
            tags={**shop_tags("eu"), "dagster/partition": "eu"},
            remote_job_origin=remote_job.get_remote_origin(),
            job_code_origin=remote_job.get_python_origin(),
        )
        launcher.register_instance(instance)
        launcher.launch_run(LaunchRunContext(run, workspace))

    method, _args, kwargs = batch_api.method_calls[-1]
    assert method == "create_namespaced_job"
    body = kwargs["body"]
    container = body.spec.template.spec.containers[0]
    assert container.image == "registry.example.com/regularization_pipeline:1.0.0"
    assert [source.secret_ref.name for source in container.env_from if source.secret_ref] == [
        "regularization-secrets"
    ]
    resources = container.resources.to_dict()
    resources.pop("claims", None)
    assert resources == {
        "requests": {"cpu": "250m", "memory": "512Mi"},
        "limits": {"memory": "1Gi"},
    }
    assert body.spec.template.metadata.labels[SHOP_TAG] == "eu"
    assert body.metadata.labels[SHOP_TAG] == "eu"
    assert json.loads(run.tags[K8S_CONFIG_TAG])["pod_template_spec_metadata"]["labels"] == {
        SHOP_TAG: "eu"
    }


@dg.job
def regularize_job():
    """Stands for the code location's job: the launcher reads only the run and its origin."""
