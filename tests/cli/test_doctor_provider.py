"""``doctor`` with a provider configured: the adapter and its API version, the token checked by
one read-only request, the completed payments without a provider reference."""

from __future__ import annotations

import yaml

from regularization_pipeline.core.shop.mapping import SchemaMapping
from tests.cli import test_operator_tools
from tests.cli.test_operator_tools import snapshot
from tests.support.databases import migrated_shop
from tests.support.provider_fakes import ProviderFake, stripe_payment_intent

run_cli = test_operator_tools.run_cli

TOKEN = "sk_test_doctor_token"


def stripe_configured(engine, monkeypatch, tmp_path, fake, token=TOKEN):
    mapping = {"transactions": {"reference": "reference"}}
    shop = migrated_shop(engine, SchemaMapping.parse(mapping))
    schema_file = tmp_path / "schema.yaml"
    schema_file.write_text(yaml.safe_dump(mapping))
    settings = tmp_path / "provider.yaml"
    settings.write_text(yaml.safe_dump({"provider": "stripe", "retry_delay_seconds": 0}))
    monkeypatch.setenv("REGULARIZATION_SCHEMA_FILE", str(schema_file))
    monkeypatch.setenv("REGULARIZATION_PROVIDER_URL", fake.url)
    monkeypatch.setenv("REGULARIZATION_PROVIDER_TOKEN", token)
    monkeypatch.setenv("REGULARIZATION_PROVIDER_SETTINGS", str(settings))
    return shop


def test_doctor_names_the_adapter_checks_the_token_once_and_counts_missing_references(
    engine, run_cli, monkeypatch, tmp_path
):
    with ProviderFake(TOKEN) as fake:
        shop = stripe_configured(engine, monkeypatch, tmp_path, fake)
        # Paid within the hour: doctor refuses a shop whose newest payment looks older (a zone)
        first, second = shop.orphans(2, paid_minutes_ago=30)
        t, table = shop.mapping.transactions, shop.tables.transactions
        with engine.begin() as conn:
            conn.execute(
                table.update().where(table.c[t.order_id] == first).values({t.reference: None})
            )
            conn.execute(
                table.update().where(table.c[t.order_id] == second).values({t.reference: "pi_ok"})
            )
        fake.put("/v1/payment_intents/pi_ok", stripe_payment_intent("pi_ok", 4990, "eur"))
        before = snapshot(shop)
        code, out, _err = run_cli("doctor")
        requests = fake.snapshot()
    assert "adapter: stripe, API version: 2024-06-20" in out
    assert "completed transactions without a provider reference: 1" in out
    assert "token: accepted" in out and TOKEN not in out
    assert code == 0 and snapshot(shop) == before  # read-only
    assert [r.path.split("?")[0] for r in requests] == ["/v1/payment_intents/pi_ok"]


def test_doctor_refuses_a_token_the_provider_rejects(engine, run_cli, monkeypatch, tmp_path):
    with ProviderFake("the-right-token") as fake:
        shop = stripe_configured(engine, monkeypatch, tmp_path, fake, token="sk_test_wrong")
        shop.orphans(1)
        code, out, err = run_cli("doctor")
    assert code == 2
    assert "REFUSED: the provider refused our credentials" in out and "HTTP 401" in out
    assert "sk_test_wrong" not in out + err


def test_no_provider_section_without_a_provider(shop, run_cli):
    code, out, _err = run_cli("doctor")
    assert code == 0 and "== payment provider" not in out
