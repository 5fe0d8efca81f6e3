"""An SMTP server that limits the account as QQ Mail and Gmail do: at most N accepted mails in
any rolling W seconds (past it, `550 Sender frequency limited` at MAIL FROM), and a quota of
mails in total (past it, `550 5.4.5 Daily user sending quota exceeded`). It keeps the time of
every accepted mail, so a test can check that a budget held."""
from __future__ import annotations

import threading
import time
from collections import deque

from tests.smtpd import Handler, SmtpServer

RATE_REPLY = "550 Sender frequency limited"
QUOTA_REPLY = "550 5.4.5 Daily user sending quota exceeded"


class LimitedHandler(Handler):
    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        srv = self.owner
        with srv.lock:
            answer = srv.refusal()
        if answer:
            return answer
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_DATA(self, smtp, session, envelope):
        srv = self.owner
        if srv.hold is not None:  # a test kills the sender while this mail is on the wire
            await smtp.loop.run_in_executor(None, srv.hold.wait, 30)
            return "451 4.3.0 held"
        with srv.lock:  # checked again: two sessions may both have passed MAIL FROM
            refused = srv.refusal()
            if not refused:
                srv.accepted_at.append(time.monotonic())
        if refused:
            return refused
        answer = await super().handle_DATA(smtp, session, envelope)
        if not answer.startswith("250"):
            with srv.lock:
                srv.accepted_at.pop()
        return answer


class LimitedServer(SmtpServer):
    handler_class = LimitedHandler

    def __init__(self, ca, rate: tuple[int, float] | None = None, quota: int = 0):
        super().__init__(ca, tls="none", user=None)
        self.rate, self.quota = rate, quota
        self.accepted_at: deque = deque()
        self.refused_rate = self.refused_quota = 0
        self.hold: threading.Event | None = None

    def refusal(self) -> str | None:
        """The limit answer for a MAIL FROM now, if any (called with the lock held)."""
        if self.quota and len(self.accepted_at) >= self.quota:
            self.refused_quota += 1
            return QUOTA_REPLY
        if self.rate:
            count, seconds = self.rate
            now = time.monotonic()
            if sum(1 for t in self.accepted_at if t > now - seconds) >= count:
                self.refused_rate += 1
                return RATE_REPLY
        return None

    def env(self, cafile: str | None = None) -> dict[str, str]:
        return {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(self.port), "SMTP_SECURITY": "none"}
