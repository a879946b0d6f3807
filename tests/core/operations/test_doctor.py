"""doctor: every status classified, dangerous mappings refused, indexes, server, zone, what a run would do."""

from zoneinfo import ZoneInfo

import pytest

from regularization_pipeline.core.errors import ConfigurationError
from regularization_pipeline.core.operations.doctor import diagnose
from regularization_pipeline.core.shop.binding import bind_schema
from regularization_pipeline.core.shop.mapping import SchemaMapping
from tests.support.databases import migrated_shop


def doctor(shop, mapping: SchemaMapping | None = None):
    schema = bind_schema(shop.engine, mapping) if mapping else shop.schema
    with shop.engine.connect() as conn:
        return diagnose(conn, schema, now=shop.now)


def section(report, title: str) -> list[str]:
    return dict(report.sections)[title]


def test_a_healthy_shop_is_ready_and_says_what_a_run_would_do(shop):
    shop.orphan()
    shop.orphan(paid_minutes_ago=3)  # left to its webhook
    shop.payment(shop.order(total="10.00"), amount="9.00")  # amount mismatch: held
    shop.payment(shop.order(status="completed"))

    report = doctor(shop)

    assert report.warnings == [] and report.refusals == []
    assert report.lines()[-1] == "verdict: ready, the schedule can be switched on"
    assert section(report, "order statuses") == [
        "'completed': 1 order(s), repaired-to",
        "'pending': 3 order(s), pending",
    ]
    assert section(report, "transaction statuses") == ["'completed': 4 transaction(s), completed"]
    assert section(report, "recommended indexes") == [
        "present: orders (status, id)",
        "present: transactions (order_id, status)",
        "present: transactions (status, completed_at)",
    ]
    assert section(report, "what a run would do now (default options)") == [
        "orphans: 2, of which fixable: 1",
        "held, reported and never fixed: amount_mismatch: 1",
        "held, quarantined after failures: 0",
        "recent payments left to their webhook (last 10 min): 1",
    ]
    server = section(report, "server")
    expected = {
        "sqlite": "SKIP LOCKED: no (SQLite: a run holds the database's write lock instead)",
        "postgresql": "session TimeZone: UTC (pinned by the pipeline)",
        "mysql": "collation: database utf8mb4_unicode_ci, session utf8mb4_unicode_ci",
    }[shop.engine.dialect.name]
    assert expected in server


def test_unclassified_look_alikes_and_a_missing_index_are_flagged(shop):
    shop.payment(shop.order(status="chargeback"), completed_minutes_ago=30)
    shop.order(status="voided")
    shop.order(status="shipped")
    shop.payment(shop.order(), status="paid", completed_minutes_ago=30)
    shop.orphan(paid_minutes_ago=30)  # paid within the hour: the zone looks plausible
    (index,) = [i for i in shop.tables.transactions.indexes if i.name.endswith("_order_status")]
    index.drop(shop.engine)

    report = doctor(shop)

    quote = shop.engine.dialect.identifier_preparer.quote
    assert quote("order_id") == "order_id"  # plain names print unquoted on every backend
    assert report.warnings == [
        "order status 'chargeback' looks like chargeback but is not in "
        "statuses.order_do_not_touch: a completed payment on it goes unreported",
        "order status 'voided' looks like cancellation but is not in "
        "statuses.order_do_not_touch: a completed payment on it goes unreported",
        "transaction status 'paid' looks like paid but is not in "
        "statuses.transaction_completed: its orders are never found",
        "missing: transactions (order_id, status); create it with: CREATE INDEX "
        "ix_transactions_order_status ON transactions (order_id, status);",
    ]
    assert "'shipped': 1 order(s), ignored" in section(report, "order statuses")
    assert not report.acts_wrongly
    assert report.verdict == "verdict: ready, with 4 warning(s) to read first"


