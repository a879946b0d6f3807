"""`regularize-completed-orders doctor` and the UI's doctor job: read-only, exit 2 on a mapping that would act wrongly."""

import dagster as dg
import yaml

from regularization_pipeline.defs import operator_jobs
from tests.cli import test_operator_tools
from tests.cli.test_operator_tools import snapshot
from tests.support.dagster import resources

run_cli = test_operator_tools.run_cli  # the same fixture: main(argv) -> (code, stdout, stderr)


def wrong_mapping(tmp_path, monkeypatch) -> None:
    path = tmp_path / "mapping.yaml"
    path.write_text(yaml.safe_dump({"statuses": {"transaction_completed": ["COMPLETED"]}}))
    monkeypatch.setenv("REGULARIZATION_SCHEMA_FILE", str(path))


def test_doctor_prints_the_report_and_exits_0_on_a_ready_shop(shop, run_cli):
    shop.orphan(paid_minutes_ago=30)
    before = snapshot(shop)

    code, out, err = run_cli("doctor")

    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[-1] == "verdict: ready, the schedule can be switched on"
    assert "  'pending': 1 order(s), pending" in lines
    assert "  orphans: 1, of which fixable: 1" in lines
    assert snapshot(shop) == before


def test_doctor_exits_2_with_the_verdict_on_a_mapping_that_would_act_wrongly(
    shop, run_cli, tmp_path, monkeypatch
):
    shop.orphan(paid_minutes_ago=30)
    before = snapshot(shop)
    wrong_mapping(tmp_path, monkeypatch)

    code, out, err = run_cli("doctor")

    verdict = (
        "verdict: REFUSED, the mapping would act wrongly (1 problem(s), first: transaction "
        "status 'COMPLETED' is listed as completed but no transaction has it (statuses compare "
        "exactly, case included)); do not switch the schedule on"
    )
    assert code == 2
    assert err == f"error: {verdict}\n"
    assert out.splitlines()[-1] == verdict
    assert snapshot(shop) == before


def test_doctor_job_logs_the_report_and_fails_with_the_verdict(shop, db_url, tmp_path, monkeypatch):
    shop.orphan(paid_minutes_ago=30)
    with dg.instance_for_test() as instance:
        good = operator_jobs.doctor.execute_in_process(
            resources=resources(db_url), instance=instance
        )
        assert good.success
        wrong_mapping(tmp_path, monkeypatch)
        bad = operator_jobs.doctor.execute_in_process(
            resources=resources(db_url), instance=instance, raise_on_error=False
        )
    assert not bad.success
    (failure,) = bad.get_step_failure_events()
    assert failure.step_failure_data.user_failure_data.description.startswith(
        "verdict: REFUSED, the mapping would act wrongly (1 problem(s), first: transaction "
        "status 'COMPLETED'"
    )
