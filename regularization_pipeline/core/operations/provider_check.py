"""``doctor``'s payment-provider section: which adapter and API version, whether the token is
accepted (one read-only request), and how many completed payments lack a provider reference."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from regularization_pipeline.core.errors import describe_error
from regularization_pipeline.core.provider.answers import (
    ProviderRejectedError,
    ProviderUnavailableError,
)
from regularization_pipeline.core.shop.binding import AppSchema
from regularization_pipeline.core.shop.rows import OrderRow, TransactionRow


def check_provider(report: Any, conn: sa.Connection, s: AppSchema, verifier: Any) -> None:
    """Add the section to ``report`` (a DoctorReport); a refused token refuses the verdict."""
    lines = report._section("payment provider")
    adapter = verifier.adapter
    lines.append(f"adapter: {adapter.name}, API version: {adapter.api_version or 'none (generic)'}")
    completed = s.t("status").in_(s.statuses.transaction_completed)
    if not s.has_t("reference"):
        report._warn(
            lines,
            "the mapping has no transactions.reference: the provider is asked by our "
            "transaction id, which Stripe, Mollie and PayPal do not know",
        )
        sample = conn.execute(
            sa.select(s.t("id"), s.t("order_id"))
            .where(completed)
            .order_by(s.t("id").desc())
            .limit(1)
        ).first()
        reference = None
    else:
        missing = conn.execute(
            sa.select(sa.func.count()).where(
                completed, sa.or_(s.t("reference").is_(None), s.t("reference") == "")
            )
        ).scalar_one()
        lines.append(f"completed transactions without a provider reference: {missing}")
        if missing:
            report._warn(lines, f"{missing} completed transaction(s) have no provider reference")
        sample = conn.execute(
            sa.select(s.t("id"), s.t("order_id"), s.t("reference"))
            .where(completed, s.t("reference").is_not(None), s.t("reference") != "")
            .order_by(s.t("id").desc())
            .limit(1)
        ).first()
        reference = None if sample is None else sample[2]
    if sample is None:
        lines.append("token: not checked (no completed transaction to ask about)")
        return
    tx = TransactionRow(
        sample[0], None, None, reference=None if reference is None else str(reference)
    )
    try:
        answer = verifier.check(OrderRow(sample[1], None, None), tx)
    except ProviderRejectedError as exc:
        report._refuse(lines, f"the provider refused our credentials: {describe_error(exc)}")
        return
    except ProviderUnavailableError as exc:
        report._warn(lines, f"the provider could not be asked: {describe_error(exc)}")
        return
    lines.append(
        f"token: accepted (one read-only request about transaction {sample[0]}: {answer.status})"
    )
