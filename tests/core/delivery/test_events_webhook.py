"""The webhook publisher against a real receiving app on 127.0.0.1: payload, headers, signature, outcomes."""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import logging
import socket

import httpx
import pytest

from regularization_pipeline.core.delivery.events import OrderCompleted
from regularization_pipeline.core.delivery.publishers import (
    OutboxOnlyPublisher,
    PublisherSettings,
    PythonHandlersPublisher,
    build_publishers,
    close_publishers,
    load_entry_point_handlers,
)
from regularization_pipeline.core.delivery.signing import verify_signature
from regularization_pipeline.core.delivery.webhook import (
    PermanentDeliveryError,
    RetryableDeliveryError,
    WebhookPublisher,
)
from regularization_pipeline.core.errors import ConfigurationError
from regularization_pipeline.defs.resources import EventPublisherResource
from tests.support import ROOT
from tests.support.http_stubs import (
    LOOPBACK_BUFFERS,
    ReceivingApp,
    Reply,
    check_signature,
    endless_answer,
)

SECRET = "whsec_test_0123456789abcdef"


def event(order_id: str = "42") -> OrderCompleted:
    return OrderCompleted(
        event_id="5b0e1c9e-9a57-4a47-8d3c-1f0e2b7c9a10",
        order_id=order_id,
        transaction_id="7",
        amount="49.90",
        currency="EUR",
        occurred_at="2024-05-01T10:00:00+00:00",
        run_id="run-1",
    )


@pytest.fixture
def app():
    with ReceivingApp(secret=SECRET) as stub:
        yield stub


def publisher(url: str, **kw) -> WebhookPublisher:
    kw.setdefault("connect_timeout_seconds", 0.5)
    kw.setdefault("read_timeout_seconds", 0.5)
    return WebhookPublisher(url + "/hooks/order-completed", SECRET, **kw)


def test_payload_and_headers_reach_the_receiver(app):
    pub = publisher(app.url)
    pub.publish(event())
    (rec,) = app.snapshot()
    assert rec.status == 200 and rec.signature_ok is True
    assert rec.path == "/hooks/order-completed"
    assert rec.headers["content-type"] == "application/json"
    assert rec.headers["idempotency-key"] == "order-completed:42"
    assert rec.headers["x-regularization-event-id"] == event().event_id
    assert rec.headers["x-regularization-event-type"] == "OrderCompleted"
    assert json.loads(rec.body) == event().payload()
    assert json.loads(rec.body)["version"] == 1
    pub.close()


def test_signature_passes_on_the_real_body_and_fails_on_a_tampered_one(app):
    pub = publisher(app.url)
    pub.publish(event())
    (genuine,) = app.snapshot()
    assert genuine.signature_ok is True and genuine.status == 200

    # Replay the genuine headers with one byte of the amount changed, as an attacker would.
    tampered = genuine.body.replace(b'"49.90"', b'"0.01"')
    assert tampered != genuine.body
    headers = {
        k: v
        for k, v in genuine.headers.items()
        if k in ("content-type", "idempotency-key", "x-regularization-signature")
    }
    answer = httpx.post(app.url + "/hooks/order-completed", content=tampered, headers=headers)
    assert answer.status_code == 401
    assert app.snapshot()[1].signature_ok is False

    # The documented Python check agrees with the receiver's own code, both ways.
    header = genuine.headers["x-regularization-signature"]
    assert verify_signature(SECRET, header, genuine.body) and check_signature(
        SECRET, header, genuine.body
    )
    assert not verify_signature(SECRET, header, tampered)
    assert not verify_signature("another-secret-of-length", header, genuine.body)
    # An old signature is refused even when the body is intact (replay protection).
    ts = int(header.split(",")[0][2:])
    assert not verify_signature(SECRET, header, genuine.body, now=ts + 301)


def test_wrong_secret_is_refused_by_the_receiver_and_dead_letters(app):
    pub = WebhookPublisher(
        app.url, "not-the-shared-secret", connect_timeout_seconds=0.5, read_timeout_seconds=0.5
    )
    with pytest.raises(PermanentDeliveryError, match="HTTP 401: .*bad signature"):
        pub.publish(event())
    assert app.snapshot()[0].signature_ok is False


