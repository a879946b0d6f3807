"""No foreign text reaches a log, a table, the event log, an alert or the console (#26).

The shop's own trigger refuses the flip of one order with a message that carries a
customer's name, a phone number, a card number written with dots, an API token and an
IBAN, as a shop's triggers, constraint names and stored procedures do. The receiver of
OrderCompleted answers 500 with the same text, and an in-process handler raises it. After
a run of the job, ``regularize-order`` (twice, once with ``--debug``) and ``doctor``, none of
the planted values is anywhere we write; each record still names the order, the class,
the server's code, the statement and what to do.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path

import dagster as dg
import sqlalchemy as sa

from regularization_pipeline import cli
from regularization_pipeline.core.delivery.outbox import OutboxDispatcher
from regularization_pipeline.core.delivery.publishers import PythonHandlersPublisher
from regularization_pipeline.core.errors import DEBUG_TERMINAL
from regularization_pipeline.core.shop.tables import owned_tables
from regularization_pipeline.defs import alerts
from regularization_pipeline.defs.resources import (
    AlertResource,
    AppDatabaseResource,
    EventPublisherResource,
)
from tests.support.dagster import materialize_all
from tests.support.databases import migrated_shop
from tests.support.http_stubs import ReceivingApp, Reply
from tests.support.rows import attempts_of, audit_of, outbox_rows

NAME = "Jeanne Dupont"
PHONE = "+33 612 345 678"
CARD = "4111.1111.1111.1111"
TOKEN = "sk_live_4eC39HqLyjWD"
IBAN = "DE89 3704 0044 0532 0130 00"
# MariaDB's MESSAGE_TEXT holds 128 characters: the whole message fits.
MESSAGE = f"refused: {NAME} {PHONE} {CARD} {TOKEN} {IBAN}"
# What must not be found: each planted value, and a telling piece of each (a partial mask
# that kept "Dupont" or "4111.1111" would still leak).
PLANTED = [
    NAME,
    "Dupont",
    PHONE,
    "612 345",
    CARD,
    "4111.1111",
    TOKEN,
    "4eC39HqLyjWD",
    IBAN,
    "3704 0044",
]
SECRET = "whsec_5Yt8LmN0pQrStUvWxYz7"
CODES = {
    "postgresql": "SQLSTATE P0001",
    "mysql": "MariaDB error 1644",
    "sqlite": "SQLITE_CONSTRAINT_TRIGGER",
}


def refusing_handler(event) -> None:
    """An application's handler failing with the customer's data in its message."""
    raise RuntimeError(MESSAGE)


def _refuse_the_flip_of(engine: sa.Engine, order_id: int) -> None:
    """The shop's trigger: a BEFORE UPDATE on orders that refuses ``order_id``'s change of status."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql(
                "CREATE FUNCTION refuse_flip() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                f"IF NEW.id = {order_id} AND NEW.status <> OLD.status THEN "
                f"RAISE EXCEPTION '{MESSAGE}'; END IF; RETURN NEW; END $$"
            )
            conn.exec_driver_sql(
                "CREATE TRIGGER refuse_flip BEFORE UPDATE ON orders "
                "FOR EACH ROW EXECUTE FUNCTION refuse_flip()"
            )
        elif engine.dialect.name in ("mysql", "mariadb"):
            conn.exec_driver_sql(
                "CREATE TRIGGER refuse_flip BEFORE UPDATE ON orders FOR EACH ROW BEGIN "
                f"IF NEW.id = {order_id} AND NEW.status <> OLD.status THEN "
                f"SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = '{MESSAGE}'; END IF; END"
            )
        else:
            conn.exec_driver_sql(
                "CREATE TRIGGER refuse_flip BEFORE UPDATE ON orders FOR EACH ROW "
                f"WHEN NEW.id = {order_id} AND NEW.status <> OLD.status "
                f"BEGIN SELECT RAISE(ABORT, '{MESSAGE}'); END"
            )


def _rows_of_our_tables(engine: sa.Engine) -> str:
    with engine.connect() as conn:
        return "\n".join(
            repr(tuple(row))
            for table in owned_tables().metadata.sorted_tables
            for row in conn.execute(sa.select(table))
        )


def _files_text(directory: Path) -> str:
    """Every file of the Dagster instance (event log and run databases, compute logs), as text."""
    return "\n".join(
        path.read_bytes().decode("utf-8", errors="replace")
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    )


def _found(text: str) -> list[str]:
    return [value for value in PLANTED if value in text]


