"""The figures the Dagster layer shows, read from the shop and from our tables: orders by
status, the outbox backlog, what a run audited. Read-only; ``defs/`` turns them into metadata."""

from __future__ import annotations

import sqlalchemy as sa

from regularization_pipeline.core.shop import tables as tb
from regularization_pipeline.core.shop.binding import AppSchema


def orders_by_status(engine: sa.Engine, schema: AppSchema) -> dict[str, int]:
    """``orders_total`` and ``orders_<status>``: how many orders the shop has in each status."""
    status = schema.o("status")
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(status, sa.func.count()).group_by(status).order_by(status)
        ).all()
    counts = {str(value): int(n) for value, n in rows}
    metadata: dict[str, int] = {"orders_total": sum(counts.values())}
    metadata.update({f"orders_{value}": n for value, n in counts.items()})
    return metadata


def outbox_backlog(engine: sa.Engine, tables: tb.OwnedTables) -> dict[str, int]:
    """Outbox rows still pending and dead-lettered, whatever run wrote them."""
    ob = tables.outbox
    with engine.connect() as conn:
        counts = dict(
            conn.execute(
                sa.select(ob.c.state, sa.func.count())
                .where(ob.c.state.in_([tb.PENDING, tb.DEAD]))
                .group_by(ob.c.state)
            ).all()
        )
    return {
        "outbox_pending": int(counts.get(tb.PENDING, 0)),
        "outbox_dead": int(counts.get(tb.DEAD, 0)),
    }


AUDIT_COLUMNS = (
    "order_id",
    "action",
    "reason",
    "transaction_id",
    "order_amount",
    "transaction_amount",
    "currency",
    "transaction_completed_at",
    "created_at",
)


def audit_action_counts(engine: sa.Engine, tables: tb.OwnedTables, run_id: str) -> dict[str, int]:
    """How many audit rows of each action this run wrote, counted by the database."""
    au = tables.audit
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(au.c.action, sa.func.count())
            .where(au.c.run_id == run_id)
            .group_by(au.c.action)
        )
        return {action: int(n) for action, n in rows}


def audit_preview(
    engine: sa.Engine, tables: tb.OwnedTables, run_id: str, rows: int
) -> list[tuple[str, ...]]:
    """The first ``rows`` audit rows of this run, in the order they were written, as text cells.

    Only the preview is loaded: a run over a large backlog writes one row per order.
    A value the row does not have (no payment, no amount) is blank.
    """
    au = tables.audit
    query = (
        sa.select(*(au.c[name] for name in AUDIT_COLUMNS))
        .where(au.c.run_id == run_id)
        .order_by(au.c.id)
        .limit(rows)
    )
    with engine.connect() as conn:
        found = conn.execute(query).all()
    return [tuple("" if value is None else str(value) for value in row) for row in found]


def markdown_table(columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """``rows`` as a Markdown table, as the UI renders a metadata value. Drawn here rather than by
    pandas: a 50-row preview is not worth loading pandas and numpy in every run."""

    def cell(text: str) -> str:
        return " ".join(text.split()).replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)
