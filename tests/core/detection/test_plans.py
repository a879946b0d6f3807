"""The plans the servers choose for what a run sends every few minutes, on a shop big enough to
choose a bad one: the run's queue and the batch claim probe the pending orders' payments by
``transactions (order_id, status)``, and never read every payment.

On MariaDB a NOT EXISTS correlated on the order id alone became a materialized scan of every
completed payment, once per claim (0.5 s per batch on a million payments); the first
candidate page of the old id-order scan was a materialized semi-join over all of them (8 s).
The shop is the benchmark's generator at 20,000 orders, with the recommended indexes.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from bench import shopgen
from regularization_pipeline.core.clock import utcnow
from regularization_pipeline.core.decisions.context import OrderStatements
from regularization_pipeline.core.detection import orphans as d
from regularization_pipeline.core.shop import tables as tb
from regularization_pipeline.core.shop.binding import bind_schema
from regularization_pipeline.core.shop.engine import create_app_engine
from regularization_pipeline.core.shop.mapping import SchemaMapping
from tests.support.databases import MYSQL_ADMIN_URL, PG_ADMIN_URL, throwaway_database

ADMIN_URLS = {"postgresql": PG_ADMIN_URL, "mariadb": MYSQL_ADMIN_URL}


@pytest.fixture(scope="module", params=list(ADMIN_URLS))
def generated_shop(request):
    with throwaway_database("regplans", ADMIN_URLS[request.param]) as url:
        engine = create_app_engine(url.render_as_string(hide_password=False))
        shopgen.build_shop(engine, shopgen.QUICK)
        shopgen.create_indexes(engine)
        yield engine, bind_schema(engine, SchemaMapping())
        engine.dispose()


def plan(conn: sa.Connection, query: sa.Select) -> list[dict]:
    """The server's plan of ``query``: MariaDB's rows as dicts, PostgreSQL's lines as ``text``."""
    sql = str(query.compile(conn.engine, compile_kwargs={"literal_binds": True}))
    rows = conn.exec_driver_sql("EXPLAIN " + sql.replace("%", "%%")).mappings().all()
    return [dict(row) for row in rows]


def full_reads_of_payments(conn: sa.Connection, query: sa.Select) -> list[str]:
    """The steps of the plan that read every row of ``transactions``."""
    steps = plan(conn, query)
    if conn.dialect.name == "postgresql":
        lines = [step["QUERY PLAN"] for step in steps]
        return [line.strip() for line in lines if "Seq Scan on transactions" in line]
    return [
        f"{step['select_type']} {step['type']} {step['key']}"
        for step in steps
        if step["table"] == "transactions" and step["type"] in ("ALL", "index")
    ]


def test_the_queue_and_the_batch_claim_never_read_every_payment(generated_shop):
    engine, schema = generated_shop
    window = d.ScanWindow(now=utcnow())
    page = next(d.fixable_pages(engine, schema, window, 500))
    assert len(page) > 50  # the generator's orphans: about 0.5 % of 20,000 orders
    statements = OrderStatements(engine, schema, tb.owned_tables("regularization_"))
    claim = sa.select(*statements.order_columns).where(
        schema.o("id").in_(page), d.fixable_condition(schema, window, None)
    )
    queue = d.fixable_in_payment_order(schema, window, None).limit(500)
    with engine.connect() as conn:
        assert full_reads_of_payments(conn, claim) == []
        if conn.dialect.name != "postgresql":
            # PostgreSQL hashes 20,000 payments in one pass here, rightly; on a million it
            # probes them by index (bench/run.py notes its plans).
            assert full_reads_of_payments(conn, queue) == []
        assert len(conn.execute(claim).all()) == len(page)
