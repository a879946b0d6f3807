"""The one redaction (core/redaction.py): what it removes, in every common spelling, and what it keeps."""

from __future__ import annotations

import pytest

from regularization_pipeline.core.alerting.alert import Alert, Observation
from regularization_pipeline.core.redaction import redact

CARDS = [
    "4111111111111111",
    "4111 1111 1111 1111",
    "4111.1111.1111.1111",
    "4111-1111-1111-1111",
    "3782 822463 10005",  # American Express grouping
    "5500-0055-5555-5559",
]
TOKENS = [
    "sk_live_51HxAbCdEf0123456789",
    "sk_test_4eC39HqLyjWDarjtT1zdp7dc",
    "rk_live_51HxAbCdEf0123456789",
    "rk_test_abcdef123456",
    "pk_live_0123456789abcdef",
    "whsec_Zq81LmN0pQrStUvWxYz7",
]
PHONES = ["+33 6 12 34 56 78", "+49 170 1234567", "(555) 123-4567", "555.123.4567", "0612345678"]
IBANS = [
    "DE89 3704 0044 0532 0130 00",
    "DE89370400440532013000",
    "GB82WEST12345698765432",
    "FR7630006000011234567890189",
]


@pytest.mark.parametrize("card", CARDS)
def test_card_numbers_in_any_spelling_are_removed(card):
    shown = redact(f"charge refused for card {card} at checkout")
    assert card not in shown and "1111" not in shown and "5559" not in shown, shown
    assert shown.startswith("charge refused for card ") and shown.endswith(" at checkout")


@pytest.mark.parametrize("token", TOKENS)
def test_provider_tokens_are_removed(token):
    shown = redact(f"key {token} rejected")
    assert shown == "key <token> rejected"


def test_bearer_and_basic_credentials_are_removed():
    shown = redact("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.abc-DEF_123")
    assert "eyJ" not in shown and shown == "Authorization: <token>"
    assert "dXNlcjpwYXNz" not in redact("Authorization: Basic dXNlcjpwYXNz")


@pytest.mark.parametrize(
    "text",
    [
        "Jeanne Dupont-Lefèvre <jeanne.dupont@example.org>",
        "Jeanne Dupont-Lefèvre (jeanne.dupont@example.org)",
        "Jeanne Dupont-Lefèvre, jeanne.dupont@example.org",
        "Jeanne Dupont-Lefèvre jeanne.dupont@example.org",
    ],
)
def test_a_name_next_to_an_e_mail_goes_with_it(text):
    shown = redact(f"customer {text} refused")
    assert "Jeanne" not in shown and "Dupont" not in shown and "example.org" not in shown, shown
    assert shown.startswith("customer ") and shown.endswith(" refused")


@pytest.mark.parametrize("phone", PHONES)
def test_phone_numbers_are_removed(phone):
    shown = redact(f"call {phone} now")
    assert shown == "call # now", shown


@pytest.mark.parametrize("iban", IBANS)
def test_ibans_are_removed(iban):
    shown = redact(f"refund to {iban} failed")
    assert shown == "refund to <iban> failed", shown


def test_quoted_values_go_and_names_an_operator_needs_stay():
    assert redact("Duplicate entry 'jane@example.com' for key 'email'") == (
        "Duplicate entry '…' for key '…'"
    )
    assert redact('database "shop" does not exist') == 'database "shop" does not exist'


def test_ids_times_and_counts_stay():
    text = (
        "run 0a1b2c3d-1111-2222-3333-444455556666 of regularize_completed_orders at "
        "2026-12-01T23:30:00+00:00: 3 failed of 50 processed (order 12, 345, 6789)"
    )
    assert redact(text) == text


def test_alerts_carry_only_redacted_details():
    """Every payload and the sensor's stored state are built from these details."""
    alert = Alert("run_failed", "firing", "order 7: Jeanne Doe <j@x.org> 4111.1111.1111.1111")
    observation = Observation("run_failed", True, "key sk_live_abc123 for order 7")
    assert alert.detail == "order 7: <e-mail> #" and "4111" not in alert.text
    assert observation.detail == "key <token> for order 7"
