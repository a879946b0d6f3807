"""A statement compiled once and sent as the driver's text finds what SQLAlchemy's execution finds."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from regularization_pipeline.core.shop.driver_sql import DriverSql


def test_the_same_rows_as_the_statement_itself_with_a_list_and_literals(engine):
    items = sa.table("driver_sql_items", sa.column("id"), sa.column("status"))
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE driver_sql_items (id INTEGER PRIMARY KEY, status TEXT)"))
        conn.execute(items.insert(), [{"id": i, "status": s} for i, s in [(1, "a"), (2, "b")]])
        query = sa.select(items.c.id, items.c.status).where(
            items.c.id.in_(sa.bindparam("p_ids", expanding=True)),
            items.c.status.in_(["a", "b", "50% off"]),  # literals, one with the driver's %
        )
        for wanted in (1, 2, 3):
            values = {"p_ids": [wanted]}
            once = DriverSql(query, conn.dialect, lists=("p_ids",)).execute(conn, values).all()
            assert [tuple(r) for r in once] == [tuple(r) for r in conn.execute(query, values)]
        flip = items.update().where(items.c.id == sa.bindparam("p_id")).values(status="c")
        assert DriverSql(flip, conn.dialect).execute(conn, {"p_id": 2}).rowcount == 1
        assert conn.execute(sa.select(items.c.status).where(items.c.id == 2)).scalar() == "c"
        conn.execute(sa.text("DROP TABLE driver_sql_items"))


def test_a_value_left_out_is_refused_rather_than_sent_as_null(engine):
    items = sa.table("items", sa.column("id"))
    query = sa.select(items.c.id).where(items.c.id == sa.bindparam("p_id"))
    with pytest.raises(KeyError, match="p_id"):
        DriverSql(query, engine.dialect).parameters({})
