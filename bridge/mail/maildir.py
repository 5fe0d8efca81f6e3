"""Maildir transport: the embedded default when no SMTP server is configured.

The folder is a real Maildir (new/ cur/ tmp/), so mutt, `mailbox.Maildir` or any IMAP
server pointed at it can read what the bridge would have sent.
"""
from __future__ import annotations

import mailbox
from email.message import EmailMessage
from pathlib import Path


class MaildirTransport:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.box: mailbox.Maildir | None = None

    def describe(self) -> str:
        return f"Maildir {self.path}"

    def send(self, msg: EmailMessage, mail_from: str, rcpt_to: list[str]) -> str:
        if self.box is None:
            self.box = mailbox.Maildir(self.path, create=True)
        key = self.box.add(msg.as_bytes())
        return f"stored in {self.path / 'new' / key}"

    def check(self) -> None:
        mailbox.Maildir(self.path, create=True)

    def close(self) -> None:
        self.box = None
