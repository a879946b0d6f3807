"""Security: a run and a dispatch under the least-privilege role of docs/sql/grants.postgresql.sql,
hostile order ids and status values, the bandit rules of ruff, and no personal data or secret in
the logs of a full run."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import tomllib
import uuid

import httpx
import pytest
import sqlalchemy as sa

from regularization_pipeline.core.delivery.outbox import OutboxDispatcher
from regularization_pipeline.core.delivery.publishers import (
    PublisherSettings,
    PythonHandlersPublisher,
    build_publishers,
)
from regularization_pipeline.core.errors import ConfigurationError, describe_error
from regularization_pipeline.core.provider.gateway import GatewayVerifier
from regularization_pipeline.core.provider.settings import GatewaySettings
from regularization_pipeline.core.regularizer import Regularizer, RunOptions
from regularization_pipeline.core.shop.binding import bind_schema
from regularization_pipeline.core.shop.engine import create_app_engine
from regularization_pipeline.core.shop.mapping import SchemaMapping
from regularization_pipeline.core.shop.tables import owned_tables
from regularization_pipeline.core.verdicts import SKIPPED
from regularization_pipeline.logging_json import HTTP_CLIENT_LOGGERS, quiet_http_client_loggers
from tests.support import ROOT
from tests.support.databases import PG_ADMIN_URL, migrated_shop, throwaway_postgres_database
from tests.support.http_stubs import ProviderStub, ReceivingApp
from tests.support.reliability import figures
from tests.support.rows import assert_flip_iff_event, audit_of, completed_ids, no_sleep

GRANTS = ROOT / "docs" / "sql" / "grants.postgresql.sql"


# --- least privilege (PostgreSQL) -------------------------------------------------------------


@pytest.fixture
def role():
    """A login role of its own per test (roles are cluster-wide), dropped after its database."""
    name = f"regpipe_{uuid.uuid4().hex[:10]}"
    yield name
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP ROLE IF EXISTS "{name}"'))
    admin.dispose()


@pytest.fixture
def pg_database(role):
    with throwaway_postgres_database("regsec") as url:
        yield url


def _psql(url: sa.URL, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["psql", url.render_as_string(hide_password=False), "-v", "ON_ERROR_STOP=1", "-q", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_run_and_dispatch_work_with_only_the_documented_grants(pg_database, role):
    admin = create_app_engine(pg_database.render_as_string(hide_password=False))
    shop = migrated_shop(admin)  # the tables exist and are migrated by the owner, as in production
    orphans = shop.orphans(30)
    twice = shop.order()
    shop.payment(twice)
    shop.payment(twice)  # a double charge: the run writes its attempts row too
    done = _psql(pg_database, "-v", f"role={role}", "-f", str(GRANTS))
    assert done.returncode == 0, done.stderr
    restricted = create_app_engine(
        pg_database.set(username=role, password=None).render_as_string(hide_password=False)
    )
    delivered = []
    try:
        schema = bind_schema(restricted, shop.mapping)
        summary = Regularizer(restricted, schema, sleeper=no_sleep).run(
            RunOptions(sleep=0, mode="per_order")
        )
        batched_shop_orphans = shop.orphans(20)
        batched = Regularizer(restricted, schema, sleeper=no_sleep).run(
            RunOptions(sleep=0, mode="batched")
        )
        dispatcher = OutboxDispatcher(
            restricted, owned_tables(), [PythonHandlersPublisher({"record": delivered.append})]
        )
        sent = dispatcher.dispatch(batch_size=100)

        assert (summary.regularized, summary.failed) == (len(orphans), 0)
        assert (batched.regularized, batched.failed) == (len(batched_shop_orphans), 0)
        assert summary.inconsistent_by_kind["double_charge"] == 1
        assert sent.delivered == len(delivered) == len(orphans) + len(batched_shop_orphans)
        assert_flip_iff_event(shop)

        # The grants are minimal: any other write to the application's tables is refused.
        refused = {}
        for name, statement in {
            "orders.total": f"UPDATE orders SET total = 0 WHERE id = {orphans[0]}",
            "orders.customer_id": f"UPDATE orders SET customer_id = 1 WHERE id = {orphans[0]}",
            "transactions": f"UPDATE transactions SET amount = 0 WHERE order_id = {orphans[0]}",
            "delete orders": f"DELETE FROM orders WHERE id = {orphans[0]}",
            "insert orders": "INSERT INTO orders (status, created_at) VALUES ('completed', now())",
            "customers": "SELECT name, email FROM customers",
            "drop orders": "DROP TABLE orders",
            "our migrations": "DELETE FROM regularization_alembic_version",
        }.items():
            with restricted.connect() as conn, pytest.raises(sa.exc.ProgrammingError) as caught:
                conn.execute(sa.text(statement))
            refused[name] = type(caught.value.orig).__name__
            assert refused[name] in ("InsufficientPrivilege", "UndefinedTable"), (
                name,
                caught.value,
            )
            assert "permission denied" in str(caught.value.orig) or "must be owner" in str(
                caught.value.orig
            ), name
    finally:
        restricted.dispose()
        shop.engine.dispose()
    figures(
        "security/postgresql/least privilege",
        regularized=summary.regularized + batched.regularized,
        delivered=sent.delivered,
        refused=len(refused),
    )


def test_the_whole_job_runs_with_only_the_documented_grants_and_shows_no_secret(
    pg_database, role, monkeypatch
):
    """The Dagster job itself (observation, both checks, the three assets) as the restricted role, from
    the definitions as a deployment loads them; no secret reaches run config, run tags or the event log."""
    import importlib

    import dagster as dg

    from regularization_pipeline import definitions
    from regularization_pipeline.defs.jobs import JOB_NAME

    admin = create_app_engine(pg_database.render_as_string(hide_password=False))
    shop = migrated_shop(admin)
    orphans = shop.orphans(5)
    twice = shop.order()
    shop.payment(twice)
    shop.payment(twice)
    done = _psql(pg_database, "-v", f"role={role}", "-f", str(GRANTS))
    assert done.returncode == 0, done.stderr
    secrets = {
        "db password": "db-Pa55-7f3a",
        "webhook secret": "whsec-9c1e-secret",
        "provider token": "tok-5b2d-secret",
        "smtp password": "smtp-Pa55-41aa",
    }
    # Trust authentication takes any password: the URL carries one, as a deployment's does.
    url = pg_database.set(username=role, password=secrets["db password"]).render_as_string(
        hide_password=False
    )
    monkeypatch.setenv("REGULARIZATION_DATABASE_URL", url)
    monkeypatch.setenv("REGULARIZATION_WEBHOOK_SECRET", secrets["webhook secret"])
    monkeypatch.setenv("REGULARIZATION_PROVIDER_TOKEN", secrets["provider token"])
    monkeypatch.setenv("REGULARIZATION_ALERT_SMTP_PASSWORD", secrets["smtp password"])
    try:
        defs = importlib.reload(definitions).defs
        with dg.instance_for_test() as instance:
            result = defs.resolve_job_def(JOB_NAME).execute_in_process(
                instance=instance,
                run_config={"ops": {"regularized_orders": {"config": {"sleep": 0}}}},
            )
            run = instance.get_run_by_id(result.run_id)
            logs = instance.all_logs(result.run_id)
            shown = " ".join(
                [repr(run.run_config), repr(run.tags), *(repr(entry) for entry in logs)]
            )
    finally:
        monkeypatch.undo()
        importlib.reload(definitions)
        shop.engine.dispose()
    assert result.success
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    # Both ran as the restricted role, at the end of the run (#15): the orphans were fixed,
    # the inconsistency is still there for a human.
    assert checks == {
        "no_orphaned_pending_orders": True,
        "transactions_consistent": False,
    }
    assert (
        all(shop.status_of(i) == "completed" for i in orphans)
        and shop.status_of(twice) == "pending"
    )
    leaked = [name for name, secret in secrets.items() if secret in shown]
    assert not leaked, leaked
    assert len(logs) > 20  # the scan read the run's whole event log
    figures(
        "security/postgresql/whole job, least privilege",
        regularized=len(orphans),
        events=len(logs),
        secrets_shown=0,
    )


# --- hostile inputs ---------------------------------------------------------------------------

HOSTILE_IDS = [
    "1; DROP TABLE orders",
    "1' OR '1'='1",
    "1 OR 1=1",
    "1--",
    "' ; DELETE FROM transactions; --",
]


def _snapshot(engine: sa.Engine) -> dict[str, list]:
    """Every table and every row (our audit and attempts aside, which are meant to grow)."""
    md = sa.MetaData()
    md.reflect(engine)
    ours = {owned_tables().audit.name, owned_tables().attempts.name}
    with engine.connect() as conn:
        return {
            name: sorted(map(tuple, conn.execute(sa.select(t)).all()), key=repr)
            for name, t in md.tables.items()
            if name not in ours
        }


def test_hostile_order_ids_change_nothing(shop):
    orphans = shop.orphans(3)
    assert orphans[0] == 1  # the id a cast of "1; DROP TABLE orders" to a number would hit
    before = _snapshot(shop.engine)
    regularizer = Regularizer(shop.engine, shop.schema, sleeper=no_sleep)
    outcomes = {
        bad: regularizer.regularize_one(bad, "operator", RunOptions(sleep=0)) for bad in HOSTILE_IDS
    }
    for bad in HOSTILE_IDS:
        with pytest.raises(ConfigurationError, match="is not quarantined"):
            regularizer.release(bad)
    after = _snapshot(shop.engine)
    figures(
        f"security/{shop.engine.dialect.name}/hostile ids",
        flipped=sorted(completed_ids(shop)),
        outcomes={bad: f"{o.action}: {o.reason.split(':')[0][:60]}" for bad, o in outcomes.items()},
    )

    # Never injection, on any backend: every table is there, the payments are untouched.
    assert set(after) == set(before) and after["transactions"] == before["transactions"]
    assert after["customers"] == before["customers"]
    for bad in HOSTILE_IDS:
        assert [row.order_id for row in audit_of(shop, bad)] == [
            bad
        ]  # reported under the id as given
    # MariaDB compares `WHERE id = '1; DROP TABLE orders'` as a number (warning 1292) and finds
    # order 1; the regularizer checks the row it found is exactly the order asked for.
    assert after == before, "a hostile order id changed an order or wrote an event"
    assert completed_ids(shop) == set()
    for bad, outcome in outcomes.items():
        # On every backend: no such order, and no failed attempt that could one day quarantine a non-order.
        assert (outcome.action, outcome.reason) == (SKIPPED, "order not found"), (bad, outcome)
    assert not [row for row in _attempt_rows(shop.engine) if row.order_id in HOSTILE_IDS]


def _attempt_rows(engine: sa.Engine) -> list:
    with engine.connect() as conn:
        return conn.execute(sa.select(owned_tables().attempts)).all()


def test_hostile_status_values_are_compared_as_values(engine):
    """Status values are operator input; they are bound parameters, never SQL."""
    mapping = SchemaMapping.parse(
        {
            "statuses": {
                "order_pending": ["pending'; --"],
                "order_completed": "done'; DROP TABLE orders;--",
                "order_do_not_touch": ["x' OR '1'='1"],
                "transaction_completed": ["completed' OR '1'='1"],
            }
        }
    )
    shop = migrated_shop(engine, mapping)
    normal = [shop.order(status="pending") for _ in range(3)]
    for order_id in normal:
        shop.payment(order_id, status="completed")
    hostile = shop.order(status="pending'; --")
    shop.payment(hostile, status="completed' OR '1'='1")
    before = _snapshot(engine)

    summary = Regularizer(engine, shop.schema, sleeper=no_sleep).run(RunOptions(sleep=0))

    # Only the order whose status is literally the hostile string is flipped, to the literal value.
    assert (summary.found, summary.regularized, summary.failed) == (1, 1, 0)
    assert shop.status_of(hostile) == "done'; DROP TABLE orders;--"
    assert [shop.status_of(o) for o in normal] == ["pending"] * 3
    after = _snapshot(engine)
    assert set(after) == set(before)  # no table dropped
    assert after["transactions"] == before["transactions"]
    changed = set(after["orders"]) ^ set(before["orders"])
    assert {row[0] for row in changed} == {hostile}
    figures(
        f"security/{engine.dialect.name}/hostile statuses",
        found=summary.found,
        regularized=summary.regularized,
    )


# --- static check -----------------------------------------------------------------------------


def _database_error_quoting(engine: sa.Engine, value: str) -> sa.exc.DBAPIError:
    """A real error of this database whose own message quotes ``value``."""
    with engine.connect() as conn, pytest.raises(sa.exc.DBAPIError) as raised:
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT CAST(:v AS integer)"), {"v": value})
        else:  # MariaDB quotes the duplicate key
            conn.execute(
                sa.text("CREATE TEMPORARY TABLE customers_seen (email VARCHAR(200) UNIQUE)")
            )
            conn.execute(sa.text("INSERT INTO customers_seen VALUES (:v), (:v)"), {"v": value})
    return raised.value


def test_database_errors_are_described_without_the_data_they_quote(server_engine):
    """describe_error is what logs, the audit trail and the UI get of a failed order's error."""
    value = "jane.doe@example.com 4111 1111 1111 1111"
    exc = _database_error_quoting(server_engine, value)
    assert "jane.doe" in str(exc.orig)  # the database did quote it
    described = describe_error(exc)
    assert (
        "jane.doe" not in described and "example.com" not in described and "4111" not in described
    )
    code = "SQLSTATE 22P02" if server_engine.dialect.name == "postgresql" else "MariaDB error 1062"
    assert f"[{code}]" in described, (
        described
    )  # what an operator needs: the class and the database's code
    figures(f"security/{server_engine.dialect.name}/error described", described=described)