@pytest.mark.parametrize(
    ("reply", "outcome", "retry_after"),
    [
        (Reply(201), None, None),
        (Reply(204, b""), None, None),
        (Reply(409, b'{"error":"already processed"}'), None, None),
        (Reply(400, b'{"error":"order 42 unknown"}'), PermanentDeliveryError, None),
        (Reply(404), PermanentDeliveryError, None),
        (Reply(422), PermanentDeliveryError, None),
        (
            Reply(301, headers={"Location": "http://127.0.0.1:9/elsewhere"}),
            PermanentDeliveryError,
            None,
        ),
        (Reply(408), RetryableDeliveryError, None),
        (Reply(429, headers={"Retry-After": "7"}), RetryableDeliveryError, 7.0),
        (Reply(500), RetryableDeliveryError, None),
        (Reply(503, headers={"Retry-After": "120"}), RetryableDeliveryError, 120.0),
    ],
)
def test_status_codes_map_to_delivered_retryable_or_permanent(reply, outcome, retry_after):
    with ReceivingApp(secret=SECRET, default=reply) as app:
        pub = publisher(app.url)
        if outcome is None:
            pub.publish(event())
        else:
            with pytest.raises(outcome) as info:
                pub.publish(event())
            assert f"HTTP {reply.status}" in str(info.value)
            if outcome is RetryableDeliveryError:
                assert info.value.retry_after == retry_after
        # A redirect is never followed: the signed body goes to the configured URL only.
        assert len(app.snapshot()) == 1


def test_permanent_error_keeps_a_truncated_single_line_response_body():
    body = ("line one\nline two " + "x" * 1000).encode()
    with ReceivingApp(secret=SECRET, default=Reply(400, body)) as app:
        with pytest.raises(PermanentDeliveryError) as info:
            publisher(app.url).publish(event())
    text = str(info.value)
    assert text.startswith("webhook answered HTTP 400: line one line two xxx")
    assert "\n" not in text and len(text) < 300


def test_retry_after_as_an_http_date():
    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=90)
    reply = Reply(429, headers={"Retry-After": email.utils.format_datetime(when, usegmt=True)})
    with (
        ReceivingApp(secret=SECRET, default=reply) as app,
        pytest.raises(RetryableDeliveryError) as info,
    ):
        publisher(app.url).publish(event())
    assert 85 <= info.value.retry_after <= 90


def test_a_receiver_slower_than_the_read_timeout_is_retryable():
    with ReceivingApp(secret=SECRET, default=Reply(delay=3.0)) as app:
        with pytest.raises(RetryableDeliveryError, match="timed out"):
            publisher(app.url, read_timeout_seconds=0.3).publish(event())
        assert len(app.snapshot()) == 1


def test_a_receiver_that_is_down_is_retryable_and_the_url_stays_out_of_the_error(caplog):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/hooks?token=do-not-leak"
    caplog.set_level(logging.DEBUG)
    with pytest.raises(RetryableDeliveryError, match="unreachable") as info:
        WebhookPublisher(
            url, SECRET, connect_timeout_seconds=0.5, read_timeout_seconds=0.5
        ).publish(event())
    assert "do-not-leak" not in str(info.value)
    assert SECRET not in caplog.text


# --- settings and the factory -----------------------------------------------------------


def test_settings_build_webhook_and_named_python_handlers():
    settings = PublisherSettings(
        kinds=["python", "webhook"],
        webhook_url="http://127.0.0.1:1/h",
        webhook_secret=SECRET,
        read_timeout_seconds=4,
        python_handlers=["regularization_pipeline.demo.handlers:enroll"],
    )
    pubs = build_publishers(settings)
    assert isinstance(pubs[0], PythonHandlersPublisher) and isinstance(pubs[1], WebhookPublisher)
    assert set(pubs[0].handlers) == {"regularization_pipeline.demo.handlers:enroll"}
    assert pubs[1].timeout.read == 4
    close_publishers(pubs)
    assert isinstance(build_publishers(PublisherSettings(kinds=["outbox"]))[0], OutboxOnlyPublisher)


