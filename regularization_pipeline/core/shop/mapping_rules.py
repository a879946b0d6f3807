"""The rules a mapping's status values must obey before anything is read or written.

One set of rules for every reader of a mapping: :class:`~.mapping.StatusMapping` runs
:func:`status_problems` when it is validated, so ``doctor``, every run (CLI, Dagster UI,
schedule) and every operator command refuse the same mappings with the same line, before a
connection is opened. The rules need nothing but the values; what needs the shop's rows
(a repaired-to status no paid order has, a completed status no transaction has, the time
zone) is checked by ``doctor`` (:mod:`regularization_pipeline.core.operations.doctor`).

Status values are compared case-insensitively here although the pipeline compares them
exactly: a MariaDB/MySQL column with a ``_ci`` collation matches ``'Cancelled'`` with
``IN ('cancelled')``, so a clash that differs only in case is a clash on those servers.
"""

from __future__ import annotations

import re

# A status column is at most a VARCHAR(255) (Laravel's string()); a longer value is a mistake
# (a pasted sentence) and would never match a row, or match the wrong ones once truncated.
STATUS_MAX_LENGTH = 255

# What a status word may mean, by the words shops use for it (doctor also reads unmapped
# statuses with these).
LOOKS_LIKE = {
    "cancellation": re.compile(r"cancel|abort|void", re.I),
    "refund": re.compile(r"refund|revers", re.I),
    "fraud": re.compile(r"fraud|suspect", re.I),
    "chargeback": re.compile(r"charge.?back|dispute", re.I),
    "paid": re.compile(r"(?<!un)paid|captured|settled|(?<!in)complet|(?<!not-)charged", re.I),
    "success": re.compile(r"succe|approv", re.I),
}
# Funds reserved on the card, not taken: an authorization may still be voided or expire.
HELD_NOT_CAPTURED = re.compile(r"authori[sz]|pre.?auth|reserved", re.I)
HELD_WORDS = "held, not captured: never list as completed"
CLOSING = ("cancellation", "refund", "fraud", "chargeback")
PAYING = ("paid", "success")
FAILING = re.compile(r"fail|declin|expir|error|reject", re.I)
# Words for "not done yet": never what a paid order becomes, nor a payment that went through.
# "processing" is waiting for a payment, but for an order it is what many shops write once
# paid (WooCommerce's wc-processing, Magento's and Bagisto's processing): an order word only
# when it says so plainly.
WAITING = re.compile(r"pend|wait|unpaid|hold|processing|incomplet", re.I)
ORDER_WAITING = re.compile(r"pend|wait|unpaid|hold|incomplet", re.I)


def looks_like(value: str, meanings: tuple[str, ...] = tuple(LOOKS_LIKE)) -> str | None:
    """The first of ``meanings`` the status word reads as, or None."""
    return next((m for m in meanings if LOOKS_LIKE[m].search(value)), None)


def _closing_or_failing(value: str) -> str | None:
    return looks_like(value, CLOSING) or ("a failure" if FAILING.search(value) else None)


def value_problem(field: str, value: str) -> str | None:
    """Why one status value cannot be what the shop writes, or None."""
    if not value:
        return f"{field} contains an empty status value"
    if value != value.strip() or any(not ch.isprintable() for ch in value):
        return f"{field} contains a status value with surrounding whitespace or control characters"
    if len(value) > STATUS_MAX_LENGTH:
        return (
            f"{field} contains a status value of {len(value)} characters "
            f"(at most {STATUS_MAX_LENGTH})"
        )
    return None


def status_problems(
    pending: tuple[str, ...],
    completed: str,
    do_not_touch: tuple[str, ...],
    transaction_completed: tuple[str, ...],
) -> list[str]:
    """Every reason these status lists would make a run act wrongly; empty when they are sound.

    A message names the field and the meaning it clashes with; the values quoted are status
    words the operator wrote, never data read from the shop.
    """
    fields = {
        "order_pending": pending,
        "order_completed": (completed,),
        "order_do_not_touch": do_not_touch,
        "transaction_completed": transaction_completed,
    }
    shape = [p for name, values in fields.items() for v in values if (p := value_problem(name, v))]
    if shape:
        return list(dict.fromkeys(shape))
    return [
        *_overlaps(pending, completed, do_not_touch),
        *_order_meanings(pending, completed),
        *_transaction_meanings(transaction_completed),
    ]


def _overlaps(pending: tuple[str, ...], completed: str, do_not_touch: tuple[str, ...]) -> list[str]:
    """A status in two roles (case ignored: a ``_ci`` collation matches either)."""
    problems: list[str] = []
    fold = str.casefold
    pending_words = {fold(v) for v in pending}
    closed_words = {fold(v) for v in do_not_touch}
    if fold(completed) in pending_words:
        problems.append(
            f"order_completed {completed!r} is also listed in order_pending (case ignored): "
            "completed orders would be taken for pending ones"
        )
    if fold(completed) in closed_words:
        problems.append(
            f"order_completed {completed!r} is also listed in order_do_not_touch (case ignored)"
        )
    clash = sorted(v for v in pending if fold(v) in closed_words)
    if clash:
        problems.append(
            f"statuses {clash} are both in order_pending and order_do_not_touch (case ignored)"
        )
    return problems


def _order_meanings(pending: tuple[str, ...], completed: str) -> list[str]:
    """Order words that read as the opposite of their role."""
    problems: list[str] = []
    meaning = _closing_or_failing(completed) or (
        "waiting" if ORDER_WAITING.search(completed) else None
    )
    if meaning:
        problems.append(
            f"order_completed {completed!r} reads as {meaning}: it is not what a paid order becomes"
        )
    for value in pending:
        meaning = _closing_or_failing(value) or looks_like(value, PAYING)
        if meaning:
            problems.append(
                f"order_pending {value!r} reads as {meaning}: orders in it are not waiting for "
                "a payment and would be completed by the pipeline"
            )
    return problems


def _transaction_meanings(transaction_completed: tuple[str, ...]) -> list[str]:
    """Transaction "completed" words that read as a hold, a failure or a wait."""
    problems: list[str] = []
    for value in transaction_completed:
        if HELD_NOT_CAPTURED.search(value):
            problems.append(
                f"transaction_completed {value!r} reads as {HELD_WORDS}: orders whose funds are "
                "only reserved, and may be voided, would be completed"
            )
            continue
        meaning = _closing_or_failing(value) or ("waiting" if WAITING.search(value) else None)
        if meaning:
            problems.append(
                f"transaction_completed {value!r} reads as {meaning}: unpaid orders would be "
                "completed"
            )
    return problems
