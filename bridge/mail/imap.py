"""The reply mailbox over IMAP: implicit TLS (993), STARTTLS or plain; IDLE where offered.

Built on IMAPClient (Python 3.11's imaplib has no IDLE): it speaks IDLE, ID and STARTTLS
with our own ssl context, and answers FETCH/SEARCH as parsed values instead of raw lines.
Mail is read with BODY.PEEK[] (the mailbox stays readable by a person) and flagged \\Seen
only after the bridge has stored what it read. New mail is what lies past the last UID the
bridge handled (kept per UIDVALIDITY by the caller); the very first time, what is unseen.
"""
from __future__ import annotations

import ssl
import threading
import time
from typing import Iterable

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError, LoginError

from bridge.settings import ImapSettings

ID_FIELDS = {"name": "bridge", "version": "1", "vendor": "bridge", "support-email": "bridge@localhost"}
IMAP_ERRORS = (IMAPClientError, OSError, ssl.SSLError, EOFError)
__all__ = ["IMAP_ERRORS", "LoginError", "Mailbox"]


class Mailbox:
    """One logged-in connection with the reply folder selected."""

    def __init__(self, settings: ImapSettings):
        self.settings = settings
        self.client: IMAPClient | None = None
        self.uidvalidity = 0
        self.capabilities: frozenset[bytes] = frozenset()

    def describe(self) -> str:
        s = self.settings
        return f"imap {s.security} {s.user}@{s.host}:{s.port}/{s.mailbox}"

    def connect(self) -> None:
        s = self.settings
        context = ssl.create_default_context(cafile=s.cert_file or None)
        client = IMAPClient(s.host, s.port, ssl=s.security == "ssl", ssl_context=context, timeout=s.timeout)
        try:
            if s.security == "starttls":
                client.starttls(context)
            client.login(s.user, s.password)
            self.capabilities = frozenset(client.capabilities())
            # 163/126 refuse SELECT without ID ("Unsafe Login"); QQ drops the connection on a
            # command it does not know: send ID only when the server lists it.
            if b"ID" in self.capabilities:
                client.id_(ID_FIELDS)
            selected = client.select_folder(s.mailbox)
        except BaseException:
            _quietly_close(client)
            raise
        self.client = client
        self.uidvalidity = int(selected.get(b"UIDVALIDITY", 0))

    @property
    def can_idle(self) -> bool:
        return b"IDLE" in self.capabilities

    def new_uids(self, after: int | None) -> list[int]:
        """UIDs of mail past `after` (None: the unseen mail), oldest first. A NOOP first: a
        server may show mail that arrived since the last command only then (Dovecot does)."""
        self.client.noop()
        if after is None:
            found = self.client.search(["UNSEEN"])
        else:  # `n:*` always includes the highest UID, even when it is below n
            found = [uid for uid in self.client.search(["UID", f"{after + 1}:*"]) if uid > after]
        return sorted(found)

    def highest_uid(self) -> int:
        return max(self.client.search(["ALL"]), default=0)

    def fetch(self, uid: int) -> bytes | None:
        data = self.client.fetch([uid], ["BODY.PEEK[]"]).get(uid) or {}
        return data.get(b"BODY[]")

    def mark_done(self, uids: Iterable[int]) -> None:
        uids = list(uids)
        if uids:
            self.client.add_flags(uids, [b"\\Seen"], silent=True)

    def wait(self, seconds: float, stopping: threading.Event) -> bool:
        """IDLE up to `seconds` for the server to say something (new mail), in 1 s steps so a
        stop is quick. True when the server said something."""
        deadline = time.monotonic() + seconds
        self.client.idle()
        try:
            while not stopping.is_set() and time.monotonic() < deadline:
                if self.client.idle_check(timeout=min(1.0, max(0.0, deadline - time.monotonic()))):
                    return True
            return False
        finally:
            self.client.idle_done()

    def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            try:
                client.logout()
            except IMAP_ERRORS:
                _quietly_close(client)


def _quietly_close(client: IMAPClient) -> None:
    try:
        client.shutdown()
    except IMAP_ERRORS:
        pass
