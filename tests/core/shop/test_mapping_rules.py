"""The one validation of a mapping's statuses and zone: what it refuses, and what it lets by."""

import pytest

from regularization_pipeline.core.errors import ConfigurationError
from regularization_pipeline.core.shop.mapping import SchemaMapping
from regularization_pipeline.core.shop.mapping_rules import status_problems

# Every mapping here passed before issue 25 and made a run write what it must not.
REFUSED = [
    # swapped: completed orders taken for pending ones and re-completed, with an event each
    (
        {"order_pending": ["completed"], "order_completed": "pending"},
        "order_completed 'pending' reads as waiting",
    ),
    ({"order_completed": "failed", "order_do_not_touch": []}, "order_completed 'failed' reads"),
    ({"order_completed": "cancelled", "order_do_not_touch": []}, "reads as cancellation"),
    ({"order_completed": "Cancelled", "order_do_not_touch": []}, "reads as cancellation"),
    ({"order_completed": "CANCELLED", "order_do_not_touch": []}, "reads as cancellation"),
    ({"order_completed": "canceled", "order_do_not_touch": ["failed"]}, "reads as cancellation"),
    # a _ci collation matches 'Cancelled' with IN ('cancelled')
    ({"order_pending": ["pending", "Cancelled"]}, "both in order_pending and order_do_not_touch"),
    ({"order_pending": ["pending", "shipped_completed"]}, "order_pending 'shipped_completed'"),
    ({"transaction_completed": ["failed"]}, "transaction_completed 'failed' reads as a failure"),
    ({"transaction_completed": ["completed", "declined"]}, "'declined' reads as a failure"),
    ({"transaction_completed": ["refunded"]}, "'refunded' reads as refund"),
    ({"transaction_completed": ["cancelled"]}, "'cancelled' reads as cancellation"),
    ({"transaction_completed": ["pending"]}, "'pending' reads as waiting"),
    ({"order_completed": "completed "}, "order_completed contains a status value with surrounding"),
    ({"order_pending": ["\tpending"]}, "order_pending contains a status value with surrounding"),
    ({"order_pending": ["pending\n"]}, "order_pending contains a status value with surrounding"),
    ({"order_pending": ["p" * 300]}, "a status value of 300 characters (at most 255)"),
]


@pytest.mark.parametrize(("statuses", "reason"), REFUSED)
def test_a_self_contradicting_or_misspelt_status_mapping_is_refused(statuses, reason):
    with pytest.raises(ConfigurationError) as caught:
        SchemaMapping.parse({"statuses": statuses})
    message = str(caught.value)
    assert message.startswith("invalid schema mapping: statuses: ")
    assert reason in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "statuses",
    [
        {},
        {
            "order_pending": ["PENDING", "PENDING_PAYMENT"],
            "order_completed": "COMPLETED",
            "order_do_not_touch": ["CANCELLED", "CANCELED", "FAILED", "REFUNDED"],
            "transaction_completed": ["COMPLETED", "PAID", "SUCCEEDED"],
        },
        {"order_pending": ["awaiting_payment", "new"], "order_completed": "paid"},
        {"transaction_completed": ["captured", "settled"], "order_do_not_touch": []},
    ],
)
def test_sound_status_mappings_are_accepted(statuses):
    assert SchemaMapping.parse({"statuses": statuses}).statuses


@pytest.mark.parametrize(
    "zone", ["posixrules", "localtime", "Factory", "America", "posix/UTC", "right/UTC", ""]
)
def test_only_real_iana_zone_names_are_accepted(zone):
    with pytest.raises(ConfigurationError, match="is not an IANA time zone name"):
        SchemaMapping.parse({"timezone": zone})


@pytest.mark.parametrize("zone", ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"])
def test_iana_zone_names_are_accepted(zone):
    assert SchemaMapping.parse({"timezone": zone}).timezone == zone


def test_processing_is_a_paid_order_status_in_real_shops_but_never_a_completed_payment():
    # WooCommerce's wc-processing and Bagisto's processing are what a paid order becomes
    # (docs/examples/recipes/); a payment "processing" has not gone through.
    assert status_problems(("wc-pending",), "wc-processing", ("wc-cancelled",), ("paid",)) == []
    assert status_problems(("pending",), "processing", ("canceled",), ("paid",)) == []
    (problem,) = status_problems(("pending",), "completed", (), ("processing",))
    assert problem.startswith("transaction_completed 'processing' reads as waiting")
