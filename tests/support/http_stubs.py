"""Real HTTP servers on 127.0.0.1 for the delivery and verification tests.

``ReceivingApp`` plays the application that receives OrderCompleted webhooks:
it checks signatures with its own HMAC code (not the pipeline's), counts what
it received and answers from a script (fail the first N, answer slowly, 429
with Retry-After...). ``ProviderStub`` plays the payment provider's API.
Both run a ``ThreadingHTTPServer`` in a daemon thread and stop promptly:
slow answers wait on an event that ``stop()`` sets.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: bytes = b'{"ok":true}'
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering (a slow or hanging receiver)


@dataclass
class Received:
    at: float  # time.monotonic() when the request arrived
    path: str
    headers: dict[str, str]
    body: bytes
    signature_ok: bool | None = None
    status: int | None = None  # what the stub answered; None while it is still answering

    @property
    def key(self) -> str | None:
        return self.headers.get("idempotency-key")

    @property
    def event_id(self) -> str | None:
        return self.headers.get("x-regularization-event-id")


def check_signature(secret: str, header: str | None, body: bytes, tolerance: float = 300.0) -> bool:
    """A receiver's own check, written from docs/events.md: t=<ts>,v1=<hex> over "<ts>.<body>"."""
    if not header:
        return False
    fields: dict[str, list[str]] = {}
    for part in header.split(","):
        if "=" in part:
            key, value = part.strip().split("=", 1)
            fields.setdefault(key, []).append(value)
    if "t" not in fields or "v1" not in fields or not fields["t"][0].isdigit():
        return False
    if abs(time.time() - int(fields["t"][0])) > tolerance:
        return False
    expected = hmac.new(
        secret.encode(), fields["t"][0].encode() + b"." + body, hashlib.sha256
    ).hexdigest()
    # Each v1 in turn: while a secret rotates the request carries one per secret.
    return any(hmac.compare_digest(expected, candidate) for candidate in fields["v1"])


class _StubServer:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.received: list[Received] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args: Any) -> None:  # keep test output clean
                return None

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                rec = Received(
                    time.monotonic(),
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                )
                reply = stub.answer(rec)
                with stub.lock:
                    stub.received.append(rec)
                if reply.delay and stub.stopping.wait(reply.delay):
                    return
                # Set before writing: the client acts on the answer as soon as it reads it.
                rec.status = reply.status
                try:
                    self.send_response(reply.status)
                    for name, value in {
                        "Content-Type": "application/json",
                        **reply.headers,
                    }.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    rec.status = (
                        None  # the client gave up (its read timeout): it never saw this answer
                    )

            do_GET = _handle  # noqa: N815 - http.server's naming
            do_POST = _handle  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def answer(self, rec: Received) -> Reply:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self):
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def snapshot(self) -> list[Received]:
        with self.lock:
            return list(self.received)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.snapshot()
            if len(got) >= count:
                return got
            time.sleep(0.02)
        raise AssertionError(f"expected {count} request(s), the stub saw {len(self.snapshot())}")


class ReceivingApp(_StubServer):
    """The application's webhook endpoint.

    ``script`` replies are used one per request, in order; then ``default``.
    With a ``secret`` a bad signature gets 401, as a real receiver answers.
    """

    def __init__(
        self,
        secret: str | None = None,
        script: list[Reply] | None = None,
        default: Reply | None = None,
    ):
        super().__init__()
        self.secret = secret
        self.script = deque(script or [])
        self.default = default or Reply()

    def answer(self, rec: Received) -> Reply:
        if self.secret is not None:
            rec.signature_ok = check_signature(
                self.secret, rec.headers.get("x-regularization-signature"), rec.body
            )
            if not rec.signature_ok:
                return Reply(401, b'{"error":"bad signature"}')
        with self.lock:
            return self.script.popleft() if self.script else self.default

    def accepted(self) -> list[Received]:
        """Requests the stub answered with 2xx: the effects the application applied."""
        return [r for r in self.snapshot() if r.status is not None and 200 <= r.status < 300]

    def accepted_per_key(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for rec in self.accepted():
            counts[rec.key] = counts.get(rec.key, 0) + 1
        return counts


class ProviderStub(_StubServer):
    """The payment provider: ``GET /payments/<reference>`` answers ``{"data": {"status": ...}}``.

    ``statuses`` maps a reference to a status value, or to ``GARBAGE`` /
    ``MALFORMED`` for broken bodies; ``script`` replies (429s, 5xx) come first.
    """

    GARBAGE = "<garbage>"
    MALFORMED = "<malformed>"

    def __init__(
        self,
        token: str,
        statuses: dict[str, str] | None = None,
        default_status: str = "completed",
        script: list[Reply] | None = None,
    ):
        super().__init__()
        self.token = token
        self.statuses = statuses or {}
        self.default_status = default_status
        self.script = deque(script or [])

    def answer(self, rec: Received) -> Reply:
        if rec.headers.get("authorization") != f"Bearer {self.token}":
            return Reply(401, b'{"error":"unauthorized"}')
        with self.lock:
            if self.script:
                return self.script.popleft()
        prefix = "/v1/payments/"
        if not rec.path.startswith(prefix):
            return Reply(404, b'{"error":"not found"}')
        reference = rec.path[len(prefix) :]
        status = self.statuses.get(reference, self.default_status)
        if status == self.GARBAGE:
            return Reply(200, b"\x00\xffthis is not json at all")
        if status == self.MALFORMED:
            return Reply(200, b'{"data": {"status": "comp')
        return Reply(200, json.dumps({"data": {"id": reference, "status": status}}).encode())


ENDLESS_BYTES = 2**31  # what an endless answer claims and would send: 2 GiB
# The most an endless answer's bytes can sit in loopback's socket buffers once the client stops
# reading: the largest receive and send buffers the kernel grants (tcp_rmem, tcp_wmem maxima).
LOOPBACK_BUFFERS = 64 * 2**20


@contextlib.contextmanager
def endless_answer(head: bytes):
    """A raw server on loopback whose one answer claims 2 GiB and sends it until the client stops
    reading: yields (url, sent), where ``sent`` gets the bytes it managed to write."""
    sent: list[int] = []
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def answer() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(
                head.replace(
                    b"\r\n\r\n", f"\r\nContent-Length: {ENDLESS_BYTES}\r\n\r\n".encode(), 1
                )
            )
            chunk, total = b"x" * 65536, 0
            try:
                while total < ENDLESS_BYTES:
                    conn.sendall(chunk)
                    total += len(chunk)
            except OSError:  # the client stopped reading and closed
                pass
            sent.append(total)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}", sent
    finally:
        thread.join(timeout=20)
        server.close()