def test_the_default_publisher_is_the_outbox_and_the_production_package_installs_no_handler():
    # A real shop's events are never handed to the demo's handlers: none is installed.
    assert PublisherSettings().kinds == ["outbox"]
    assert load_entry_point_handlers() == {}
    with pytest.raises(ConfigurationError, match="'python' is chosen but no handler is installed"):
        build_publishers(PublisherSettings(kinds=["python"]))
    with pytest.raises(ConfigurationError, match="'no.such.module:fn' cannot be imported"):
        build_publishers(PublisherSettings(kinds=["python"], python_handlers=["no.such.module:fn"]))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"kinds": ["webhook"]}, "webhook_url"),
        ({"kinds": ["webhook"], "webhook_url": "ftp://x", "webhook_secret": SECRET}, "webhook_url"),
        (
            {"kinds": ["webhook"], "webhook_url": "http://x", "webhook_secret": "short"},
            "webhook_secret",
        ),
        (
            {
                "kinds": ["webhook"],
                "webhook_url": "http://x",
                "webhook_secret": SECRET,
                "webhook_secret_previous": "short",
            },
            "webhook_secret_previous",
        ),
        ({"kinds": ["outbox", "python"]}, "cannot be combined"),
        ({"kinds": ["python", "python"]}, "once"),
        ({"kinds": ["kafka"]}, "kinds"),
        ({"kinds": []}, "kinds"),
    ],
)
def test_invalid_settings_name_the_field_and_never_the_secret(values, message):
    with pytest.raises(ConfigurationError, match=message) as info:
        PublisherSettings.parse(**values)
    assert "short" not in str(info.value) and SECRET not in str(info.value)


def test_the_python_receiver_in_docs_events_md_checks_real_deliveries(app):

    text = (ROOT / "docs" / "events.md").read_text()
    block = text.split("#### Python", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(compile(block, "docs/events.md", "exec"), namespace)  # noqa: S102 - our own documentation
    publisher(app.url).publish(event())
    (rec,) = app.snapshot()
    header = rec.headers["x-regularization-signature"]
    assert namespace["verify"](SECRET, header, rec.body) is True
    assert namespace["verify"](SECRET, header, rec.body.replace(b"49.90", b"0.01")) is False
    assert namespace["verify"](SECRET, "", rec.body) is False


OLD_SECRET = "whsec_old_fedcba9876543210"


def test_during_a_rotation_receivers_holding_either_secret_accept_and_one_with_neither_refuses():
    settings = EventPublisherResource(
        publishers=["webhook"],
        webhook_url="http://127.0.0.1:1/unused",
        webhook_secret=SECRET,
        webhook_secret_previous=OLD_SECRET,
    )
    (rotating,) = settings.build_publishers()
    with (
        ReceivingApp(secret=OLD_SECRET) as not_yet_switched,
        ReceivingApp(secret=SECRET) as switched,
        ReceivingApp(secret="whsec_someone_elses_secret") as stranger,
    ):
        for app in (not_yet_switched, switched, stranger):
            rotating.url = app.url + "/hooks/order-completed"
            try:
                rotating.publish(event())
            except PermanentDeliveryError:
                assert app is stranger
        header = not_yet_switched.snapshot()[0].headers["x-regularization-signature"]
        assert [part.split("=")[0] for part in header.split(",")] == ["t", "v1", "v1"]
        assert [r.status for r in not_yet_switched.snapshot()] == [200]
        assert [r.status for r in switched.snapshot()] == [200]
        assert [r.status for r in stranger.snapshot()] == [401]
        body = switched.snapshot()[0].body
        assert verify_signature(SECRET, header, body) and verify_signature(OLD_SECRET, header, body)
    rotating.close()


def test_once_the_rotation_ends_a_request_carries_one_signature(app):
    publisher(app.url, previous_secret=None).publish(event())
    (rec,) = app.snapshot()
    assert rec.headers["x-regularization-signature"].count("v1=") == 1
    assert rec.status == 200


def test_a_huge_answer_is_read_only_up_to_the_cap():
    """Before issue 25 a 2 GiB answer was read whole (4.2 GB of memory): now reading stops at
    MAX_RESPONSE_BYTES and the connection is dropped; the rest is never sent."""
    from regularization_pipeline.core.delivery.webhook import MAX_RESPONSE_BYTES

    # A refusal (4xx) keeps an excerpt of the answer, so the cap is what bounds it.
    with endless_answer(b"HTTP/1.1 422 Unprocessable Entity\r\n\r\n") as (url, sent):
        pub = WebhookPublisher(url, SECRET, total_timeout_seconds=20)
        try:
            with pytest.raises(PermanentDeliveryError, match="webhook answered HTTP 422: xxx"):
                pub.publish(event())
        finally:
            pub.close()
    # What loopback's socket buffers took in before the close (on this machine up to 32 MiB of
    # receive buffer and 4 MiB of send buffer: 4 MiB was seen once), never the 2 GiB.
    assert sent and sent[0] <= LOOPBACK_BUFFERS + MAX_RESPONSE_BYTES
