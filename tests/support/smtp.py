"""A real SMTP server on 127.0.0.1 (aiosmtpd) for the alert tests; the webhook side is tests.support.http_stubs.ReceivingApp."""

from __future__ import annotations

import ssl
import subprocess
import tempfile
import threading
from email import message_from_bytes
from pathlib import Path

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


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """(certificate, key) for 127.0.0.1, made by the openssl CLI; the certificate is its own CA."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )
    return cert, key


class SmtpServer:
    """``with SmtpServer() as smtp:`` -> ``smtp.port``, ``smtp.subjects()``; with ``login`` it requires AUTH.

    With ``tls=True`` it offers STARTTLS with a self-signed certificate (trust
    ``smtp.ca_file``) and accepts AUTH only after it.
    """

    def __init__(self, login: tuple[str, str] | None = None, tls: bool = False):
        self.inbox = _Inbox()
        self.port = free_port()
        self.ca_file: str | None = None
        self._dir = tempfile.TemporaryDirectory() if tls else None
        kwargs: dict = {}
        if login:

            def authenticate(server, session, envelope, mechanism, auth_data):
                ok = (auth_data.login.decode(), auth_data.password.decode()) == login
                return AuthResult(success=ok)

            kwargs = {"authenticator": authenticate, "auth_require_tls": tls}
        if self._dir is not None:
            cert, key = self_signed_certificate(Path(self._dir.name))
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(cert, key)
            kwargs["tls_context"] = context
            self.ca_file = str(cert)
        self.controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port, **kwargs)

    def __enter__(self) -> SmtpServer:
        self.controller.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.controller.stop()
        if self._dir is not None:
            self._dir.cleanup()

    def messages(self) -> list:
        with self.inbox.lock:
            return list(self.inbox.messages)

    def subjects(self) -> list[str]:
        return [message["Subject"] for _to, message, _auth in self.messages()]
