"""Amounts in a currency's minor units, by its ISO 4217 exponent.

Providers speak minor units (Stripe, Adyen: integers) or decimal strings with the
currency's own number of decimals (Mollie, PayPal). The shop stores decimals. Both
are compared here as integers of minor units, so ``1000`` JPY (zero decimals) and
``1.000`` BHD (three decimals) mean what they mean, and an amount that does not fit
the currency's exponent is no amount at all (when in doubt, hold).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from regularization_pipeline.core.shop.rows import to_decimal

# ISO 4217 currencies whose exponent is not 2 (the list ISO publishes, plus the
# zero-decimal currencies Stripe, Adyen and PayPal document as such).
_EXPONENTS: dict[str, int] = {
    **dict.fromkeys(
        "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF".split(), 0
    ),
    **dict.fromkeys("BHD IQD JOD KWD LYD OMR TND".split(), 3),
    "CLF": 4,
    "UYW": 4,
}


def exponent(currency: str) -> int:
    """The number of decimals of ``currency`` (ISO 4217; 2 when ISO says 2 or does not list it)."""
    return _EXPONENTS.get(currency.strip().upper(), 2)


def to_minor(amount: Any, currency: str) -> int | None:
    """``amount`` (a decimal in major units) as minor units of ``currency``; None when it is no
    amount or has more decimals than the currency has (12.345 EUR is not an amount)."""
    value = to_decimal(amount)
    if value is None:
        return None
    scaled = value.scaleb(exponent(currency))
    if scaled != scaled.to_integral_value():
        return None
    return int(scaled)


def minor_from_string(value: Any, currency: str) -> int | None:
    """A provider's decimal string (Mollie ``"10.00"``, PayPal ``"1000"``) as minor units.

    Strict: a string, and never more decimals than the currency has.
    """
    if not isinstance(value, str) or not value.strip():
        return None
    return to_minor(value, currency)


def minor_from_integer(value: Any) -> int | None:
    """A provider's integer amount in minor units (Stripe, Adyen); None for anything else."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def shown(minor: int, currency: str) -> str:
    """Minor units back as a decimal with the currency's exponent, for audit reasons."""
    return f"{Decimal(minor).scaleb(-exponent(currency)):f} {currency.upper()}"
