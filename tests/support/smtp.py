"""A real SMTP server on 127.0.0.1 (aiosmtpd) for the alert tests; the webhook side is tests.support.http_stubs.ReceivingApp."""

from __future__ import annotations

import threading
from email import message_from_bytes

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from tests.support.processes import free_port


class _Inbox:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.messages: list = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
        with self.lock:
            self.messages.append(
                (envelope.rcpt_tos, message_from_bytes(envelope.content), session.authenticated)
            )
        return "250 OK"


class SmtpServer:
    """``with SmtpServer() as smtp:`` -> ``smtp.port``, ``smtp.subjects()``; with ``login`` it requires AUTH."""

    def __init__(self, login: tuple[str, str] | None = None):
        self.inbox = _Inbox()
        self.port = free_port()
        kwargs = {}
        if login:

            def authenticate(server, session, envelope, mechanism, auth_data):
                ok = (auth_data.login.decode(), auth_data.password.decode()) == login
                return AuthResult(success=ok)

            # Plain-text AUTH on loopback only: the test server has no certificate.
            kwargs = {"authenticator": authenticate, "auth_require_tls": False}
        self.controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port, **kwargs)

    def __enter__(self) -> SmtpServer:
        self.controller.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.controller.stop()

    def messages(self) -> list:
        with self.inbox.lock:
            return list(self.inbox.messages)

    def subjects(self) -> list[str]:
        return [message["Subject"] for _to, message, _auth in self.messages()]