def test_ruff_bandit_rules_pass_and_stay_enabled(tmp_path):
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "S" in config["tool"]["ruff"]["lint"]["select"], (
        "ruff's security rules were dropped from pyproject"
    )
    ruff = ROOT / ".venv" / "bin" / "ruff"
    clean = subprocess.run(
        [str(ruff), "check", "--select", "S", "regularization_pipeline"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert clean.returncode == 0, clean.stdout + clean.stderr
    # The same command does catch an injection: the check is not vacuous.
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import subprocess\n\n\ndef f(order_id):\n    return subprocess.run(f'echo {order_id}', shell=True)\n"
    )
    caught = subprocess.run(
        [str(ruff), "check", "--isolated", "--select", "S", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert caught.returncode == 1 and "S602" in caught.stdout, caught.stdout


# --- logs ------------------------------------------------------------------------------------

CUSTOMERS = [
    ("Jeanne Dupont-Lefèvre", "jeanne.dupont@example.org"),
    ("Bartholomew Okonkwo", "b.okonkwo@example.net"),
]
CARDS = ["4111111111111111", "5500005555555559"]
WEBHOOK_SECRET = "whsec_Zq81LmN0pQrStUvWxYz7"
PROVIDER_TOKEN = "sk_live_9fK2hJ4mP7qR1sT3vW5y"
URL_TOKEN = "hook-Tk-7Qw2Er9Ty"  # receivers and heartbeats that authenticate by URL


def test_http_client_request_lines_with_their_urls_are_silenced(caplog):
    """httpx logs every request's full URL at INFO; quiet_http_client_loggers keeps it out."""
    saved = {n: logging.getLogger(n).level for n in HTTP_CLIENT_LOGGERS}
    filters = {n: list(logging.getLogger(n).filters) for n in HTTP_CLIENT_LOGGERS}
    try:
        with ReceivingApp() as app, httpx.Client() as client:
            for name in HTTP_CLIENT_LOGGERS:
                logging.getLogger(name).setLevel(logging.NOTSET)
                for f in filters[name]:
                    logging.getLogger(name).removeFilter(f)
            with caplog.at_level(logging.DEBUG):
                client.get(f"{app.url}/ping?token={URL_TOKEN}")
            loud = caplog.text
            caplog.clear()
            quiet_http_client_loggers()
            with caplog.at_level(logging.DEBUG):
                client.get(f"{app.url}/ping?token={URL_TOKEN}")
            quiet = caplog.text
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
    assert URL_TOKEN in loud  # httpx does log the URL: the check below is not vacuous
    assert URL_TOKEN not in quiet and "HTTP Request" not in quiet, quiet


def test_core_silences_the_http_client_whatever_level_a_caller_sets_later(tmp_path):
    """A program using core alone (no definitions.py, no CLI), which turns httpx's logger up
    itself: the webhook's request line, with the token in its URL, is still never logged."""
    with ReceivingApp(secret=WEBHOOK_SECRET) as app:
        script = textwrap.dedent(
            f"""
            import logging
            from regularization_pipeline.core.delivery.events import new_event
            from regularization_pipeline.core.delivery.webhook import WebhookPublisher
            from regularization_pipeline.core.clock import utcnow

            logging.basicConfig(level=logging.DEBUG)
            logging.getLogger("httpx").setLevel(logging.INFO)
            url = {app.url + "/hooks/" + URL_TOKEN!r}
            WebhookPublisher(url, {WEBHOOK_SECRET!r}).publish(
                new_event(7, 70, "10.00", "EUR", "run-1", utcnow())
            )
            print("published")
            """
        )
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
        )
        received = len(app.accepted())
    assert done.returncode == 0 and "published" in done.stdout, done.stderr
    assert received == 1
    assert URL_TOKEN not in done.stderr + done.stdout, done.stderr


def test_a_full_run_and_dispatch_logs_no_personal_data_or_secret(engine, tmp_path):
    mapping = SchemaMapping.parse({"transactions": {"reference": "reference"}})
    shop = migrated_shop(engine, mapping)
    if engine.dialect.name != "sqlite":
        # An application that stores whole card numbers where it meant the last four: the worst case.
        with engine.begin() as conn:
            modify = (
                "ALTER COLUMN card_last4 TYPE varchar(19)"
                if engine.dialect.name == "postgresql"
                else "MODIFY card_last4 varchar(19)"
            )
            conn.execute(sa.text(f"ALTER TABLE transactions {modify}"))
    orders, txs = shop.tables.orders, shop.tables.transactions
    with engine.begin() as conn:
        conn.execute(
            shop.tables.customers.insert(),
            [{"id": i + 1, "name": n, "email": e} for i, (n, e) in enumerate(CUSTOMERS)],
        )
    ids = [shop.orphan(customer_id=1 + i % 2) for i in range(6)]
    failing = shop.order(customer_id=1, total="10.00")
    shop.payment(failing, amount="12.00")  # an amount mismatch: an inconsistency, audited
    with engine.begin() as conn:
        for i, order_id in enumerate([*ids, failing]):
            conn.execute(
                txs.update().where(txs.c.order_id == order_id).values(card_last4=CARDS[i % 2])
            )
        assert (
            conn.execute(
                sa.select(sa.func.count())
                .select_from(orders)
                .where(orders.c.customer_id.is_not(None))
            ).scalar_one()
            == 7
        )

    log_file = tmp_path / "run.log"
    handler = logging.FileHandler(log_file, encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    # Every logger (the root's handler sees them all), at DEBUG, configured as our processes
    # configure logging (definitions.py and the CLI call quiet_http_client_loggers).
    loggers = [logging.getLogger(), logging.getLogger("sqlalchemy.engine")]
    saved = [(lg, lg.level) for lg in loggers]
    saved += [(logging.getLogger(n), logging.getLogger(n).level) for n in HTTP_CLIENT_LOGGERS]
    quiet_http_client_loggers()
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
    try:
        with (
            ProviderStub(PROVIDER_TOKEN, default_status="completed") as provider,
            ReceivingApp(WEBHOOK_SECRET) as app,
        ):
            gateway = GatewaySettings(
                base_url=provider.url + "/v1",
                path_template="/payments/{reference}",
                status_path="data.status",
                max_requests_per_second=1000,
                burst=10,
            )
            verifier = GatewayVerifier(gateway, PROVIDER_TOKEN, sleeper=no_sleep)
            summary = Regularizer(engine, shop.schema, sleeper=no_sleep, verifier=verifier).run(
                RunOptions(sleep=0)
            )
            verifier.close()
            settings = PublisherSettings.parse(
                kinds=["webhook"],
                webhook_url=f"{app.url}/hooks?token={URL_TOKEN}",
                webhook_secret=WEBHOOK_SECRET,
            )
            publishers = build_publishers(settings)
            sent = OutboxDispatcher(engine, owned_tables(), publishers).dispatch()
            for pub in publishers:
                pub.close()
            accepted = len(app.accepted())
    finally:
        for lg, level in saved:
            lg.removeHandler(handler)
            lg.setLevel(level)
        handler.close()

    assert summary.regularized == len(ids) and summary.inconsistent_by_kind["amount_mismatch"] == 1
    assert sent.delivered == accepted == len(ids)
    text = log_file.read_text(encoding="utf-8")
    assert (
        "SELECT" in text and "regularization_pipeline" in text
    )  # both loggers really wrote at DEBUG
    secrets = [
        *(n for n, _ in CUSTOMERS),
        *(e for _, e in CUSTOMERS),
        *CARDS,
        WEBHOOK_SECRET,
        PROVIDER_TOKEN,
        URL_TOKEN,
    ]
    found = [s for s in secrets if s in text]
    assert found == [], f"{found} in the run's log"
    figures(
        f"security/{engine.dialect.name}/log scan",
        log_lines=text.count("\n"),
        log_bytes=len(text.encode()),
        seeded_secrets=len(secrets),
        found=len(found),
    )
