"""The schema mapping: refused early with the field named, checked against the live database,
and honoured end to end under names that are not Laravel's."""

import pytest
import sqlalchemy as sa

from regularization_pipeline.core.detection import orphans as d
from regularization_pipeline.core.detection.scans import inconsistency_report
from regularization_pipeline.core.errors import ConfigurationError, SchemaMismatchError
from regularization_pipeline.core.regularizer import Regularizer, RunOptions
from regularization_pipeline.core.shop.binding import bind_schema
from regularization_pipeline.core.shop.mapping import SchemaMapping, load_mapping
from regularization_pipeline.core.verdicts import INCONSISTENT, REGULARIZED
from regularization_pipeline.demo.shop import ShopWriter
from tests.support.databases import migrated_shop
from tests.support.rows import audit_per_order, no_sleep, outbox_per_order

# --- refused before any database work ---------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "names"),
    [
        ({"statuses": {"order_pending": ["pending", "cancelled"]}}, ["statuses", "'cancelled'"]),
        ({"statuses": {"order_pending": ["completed"]}}, ["statuses", "order_completed"]),
        ({"statuses": {"order_pending": []}}, ["statuses.order_pending"]),
        ({"statuses": {"transaction_completed": []}}, ["statuses.transaction_completed"]),
        ({"statuses": {"order_pending": [""]}}, ["order_pending", "empty"]),
        ({"orders": {"table": "orders; DROP TABLE x"}}, ["orders.table", "orders; DROP TABLE x"]),
        ({"transactions": {"amount": 'amount" --'}}, ["transactions.amount"]),
        ({"orders": {"colour": "red"}}, ["orders.colour"]),
        ({"table_prefix": "Reg-"}, ["table_prefix"]),
    ],
)
def test_invalid_mapping_is_refused_naming_the_field(raw, names):
    with pytest.raises(ConfigurationError) as err:
        SchemaMapping.parse(raw)
    for name in names:
        assert name in str(err.value)


def test_mapping_from_yaml_keeps_defaults_for_what_it_leaves_out(tmp_path):
    path = tmp_path / "schema.yaml"
    path.write_text("transactions:\n  table: payments\nstatuses:\n  order_pending: [PENDING]\n")
    mapping = SchemaMapping.from_yaml(path)
    assert mapping.transactions.table == "payments"
    assert mapping.statuses.order_pending == ("PENDING",)
    assert mapping.orders.table == "orders"


