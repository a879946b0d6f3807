"""Delivery is bounded in time: a request has a total deadline a trickling receiver cannot stretch,
and a dispatch stops at its budget with nothing lost. Real sockets on 127.0.0.1."""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter

import pytest
import sqlalchemy as sa

from regularization_pipeline.core.delivery.outbox import OutboxDispatcher, RetryPolicy
from regularization_pipeline.core.delivery.webhook import RetryableDeliveryError, WebhookPublisher
from regularization_pipeline.core.shop.tables import PENDING
from tests.core.delivery.test_events_webhook import event as webhook_event
from tests.support.rows import owned
from tests.support.seeds import seed_events

SECRET = "whsec_deadline_0123456789"


class SlowReceiver:
    """Reads each request whole, then never answers (``trickle=False``) or sends its answer one
    byte a second, for ever. Records the idempotency key of every request it received."""

    def __init__(self, trickle: bool):
        self.trickle = trickle
        self.keys: list[str] = []
        self._stop = threading.Event()
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}/hooks"

    def __enter__(self) -> SlowReceiver:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._server.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except OSError:
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head = data.split(b"\r\n\r\n")[0].decode()
            headers = dict(line.split(": ", 1) for line in head.split("\r\n")[1:] if ": " in line)
            self.keys.append(headers.get("Idempotency-Key", "?"))
            answer = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100000
            for byte in answer:
                if self._stop.wait(1.0):
                    return
                if self.trickle:
                    try:
                        conn.sendall(bytes([byte]))
                    except OSError:
                        return


def publisher(url: str, total: float) -> WebhookPublisher:
    return WebhookPublisher(
        url,
        SECRET,
        connect_timeout_seconds=0.5,
        read_timeout_seconds=2.0,
        total_timeout_seconds=total,
    )


@pytest.mark.parametrize("trickle", [False, True], ids=["silent", "trickling"])
def test_a_request_ends_at_its_total_deadline_whatever_the_receiver_does(trickle):
    with SlowReceiver(trickle) as receiver:
        pub = publisher(receiver.url, total=3.0)
        event = webhook_event()
        began = time.monotonic()
        # Silent: the 2 s read timeout ends it. Trickling: every read is short, only the deadline does.
        expected = "exceeded its 3s total deadline" if trickle else r"timed out \(ReadTimeout\)"
        with pytest.raises(RetryableDeliveryError, match=expected):
            pub.publish(event)
        took = time.monotonic() - began
        pub.close()
    assert (2.9 if trickle else 1.9) <= took < 3.5
    assert receiver.keys == [event.idempotency_key]
    assert pub.max_seconds == 3.0


@pytest.mark.parametrize("trickle", [False, True], ids=["silent", "trickling"])
def test_a_dispatch_stops_at_its_budget_and_leaves_the_rest_for_the_next_run(shop, trickle):
    rows = seed_events(shop, 8)
    with SlowReceiver(trickle) as receiver:
        dispatcher = OutboxDispatcher(
            shop.engine,
            owned(shop),
            [publisher(receiver.url, total=1.0)],
            retry=RetryPolicy(base_delay_seconds=60.0, jitter=0.0),
            lease_seconds=5.0,
            budget_seconds=2.5,
        )
        began = time.monotonic()
        summary = dispatcher.dispatch(batch_size=100)
        took = time.monotonic() - began
        posted = Counter(receiver.keys)
    assert took < 2.5  # no delivery started that could end past the budget
    assert summary.stopped_by_budget and summary.delivered == 0
    # Two 1 s requests fit in 2.5 s on a quiet machine, the third would not; on a loaded
    # one the second may not start either. Either way no request ran past the budget.
    tried = summary.retried
    assert tried == len(posted) and 1 <= tried <= 2
    assert summary.left_for_next_run == len(rows) - tried
    assert set(posted.values()) == {1}  # nothing POSTed twice
    ob = owned(shop).outbox
    with shop.engine.connect() as conn:
        states = conn.execute(sa.select(ob.c.state, ob.c.lease_owner, ob.c.attempts)).all()
    # Nothing lost: every event still pending; those not tried are free for the next run at once.
    assert {s.state for s in states} == {PENDING} and len(states) == len(rows)
    assert (
        sorted((s.attempts, s.lease_owner) for s in states)
        == [(0, None)] * (len(rows) - tried) + [(1, None)] * tried
    )
