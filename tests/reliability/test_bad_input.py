"""Bad input: arbitrary run options and schema mappings (hypothesis), and bad rows in the shop on
SQLite, PostgreSQL and MariaDB. Every bad row is reported with a reason (an audit row or the
inconsistency report), none is flipped, and the run never crashes."""

from __future__ import annotations

import datetime as dt
import string

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from regularization_pipeline.core.clock import as_naive_utc
from regularization_pipeline.core.detection import orphans as d
from regularization_pipeline.core.errors import ConfigurationError
from regularization_pipeline.core.regularizer import Regularizer, RunOptions
from regularization_pipeline.core.shop.mapping import SchemaMapping
from regularization_pipeline.core.shop.tables import owned_tables
from regularization_pipeline.core.verdicts import INCONSISTENT, REGULARIZED, SKIPPED
from tests.support.databases import migrated_shop
from tests.support.reliability import figures
from tests.support.rows import assert_flip_iff_event, audit_of, no_sleep

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- run options ---------------------------------------------------------------------------

RUN_FIELDS = sorted(RunOptions.model_fields)
_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.datetimes(min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30)),
    st.datetimes(
        timezones=st.sampled_from([dt.UTC, dt.timezone(dt.timedelta(hours=-11))]),
        min_value=dt.datetime(2, 1, 1),
        max_value=dt.datetime(9998, 1, 1),
    ),
    st.sampled_from(["auto", "per_order", "batched", "AUTO", "2026-01-01T00:00:00Z", "1e3", "-1"]),
    st.lists(st.integers(), max_size=2),
)
# Mostly real field names, sometimes a typo an operator would make.
_run_keys = st.one_of(
    st.sampled_from(RUN_FIELDS), st.sampled_from(["Limit", "sleep_seconds", "modes", "dryrun"])
)


@PROPERTY
@given(st.dictionaries(_run_keys, _values, max_size=6))
def test_run_options_parse_gives_options_or_an_error_naming_a_field(raw):
    try:
        options = RunOptions.parse(**raw)
    except ConfigurationError as exc:
        message = str(exc)
        assert message.startswith("invalid run options: ")
        # The operator must be told which of the fields they gave is wrong.
        assert any(key in message for key in raw), message
        return
    assert isinstance(options, RunOptions)
    assert set(raw) <= set(RUN_FIELDS)  # an unknown key is never accepted silently
    assert options.limit >= 1 and options.sleep >= 0 and options.batch_size >= 1
    if options.since and options.until:
        assert as_naive_utc(options.since) < as_naive_utc(options.until)


# --- schema mappings -----------------------------------------------------------------------

_hostile = [
    "orders; DROP TABLE orders",
    'o"rders',
    "o'rders",
    "orders--",
    "",
    " orders",
    "ordérs",
    "x" * 64,
    "orders\n",
    "Orders",
    "_t",
    "t$1",
    "1orders",
]
_identifiers = st.one_of(
    st.sampled_from(_hostile),
    st.text(
        alphabet=string.ascii_letters + string.digits + "_$;'\"- \n\t", min_size=0, max_size=70
    ),
)
_status_values = st.one_of(
    st.sampled_from(["pending", "completed", "cancelled", "", "pending'; --", "é😀"]),
    st.text(max_size=80),
)
_orders = st.dictionaries(
    st.sampled_from(
        [
            "table",
            "id",
            "status",
            "total",
            "currency",
            "created_at",
            "updated_at",
            "deleted_at",
            "colour",
        ]
    ),
    st.one_of(st.none(), _identifiers),
    max_size=4,
)
_transactions = st.dictionaries(
    st.sampled_from(["table", "id", "order_id", "status", "amount", "reference"]),
    st.one_of(st.none(), _identifiers),
    max_size=3,
)
_statuses = st.dictionaries(
    st.sampled_from(
        ["order_pending", "order_completed", "order_do_not_touch", "transaction_completed", "paid"]
    ),
    st.one_of(_status_values, st.lists(_status_values, max_size=3)),
    max_size=4,
)
_mapping = st.fixed_dictionaries(
    {},
    optional={
        "orders": _orders,
        "transactions": _transactions,
        "statuses": _statuses,
        "table_prefix": st.one_of(
            st.sampled_from(["regularization_", "reg_", "Reg_", "x" * 40, "a;b"]), _identifiers
        ),
    },
)