def test_mapping_file_problems_name_the_file(tmp_path, monkeypatch):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigurationError, match="cannot read schema mapping file .*nope.yaml"):
        SchemaMapping.from_yaml(missing)
    bad = tmp_path / "bad.yaml"
    bad.write_text("orders: [unclosed\n")
    with pytest.raises(ConfigurationError, match="bad.yaml.* is not valid YAML"):
        SchemaMapping.from_yaml(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    with pytest.raises(ConfigurationError, match="mapping at the top level"):
        SchemaMapping.from_yaml(scalar)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("orders:\n  table: 'a b'\n")
    with pytest.raises(ConfigurationError, match=r"wrong.yaml: orders.table"):
        SchemaMapping.from_yaml(wrong)
    monkeypatch.setenv("REGULARIZATION_SCHEMA_FILE", str(missing))
    with pytest.raises(ConfigurationError, match="nope.yaml"):
        load_mapping()


# --- checked against the live database ----------------------------------------------------


def test_bind_schema_names_the_missing_table(engine):
    mapping = SchemaMapping.parse({"transactions": {"table": "payments"}})
    ShopWriter(engine).create()  # Laravel names: there is no `payments` table
    with pytest.raises(SchemaMismatchError, match="'payments'"):
        bind_schema(engine, mapping)


def test_bind_schema_names_the_missing_columns(engine):
    ShopWriter(engine).create()
    mapping = SchemaMapping.parse(
        {"orders": {"total": "grand_total"}, "transactions": {"reference": "psp_ref"}}
    )
    with pytest.raises(SchemaMismatchError, match="'orders' lacks column.*'grand_total'"):
        bind_schema(engine, mapping)
    mapping = SchemaMapping.parse({"transactions": {"reference": "psp_ref"}})
    with pytest.raises(SchemaMismatchError, match="'transactions' lacks column.*'psp_ref'"):
        bind_schema(engine, mapping)


def test_bind_schema_refusal_leaves_the_shop_untouched(engine):
    writer = ShopWriter(engine).create()
    order_id = writer.orphan()
    mapping = SchemaMapping.parse({"orders": {"updated_at": "modified_on"}})
    with pytest.raises(SchemaMismatchError, match="modified_on"):
        bind_schema(engine, mapping)
    assert writer.status_of(order_id) == "pending"
    assert not sa.inspect(engine).has_table("regularization_audit")


# --- a shop that is not shaped like Laravel's -----------------------------------------------

CUSTOM = SchemaMapping.parse(
    {
        "orders": {
            "table": "shop_orders",
            "id": "order_no",
            "status": "state",
            "total": "grand_total",
            "currency": None,
            "deleted_at": None,
            "updated_at": None,
        },
        "transactions": {
            "table": "payments",
            "order_id": "order_ref",
            "status": "payment_status",
            "amount": "paid_amount",
            "currency": None,
            "completed_at": None,
        },
        "statuses": {
            "order_pending": ["PENDING", "PENDING_PAYMENT"],
            "order_completed": "COMPLETED",
            "order_do_not_touch": ["CANCELLED"],
            "transaction_completed": ["PAID"],
        },
        "table_prefix": "regx_",
    }
)


def test_custom_mapping_works_end_to_end(engine):
    shop = migrated_shop(engine, CUSTOM)
    orphan = shop.orphan()
    waiting = shop.order(status="PENDING_PAYMENT")
    shop.payment(waiting, amount="49.90")
    recent = shop.orphan(paid_minutes_ago=2)
    unpaid = shop.order()
    shop.payment(unpaid, status="FAILED")
    lowercase = shop.order(
        status="pending"
    )  # case matters: not one of this shop's pending statuses
    shop.payment(lowercase)
    mismatch = shop.order(total="10.00")
    shop.payment(mismatch, amount="9.00")
    closed = shop.order(status="CANCELLED")
    shop.payment(closed)

    with engine.connect() as conn:
        report = inconsistency_report(conn, shop.schema)
    assert report.order_ids[d.AMOUNT_MISMATCH] == [mismatch]
    assert report.order_ids[d.PAID_BUT_CLOSED] == [closed]

    summary = Regularizer(engine, shop.schema, sleeper=no_sleep).run(RunOptions(sleep=0))
    assert summary.regularized == 2
    statuses = {
        i: shop.status_of(i) for i in (orphan, waiting, recent, unpaid, lowercase, mismatch, closed)
    }
    assert statuses == {
        orphan: "COMPLETED",
        waiting: "COMPLETED",
        recent: "PENDING",
        unpaid: "PENDING",
        lowercase: "pending",
        mismatch: "PENDING",
        closed: "CANCELLED",
    }
    assert outbox_per_order(shop) == {str(orphan): 1, str(waiting): 1}
    assert audit_per_order(shop, REGULARIZED) == {str(orphan): 1, str(waiting): 1}
    assert set(audit_per_order(shop, INCONSISTENT)) == {str(mismatch), str(closed)}
    assert sa.inspect(engine).has_table("regx_outbox")
    assert not sa.inspect(engine).has_table("regularization_outbox")


def test_a_mapping_file_that_is_not_a_small_regular_file_is_refused_without_reading_it(tmp_path):
    """Issue 25: /dev/zero grew to 6 GB, a named pipe hung, 50 MB parsed for a minute."""
    import os

    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    big = tmp_path / "big.yaml"
    big.write_text("orders: {}\n" + "#" * (2 * 1024 * 1024))
    for path, reason in [
        (fifo, "is not a regular file"),
        ("/dev/zero", "is not a regular file"),
        (tmp_path, "is not a regular file"),
        (big, "is larger than 1024 KiB"),
    ]:
        with pytest.raises(ConfigurationError, match=reason):
            SchemaMapping.from_yaml(path)


def test_errors_about_a_mapping_file_never_quote_its_content(tmp_path):
    secret = tmp_path / "shadow"
    secret.write_text("root:$6$SECRETHASH:19000:0:99999:7:::\nother: [unclosed\n")
    with pytest.raises(ConfigurationError) as caught:
        SchemaMapping.from_yaml(secret)
    assert "SECRETHASH" not in str(caught.value) and "unclosed" not in str(caught.value)
    assert "is not valid YAML (line " in str(caught.value)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("SECRETHASH\n")
    with pytest.raises(ConfigurationError) as caught:
        SchemaMapping.from_yaml(scalar)
    assert "SECRETHASH" not in str(caught.value)
