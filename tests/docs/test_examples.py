"""The examples in docs/ must stay true to the code."""

import sqlalchemy as sa

from regularization_pipeline.core.regularizer import Regularizer, RunOptions
from regularization_pipeline.core.shop.mapping import SchemaMapping
from regularization_pipeline.core.shop.tables import owned_tables
from tests.support import ROOT
from tests.support.databases import migrated_shop

DOCS = ROOT / "docs"


def test_documented_custom_mapping_regularizes_an_orphan_end_to_end(engine):
    mapping = SchemaMapping.from_yaml(DOCS / "examples" / "schema-mapping.yaml")
    assert (
        mapping.transactions.table == "payments" and mapping.statuses.order_completed == "COMPLETED"
    )
    shop = migrated_shop(engine, mapping)
    orphan = shop.orphan()
    mismatch = shop.order(total="10.00")
    shop.payment(mismatch, amount="12.00", status="PAID")

    summary = Regularizer(engine, shop.schema, sleeper=lambda _s: None).run(RunOptions(sleep=0))

    assert (summary.regularized, summary.inconsistent_by_kind["amount_mismatch"]) == (1, 1)
    assert shop.status_of(orphan) == "COMPLETED"
    assert shop.status_of(mismatch) == "PENDING"
    with engine.connect() as conn:
        keys = conn.execute(sa.select(owned_tables().outbox.c.idempotency_key)).scalars().all()
    assert keys == [f"order-completed:{orphan}"]


def test_documented_provider_settings_load_and_read_a_real_provider_answer():
    from regularization_pipeline.core.provider.gateway import GatewayVerifier
    from regularization_pipeline.core.provider.settings import GatewaySettings
    from regularization_pipeline.core.shop.rows import OrderRow, TransactionRow
    from tests.support.http_stubs import ProviderStub

    with ProviderStub(
        "token", statuses={"pay_1": "succeeded", "pay_2": "chargeback", "pay_3": "requires_action"}
    ) as provider:
        settings = GatewaySettings.load(
            provider.url + "/v1", str(DOCS / "examples" / "provider-settings.yaml")
        )
        with GatewayVerifier(
            settings.model_copy(update={"max_requests_per_second": 1000}), "token"
        ) as verifier:
            answers = [
                verifier.check(
                    OrderRow(i, "pending", "1"),
                    TransactionRow(i, "completed", "1", reference=f"pay_{i}"),
                ).status
                for i in (1, 2, 3)
            ]
    assert answers == ["completed", "refunded", "pending"]


def test_every_mapping_key_has_a_row_in_the_schema_docs_table():
    def keys(model, prefix=""):
        for name, info in type(model).model_fields.items():
            value = getattr(model, name)
            if hasattr(type(value), "model_fields"):
                yield from keys(value, f"{prefix}{name}.")
            else:
                yield f"{prefix}{name}", info.default

    rows = {
        line.split("|")[1].strip(): line.split("|")[2].strip()
        for line in (DOCS / "schema.md").read_text(encoding="utf-8").splitlines()
        if line.startswith("| `")
    }
    for key, default in keys(SchemaMapping()):
        assert f"`{key}`" in rows, f"docs/schema.md has no row for {key}"
        shown = f"[{', '.join(default)}]" if isinstance(default, tuple) else str(default)
        assert rows[f"`{key}`"] == f"`{'null' if default is None else shown}`", key
