"""A real SMTP server for the tests: aiosmtpd with AUTH LOGIN/PLAIN, implicit TLS or STARTTLS
(certificates from trustme), and knobs for the failures a real server has: temporary and
permanent answers, stalls, going away and coming back on the same port."""
from __future__ import annotations

import asyncio
import email
import email.policy
import socket
import ssl
import threading
import time

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Handler:
    def __init__(self, server: "SmtpServer"):
        self.owner = server

    async def handle_DATA(self, smtp, session, envelope):
        srv = self.owner
        if srv.stall_seconds:
            await asyncio.sleep(srv.stall_seconds)
        if srv.delay_seconds:
            await asyncio.sleep(srv.delay_seconds)
        with srv.lock:
            if srv.failures:
                return srv.failures.pop(0)
            msg = email.message_from_bytes(envelope.original_content or envelope.content,
                                           policy=email.policy.default)
            srv.messages.append(msg)
            srv.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 OK queued"


class _Controller(Controller):
    def __init__(self, server: "SmtpServer", **kwargs):
        self.owner = server
        super().__init__(server.handler_class(server), hostname="127.0.0.1", port=server.port, **kwargs)

    def factory(self):
        srv = self.owner
        return SMTP(self.handler, tls_context=srv.starttls_context, require_starttls=bool(srv.starttls_context),
                    authenticator=self._authenticate if srv.user else None,
                    auth_required=bool(srv.user), auth_require_tls=srv.tls == "starttls",
                    hostname="smtp.test")

    def _authenticate(self, smtp, session, envelope, mechanism, auth_data):
        srv = self.owner
        ok = (isinstance(auth_data, LoginPassword)
              and auth_data.login.decode() == srv.user and auth_data.password.decode() == srv.password)
        with srv.lock:
            srv.logins += 1 if ok else 0
            if not ok:  # smtplib tries each mechanism in turn: count sessions, not AUTH lines
                srv.failed_sessions.add(id(session))
        return AuthResult(success=ok, handled=False)


class SmtpServer:
    """tls: 'implicit' (465-like), 'starttls' (587-like) or 'none'."""

    handler_class = Handler

    def __init__(self, ca, tls: str = "implicit", user: str | None = "bot@example.com",
                 password: str = "app-code-123456"):
        self.ca, self.tls, self.user, self.password = ca, tls, user, password
        self.port = free_port()
        self.messages: list = []
        self.envelopes: list = []
        self.failures: list[str] = []
        self.logins = 0
        self.failed_sessions: set[int] = set()
        self.stall_seconds = self.delay_seconds = 0.0
        self.lock = threading.Lock()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        self.server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(self.server_context)
        self.starttls_context = self.server_context if tls == "starttls" else None
        self.controller = None

    def start(self) -> "SmtpServer":
        kwargs = {"ssl_context": self.server_context} if self.tls == "implicit" else {}
        self.controller = _Controller(self, **kwargs)
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def env(self, cafile: str) -> dict[str, str]:
        security = {"implicit": "ssl", "starttls": "starttls", "none": "none"}[self.tls]
        env = {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(self.port), "SMTP_SECURITY": security,
               "SSL_CERT_FILE": cafile}
        if self.user:
            env.update(SMTP_USER=self.user, SMTP_PASSWORD=self.password)
        return env

    @property
    def failed_logins(self) -> int:
        return len(self.failed_sessions)

    def wait_for(self, n: int, timeout: float = 10.0) -> list:
        deadline = time.monotonic() + timeout
        while len(self.messages) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        return list(self.messages)
