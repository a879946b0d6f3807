"""Run config of regularized_orders: derived from RunOptions, and bad values fail at once, changing nothing."""

from __future__ import annotations

import dagster as dg
import pytest
import sqlalchemy as sa

from regularization_pipeline.core.regularizer import RunOptions
from regularization_pipeline.core.shop import tables as tb
from regularization_pipeline.definitions import defs
from regularization_pipeline.defs.config import DEFAULT_MAX_RUNTIME_SECONDS, RegularizeConfig
from regularization_pipeline.defs.config_fields import bounds_of, dagster_config_type
from tests.support.dagster import materialize_all
from tests.support.rows import outbox_states


def test_config_fields_mirror_run_options():
    config_fields, option_fields = RegularizeConfig.model_fields, RunOptions.model_fields
    assert list(config_fields) == list(option_fields)
    for name, option in option_fields.items():
        expected_default = (
            DEFAULT_MAX_RUNTIME_SECONDS if name == "max_runtime_seconds" else option.default
        )
        assert config_fields[name].default == expected_default, name
        assert config_fields[name].description.startswith(option.description), name
        assert config_fields[name].annotation == dagster_config_type(option.annotation), name
    assert (
        config_fields["since"].annotation == str | None
    )  # ISO strings: Dagster config has no datetime
    assert "Must be >= 1, <= 10000000." in config_fields["limit"].description
    assert bounds_of("sleep", RunOptions) == ">= 0, <= 3600"


def test_the_job_exposes_every_field_with_its_description():
    job = defs.resolve_job_def("regularize_completed_orders")
    ops = job.run_config_schema.config_type.fields["ops"].config_type.fields
    fields = ops["regularized_orders"].config_type.fields["config"].config_type.fields
    assert set(fields) == set(RunOptions.model_fields)
    assert fields["limit"].default_value == 50 and fields["sleep"].default_value == 2.0
    assert "original --limit" in fields["limit"].description


def test_defaults_are_valid_run_options():
    options = RegularizeConfig().to_run_options()
    assert (options.limit, options.sleep, options.dry_run, options.lookback_hours) == (
        50,
        2.0,
        False,
        None,
    )


# Validation happens before any database work: one backend is enough.
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"sleep": -1.0}, "sleep"),
        ({"lookback_hours": 0.0}, "lookback_hours"),
        ({"since": "not a date"}, "since"),
        (
            {"since": "2030-01-02T00:00:00", "until": "2030-01-01T00:00:00"},
            "since must be earlier than until",
        ),
    ],
)
def test_bad_config_fails_once_naming_the_field_and_changes_nothing(shop, monkeypatch, bad, field):
    monkeypatch.setenv("REGULARIZATION_DATABASE_URL", str(shop.engine.url))
    order_ids = shop.orphans(2)
    with dg.instance_for_test() as instance:
        result = materialize_all(
            shop.engine.url.render_as_string(hide_password=False),
            instance,
            raise_on_error=False,
            **bad,
        )

        assert not result.success
        # The run's first step refuses it: its first and only error, before any check.
        (failure,) = result.get_step_failure_events()
        assert failure.step_key == "observe_app_orders"
        assert not result.get_asset_check_evaluations()
        description = failure.step_failure_data.user_failure_data.description
        assert field in description and "invalid run options" in description
        # Permanent: the retry policy must not repeat it.
        assert not [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert [shop.status_of(i) for i in order_ids] == ["pending", "pending"]
    assert outbox_states(shop.engine) == {}
    assert not _audit_count(shop.engine)


def _audit_count(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(
            sa.select(sa.func.count()).select_from(tb.owned_tables().audit)
        ).scalar_one()