def _plain_identifier(value: str | None) -> bool:
    return value is None or (
        value[0].isascii()
        and (value[0].isalpha() or value[0] == "_")
        and all(c.isascii() and (c.isalnum() or c in "_$") for c in value)
        and len(value) <= 63
    )


@PROPERTY
@given(_mapping)
def test_schema_mapping_parse_gives_a_mapping_or_an_error_naming_a_field(raw):
    try:
        mapping = SchemaMapping.parse(raw)
    except ConfigurationError as exc:
        message = str(exc)
        assert message.startswith("invalid schema mapping: ")
        assert any(section in message for section in raw), message
        return
    for section in (mapping.orders, mapping.transactions):
        for name, value in section.model_dump().items():
            # Accepted names are what real schemas use: a quote, a semicolon, a blank or a
            # newline never reaches the SQL the pipeline builds, even quoted.
            assert _plain_identifier(value), f"{name}={value!r} was accepted"
    st_ = mapping.statuses
    assert st_.order_completed not in st_.order_pending
    assert not set(st_.order_pending) & set(st_.order_do_not_touch)
    assert all(st_.order_pending) and all(st_.transaction_completed)


# --- bad rows --------------------------------------------------------------------------------


def _run(shop, **kw):
    return Regularizer(shop.engine, shop.schema, sleeper=no_sleep).run(RunOptions(sleep=0, **kw))


