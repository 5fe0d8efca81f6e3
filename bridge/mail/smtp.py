"""SMTP transport: implicit TLS (465), STARTTLS (587) or plain; one logged-in connection
reused across messages and opened again when the server drops it.

Every failure becomes an outbox Failure: 4xx and network trouble are temporary, 5xx is
permanent for that message, and a login failure is a setting to fix, not a bad message. A
provider's limit (by its words, whatever its code: bridge/mail/limits.py) is none of these:
the account pauses and the message waits.
"""
from __future__ import annotations

import smtplib
import socket
import ssl
from email.message import EmailMessage

from bridge.mail.limits import CONNECTIONS, QUOTA, RATE, provider_limit
from bridge.outbox import Failure
from bridge.settings import SmtpSettings

AUTH_HINT = ("login refused: QQ Mail, 163 and 126 want the authorization code (授权码, from the "
             "mailbox's POP3/SMTP settings), not the mailbox password; Gmail wants an app password")
CERT_HINT = ("the server's certificate is not trusted: fix the host name, or point SSL_CERT_FILE "
             "at the CA that signed it")
TLS_HINT = "the server does not offer that: check SMTP_SECURITY (ssl for 465, starttls for 587)"
LIMIT_HINTS = {
    RATE: "the provider limits how fast this account sends: the bridge pauses sending and this mail "
          "waits its turn (see README, Sending limits; SMTP_RATE sets the pace)",
    QUOTA: "the account's daily quota is used up: the bridge pauses until the provider's next day, "
           "and this mail waits",
    CONNECTIONS: "too many connections at once: the bridge uses fewer (SMTP_CONNECTIONS) and retries",
}


class ConnectFailed(Exception):
    """Connecting or logging in failed: no message of the batch can go on this attempt."""

    def __init__(self, cause: BaseException):
        super().__init__(str(cause))
        self.cause = cause


def _text(raw) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


def _limit(exc: BaseException) -> Failure | None:
    """A provider's limit on the account, whatever the code and at whichever step it came."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        answers = [(code, _text(msg)) for code, msg in exc.recipients.values()]
    elif isinstance(exc, smtplib.SMTPResponseException):
        answers = [(exc.smtp_code, _text(exc.smtp_error))]
    else:
        return None
    for code, text in answers:
        kind = provider_limit(code, text)
        if kind:
            return Failure(f"{code} {text}", counts=False, limit=kind, hint=LIMIT_HINTS[kind])
    return None


def classify(exc: BaseException) -> Failure:
    """Map an smtplib / socket / ssl error to what the outbox should do with the message."""
    if isinstance(exc, ConnectFailed):
        return classify(exc.cause)
    limited = _limit(exc)
    if limited:
        return limited
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return Failure(f"{exc.smtp_code} {_text(exc.smtp_error)}", counts=False, hint=AUTH_HINT)
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in exc.recipients.values()]
        detail = "; ".join(f"{rcpt}: {code} {_text(msg)}" for rcpt, (code, msg) in exc.recipients.items())
        return Failure("recipients refused: " + detail, permanent=all(c >= 500 for c in codes))
    if isinstance(exc, smtplib.SMTPResponseException):
        return Failure(f"{exc.smtp_code} {_text(exc.smtp_error)}", permanent=exc.smtp_code >= 500)
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return Failure(str(exc), counts=False, hint=TLS_HINT)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return Failure(f"TLS: {exc.verify_message or exc}", counts=False, hint=CERT_HINT)
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return Failure(f"timed out: {exc}")
    return Failure(f"{type(exc).__name__}: {exc}")


class SmtpTransport:
    def __init__(self, settings: SmtpSettings, local_hostname: str | None = None):
        self.settings = settings
        self.local_hostname = local_hostname
        self.conn: smtplib.SMTP | None = None

    def describe(self) -> str:
        s = self.settings
        return f"SMTP {s.host}:{s.port} ({s.security}{', login ' + s.user if s.user else ''})"

    def _tls_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.settings.cert_file or None)

    def connect(self) -> smtplib.SMTP:
        try:
            return self._connect()
        except Exception as exc:
            raise ConnectFailed(exc) from exc

    def _connect(self) -> smtplib.SMTP:
        s = self.settings
        if s.security == "ssl":
            conn = smtplib.SMTP_SSL(s.host, s.port, timeout=s.timeout, context=self._tls_context(),
                                    local_hostname=self.local_hostname)
        else:
            conn = smtplib.SMTP(s.host, s.port, timeout=s.timeout, local_hostname=self.local_hostname)
        try:
            if s.security == "starttls":
                conn.starttls(context=self._tls_context())
            if s.user:
                conn.login(s.user, s.password)
        except BaseException:
            conn.close()
            raise
        return conn

    def send(self, msg: EmailMessage, mail_from: str, rcpt_to: list[str]) -> str:
        """Send one message; returns a line for the attempt log, raises on failure."""
        reused = self.conn is not None
        if self.conn is None:
            self.conn = self.connect()
        try:
            refused = self.conn.send_message(msg, mail_from, rcpt_to)
        except (smtplib.SMTPServerDisconnected, ConnectionError):
            self.close()
            if not reused:
                raise
            # The server closed an idle connection: one more try on a fresh one.
            self.conn = self.connect()
            refused = self.conn.send_message(msg, mail_from, rcpt_to)
        except smtplib.SMTPResponseException as exc:
            if exc.smtp_code in (421,):  # the server is closing this connection
                self.close()
            else:
                self._reset()
            raise
        except smtplib.SMTPRecipientsRefused:
            self._reset()
            raise
        note = f" (refused: {', '.join(refused)})" if refused else ""
        return f"250 accepted by {self.settings.host}{note}"

    def _reset(self) -> None:
        try:
            self.conn.rset()
        except (smtplib.SMTPException, OSError):
            self.close()

    def check(self) -> None:
        """Connect and log in only (the `check-smtp` command)."""
        conn = self._connect()
        try:
            conn.noop()
        finally:
            conn.quit()

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is None:
            return
        try:
            conn.quit()
        except (smtplib.SMTPException, OSError):
            conn.close()