def test_a_mapping_that_would_act_wrongly_is_refused_with_the_reasons(engine):
    mapping = SchemaMapping.parse(
        {
            "statuses": {
                "transaction_completed": ["COMPLETED"],  # the shop writes 'completed'
                "order_completed": "shipped",  # what no paid order has become in this shop
                "order_do_not_touch": ["cancelled"],
            }
        }
    )
    shop = migrated_shop(engine, mapping)
    shop.order(status="shipped")
    shop.payment(shop.order(), status="completed", completed_minutes_ago=30)

    report = doctor(shop)

    assert report.refusals == [
        "no order in the repaired status 'shipped' has a completed payment: in this shop it "
        "is not what a paid order becomes",
        "transaction status 'COMPLETED' is listed as completed but no transaction has it "
        "(statuses compare exactly, case included)",
    ]
    assert report.acts_wrongly
    assert report.verdict.startswith(
        "verdict: REFUSED, the mapping would act wrongly (2 problem(s), first: no order in the"
    )


def test_an_unused_completed_word_beside_used_ones_is_warned_not_refused(engine):
    """A list of synonyms (docs/examples/schema-mapping.yaml) is sound; runs are not refused."""
    mapping = SchemaMapping.parse({"statuses": {"transaction_completed": ["completed", "PAID"]}})
    shop = migrated_shop(engine, mapping)
    shop.orphan(paid_minutes_ago=30)

    report = doctor(shop)

    assert report.refusals == []
    assert report.warnings == [
        "transaction status 'PAID' is listed as completed but no transaction has it "
        "(statuses compare exactly, case included)"
    ]


@pytest.mark.parametrize(
    ("mapping", "refusal"),
    [
        (
            {"statuses": {"order_completed": "canceled", "order_do_not_touch": ["failed"]}},
            "order_completed 'canceled' reads as cancellation: it is not what a paid order becomes",
        ),
        (
            {"statuses": {"transaction_completed": ["completed", "refunded"]}},
            "transaction_completed 'refunded' reads as refund: unpaid orders would be completed",
        ),
        (
            {"statuses": {"order_pending": ["pending", "fraud_review"]}},
            "order_pending 'fraud_review' reads as fraud: orders in it are not waiting for a "
            "payment and would be completed by the pipeline",
        ),
    ],
)
def test_status_words_that_mean_the_opposite_are_refused_before_doctor_reads_a_row(
    mapping, refusal
):
    """The mapping's own rules (core/shop/mapping_rules.py), the same for doctor and every run."""
    with pytest.raises(ConfigurationError) as caught:
        SchemaMapping.parse(mapping)
    assert refusal in str(caught.value)


def test_a_newest_payment_hours_old_or_in_the_future_is_warned_not_refused(engine):
    """A quiet shop looks like a zone east of the real one: warned, so runs are not stopped.

    The refusal that needs no guess is the MariaDB session zone's (tests/core/shop/
    test_session_zone.py)."""
    new_york = migrated_shop(engine, SchemaMapping(timezone="America/New_York"))
    new_york.orphan(paid_minutes_ago=5)
    assert doctor(new_york).refusals == []

    # The same shop read as UTC: every payment looks 5 h older (or the shop was quiet 5 h).
    report = doctor(new_york, SchemaMapping())

    assert report.refusals == []
    assert report.warnings == [
        f"the newest transaction is {_utc_offset_hours(new_york)} h old under timezone UTC: if "
        "the shop took payments since, the columns are in a zone west of it; payments would "
        "look older than they are and the grace period would be cut short"
    ]
    # Read as Los Angeles: every payment looks 3 h younger, fixes are only delayed.
    los_angeles = SchemaMapping(timezone="America/Los_Angeles")
    delayed = doctor(new_york, los_angeles)
    assert delayed.refusals == []
    assert delayed.warnings == [
        "the newest transaction is 2.9 h in the future under timezone America/Los_Angeles: "
        "the columns are in a zone east of it; payments look younger than they are and are "
        "fixed late"
    ]


def _utc_offset_hours(shop) -> str:
    offset = -ZoneInfo("America/New_York").utcoffset(shop.now)
    return f"{(offset.total_seconds() + 5 * 60) / 3600:.1f}"