def _widen(shop, column: str, table: str, length: int) -> None:
    """The application may have a longer column than the demo shop: an order status or a
    currency longer than our audit columns (String(64), String(16)) is then possible."""
    engine = shop.engine
    if engine.dialect.name == "sqlite":
        return  # SQLite does not enforce VARCHAR lengths
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(
                sa.text(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE varchar({length})")
            )
        else:
            null = "NOT NULL" if column == "status" else "NULL"
            conn.execute(sa.text(f"ALTER TABLE {table} MODIFY {column} varchar({length}) {null}"))


def _reported(shop, order_id, kind: str) -> bool:
    """An ``inconsistent`` audit row for the order, of ``kind`` (its reason may go on with the
    figures to settle it, e.g. a double charge's transaction ids)."""
    return any(
        action == INCONSISTENT and reason.startswith(f"{kind}: reported, not fixed")
        for action, reason in _actions(shop, order_id)
    )


def _actions(shop, order_id) -> list[tuple[str, str]]:
    return [(row.action, row.reason) for row in audit_of(shop, order_id)]


@pytest.mark.parametrize("mode", ["per_order", "batched"])
def test_bad_rows_are_reported_with_a_reason_and_never_flipped(shop, mode):
    healthy = shop.orphan()
    null_amount = shop.order(total="49.90")
    shop.payment(null_amount, amount=None)
    negative = shop.orphan(amount="-5.00")
    unknown_status = shop.order(status="on_hold")
    shop.payment(unknown_status)
    no_completed = shop.order()
    shop.payment(no_completed, status="failed")
    three_completed = shop.order()
    for _ in range(3):
        shop.payment(three_completed)
    missing_order = 987_654  # a completed payment whose order the application deleted for good
    shop.payment(missing_order)
    # The longest currency the shop's 3-character column holds, outside ASCII and the BMP.
    emoji = shop.orphan(currency="€😀¥")

    summary = _run(shop, mode=mode)

    assert summary.failed == 0 and summary.quarantined == 0
    assert summary.regularized == 2  # the healthy order and the emoji-currency order, nothing else
    for order_id in (null_amount, negative, three_completed, unknown_status, no_completed):
        assert shop.status_of(order_id) != "completed", order_id
    assert shop.status_of(healthy) == shop.status_of(emoji) == "completed"
    assert_flip_iff_event(shop)

    expected = {
        null_amount: d.INVALID_AMOUNT,
        negative: d.INVALID_AMOUNT,
        three_completed: d.DOUBLE_CHARGE,
        missing_order: d.MISSING_ORDER,
    }
    for order_id, kind in expected.items():
        assert _reported(shop, order_id, kind), (order_id, _actions(shop, order_id))
        assert summary.inconsistent_by_kind[kind] >= 1
    assert summary.inconsistent_by_kind[d.DOUBLE_CHARGE] == 1
    assert summary.inconsistent_by_kind[d.MISSING_ORDER] == 1
    [emoji_audit] = audit_of(shop, emoji)
    assert (emoji_audit.action, emoji_audit.currency) == (REGULARIZED, "€😀¥")

    # Neither an unknown status nor a pending order without a completed payment is an orphan:
    # the run leaves them alone without a word. Asked about them directly, it says why.
    assert _actions(shop, unknown_status) == [] and _actions(shop, no_completed) == []
    regularizer = Regularizer(shop.engine, shop.schema, sleeper=no_sleep)
    options = RunOptions(sleep=0)
    assert (
        regularizer.regularize_one(unknown_status, "operator", options).reason
        == "order status 'on_hold' is not a pending status"
    )
    assert (
        regularizer.regularize_one(no_completed, "operator", options).reason
        == "order has no completed transaction"
    )
    assert shop.status_of(unknown_status) == "on_hold" and shop.status_of(no_completed) == "pending"

    # A second run reports nothing twice and flips nothing more.
    again = _run(shop, mode=mode)
    assert (again.regularized, again.failed) == (0, 0)
    assert_flip_iff_event(shop)
    figures(
        f"bad input/{shop.engine.dialect.name}/{mode}/bad rows",
        regularized=summary.regularized,
        inconsistent=summary.inconsistent,
        by_kind={k: v for k, v in summary.inconsistent_by_kind.items() if v},
        failed=summary.failed,
    )


def test_a_status_and_a_currency_longer_than_the_audit_columns_are_audited_cut_not_failed(engine):
    """The application's status column may be 255 characters; ours is 64 (currency: 16)."""
    long_pending = (
        "awaiting_payment_confirmation_from_the_provider_" + "é" * 20 + "_😀_" + "x" * 184
    )
    assert len(long_pending) == 255  # the longest status a mapping accepts (mapping_rules)
    mapping = SchemaMapping.parse({"statuses": {"order_pending": ["pending", long_pending]}})
    shop = migrated_shop(engine, mapping)
    _widen(shop, "status", "orders", 300)
    _widen(shop, "currency", "orders", 40)
    _widen(shop, "currency", "transactions", 40)
    long_currency = "€😀-" + "EUROPEAN-UNIT" * 2
    flipped_long_status = shop.orphan(status=long_pending)
    flipped_long_currency = shop.orphan(currency=long_currency)
    unknown_long_status = shop.order(status="z" * 255)
    shop.payment(unknown_long_status)

    summary = _run(shop, mode="per_order")
    outcome = Regularizer(shop.engine, shop.schema, sleeper=no_sleep).regularize_one(
        unknown_long_status, "operator", RunOptions(sleep=0)
    )

    assert summary.failed == 0, [o.reason for o in summary.outcomes if o.action != REGULARIZED]
    assert summary.regularized == 2
    assert (
        shop.status_of(flipped_long_status) == shop.status_of(flipped_long_currency) == "completed"
    )
    [a] = audit_of(shop, flipped_long_status)
    assert (a.action, a.order_status) == (REGULARIZED, long_pending[:64])
    [b] = audit_of(shop, flipped_long_currency)
    assert (b.action, b.currency) == (REGULARIZED, long_currency[:16])
    assert outcome.action == SKIPPED and shop.status_of(unknown_long_status) == "z" * 255
    [c] = audit_of(shop, unknown_long_status)
    assert c.order_status == "z" * 64 and c.reason.startswith("order status 'zzz")
    assert_flip_iff_event(shop)
    figures(
        f"bad input/{engine.dialect.name}/long status and currency",
        status_chars=len(long_pending),
        audited_status_chars=len(a.order_status),
        currency_chars=len(long_currency),
        audited_currency_chars=len(b.currency),
        failed=summary.failed,
    )


def test_a_completed_payment_on_a_cancelled_order_is_reported_not_flipped(shop):
    cancelled = shop.order(status="cancelled")
    shop.payment(cancelled)
    summary = _run(shop)
    assert summary.regularized == 0 and summary.inconsistent_by_kind[d.PAID_BUT_CLOSED] == 1
    assert shop.status_of(cancelled) == "cancelled"
    assert _reported(shop, cancelled, d.PAID_BUT_CLOSED), _actions(shop, cancelled)
    ob = owned_tables().outbox
    with shop.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(ob)).scalar_one() == 0


def test_an_identifier_with_a_trailing_newline_is_refused():
    """re.match with '$' matches before a final newline; the check uses fullmatch."""
    with pytest.raises(ConfigurationError, match="orders.table"):
        SchemaMapping.parse({"orders": {"table": "orders\n"}})