def test_a_trigger_refusing_with_customer_data_leaves_none_of_it_anywhere(
    engine, db_url, tmp_path, monkeypatch, capsys
):
    shop = migrated_shop(engine)
    others = shop.orphans(2)
    victim = shop.orphan()
    _refuse_the_flip_of(engine, victim)
    code = CODES[engine.dialect.name]
    home = tmp_path / "dagster"
    home.mkdir()
    log_file = tmp_path / "all.log"
    handler = logging.FileHandler(log_file, encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    saved_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    monkeypatch.setenv("REGULARIZATION_DATABASE_URL", db_url)
    monkeypatch.delenv("REGULARIZATION_SCHEMA_FILE", raising=False)
    monkeypatch.delenv("REGULARIZATION_PROVIDER_URL", raising=False)
    try:
        with (
            ReceivingApp(SECRET, default=Reply(500, MESSAGE.encode())) as receiver,
            ReceivingApp() as alert_receiver,
            dg.instance_for_test(temp_dir=str(home)) as instance,
        ):
            publisher = EventPublisherResource(
                publishers=["webhook"],
                webhook_url=receiver.url + "/hooks",
                webhook_secret=SECRET,
            )
            result = materialize_all(db_url, instance, raise_on_error=False, publisher=publisher)
            event_log = "\n".join(repr(entry) for entry in instance.all_logs(result.run_id))
            after_delivery = [row.last_error for row in outbox_rows(engine)]

            # The operator tries the order by hand, then once more with --debug.
            first = cli.main(["regularize-order", "--order-id", str(victim)])
            plain = capsys.readouterr()
            debug = cli.main(
                ["regularize-order", "--order-id", str(victim), "--max-attempts", "3", "--debug"]
            )
            debugged = capsys.readouterr()
            doctor = cli.main(["doctor"])
            doctored = capsys.readouterr()

            # A handler of the application fails with the same text.
            later = dt.datetime.now(dt.UTC).replace(tzinfo=None) + dt.timedelta(days=1)
            OutboxDispatcher(
                engine,
                owned_tables(),
                [PythonHandlersPublisher({"refusing": refusing_handler})],
                clock=lambda: later,
            ).dispatch()

            alert_resource = AlertResource(webhook_url=alert_receiver.url + "/services/T/B/x")
            sensors = {s.name: s for s in alerts.ALERT_SENSORS}
            ticks = {}
            for name in ("alert_on_error_rate", "alert_on_held_orders", "alert_on_failed_run"):
                with dg.build_sensor_context(
                    instance=instance,
                    resources={"alerts": alert_resource, "app_db": AppDatabaseResource(url=db_url)},
                ) as context:
                    ticks[name] = sensors[name].evaluate_tick(context).skip_message
            alert_payloads = [r.body.decode() for r in alert_receiver.snapshot()]
            received_500 = len(receiver.snapshot())
    finally:
        root.removeHandler(handler)
        root.setLevel(saved_level)
        handler.close()
        DEBUG_TERMINAL.show = None

    # The trigger did refuse, on this server, with the planted text: the test is not vacuous.
    assert result.success
    assert [shop.status_of(o) for o in others] == ["completed", "completed"]
    assert shop.status_of(victim) == "pending"
    assert received_500 >= 2  # both events were offered to the receiver, which refused them
    assert MESSAGE in debugged.err, (
        debugged.err
    )  # --debug shows the server's message, on the terminal

    places = {
        "CLI: regularize-order": plain.out + plain.err,
        "CLI: regularize-order --debug (stdout)": debugged.out,
        "CLI: doctor": doctored.out + doctored.err,
        "our tables (audit, attempts, outbox, deliveries...)": _rows_of_our_tables(engine),
        "outbox after the receiver's 500s": repr(after_delivery),
        "Dagster event log (API)": event_log,
        "Dagster instance files (event log, runs, compute logs)": _files_text(home),
        "every logger": log_file.read_text(encoding="utf-8"),
        "alert payloads": "\n".join(alert_payloads),
    }
    leaks = {place: _found(text) for place, text in places.items() if _found(text)}
    assert not leaks, leaks

    # Each record still says which order, what failed and what to do.
    assert (first, debug) == (1, 1)
    assert plain.out.startswith(f"order {victim}: failed ("), plain.out
    failures = [row.reason for row in audit_of(shop, victim)]
    assert len(failures) == 3 and "quarantined after 3 failed attempt(s)" in failures[-1]
    for reason in [*failures, attempts_of(shop, victim).last_reason, plain.out]:
        assert f"[{code}] on UPDATE orders" in reason, reason
        assert "trigger or procedure of the shop's database refused it" in reason, reason
        assert "--debug shows it" in reason, reason
    assert after_delivery and all(
        e == "RetryableDeliveryError: webhook answered HTTP 500" for e in after_delivery
    ), after_delivery
    errors = [row.last_error for row in outbox_rows(engine)]
    assert errors and all(
        e and e.startswith("RuntimeError: its message is not recorded") for e in errors
    ), errors
    assert f"[{code}]" in event_log and "on UPDATE orders" in event_log
    assert ticks["alert_on_held_orders"] == "alert firing: orders_held", ticks
    held = [json.loads(p)["text"] for p in alert_payloads if "orders_held" in p]
    assert held and f"order {victim}" in held[0], held
    assert doctor in (0, 2)


def test_a_database_error_failing_a_step_reaches_the_event_log_as_described(tmp_path):
    """An error that escapes a step: Dagster stores its message and cause chain; ours carry neither."""
    from regularization_pipeline.defs.assets import permanent_errors_fail_without_retry

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'shop.db'}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE orders (id INTEGER PRIMARY KEY, status TEXT)")
        conn.exec_driver_sql("INSERT INTO orders VALUES (1, 'pending')")
    _refuse_the_flip_of(engine, 1)

    @dg.asset
    def flips_an_order() -> None:
        with permanent_errors_fail_without_retry(), engine.begin() as conn:
            conn.exec_driver_sql("UPDATE orders SET status = 'completed' WHERE id = 1")

    home = tmp_path / "dagster"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        result = dg.materialize([flips_an_order], instance=instance, raise_on_error=False)
        failures = instance.all_logs(result.run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
        event_log = "\n".join(repr(entry) for entry in instance.all_logs(result.run_id))
    engine.dispose()
    assert not result.success and failures
    assert not _found(event_log) and not _found(_files_text(home)), _found(event_log)
    assert "[SQLITE_CONSTRAINT_TRIGGER] on UPDATE orders" in event_log
