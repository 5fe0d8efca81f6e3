"""Outbox row → email.message.EmailMessage (UTF-8, RFC 2047 headers, multipart/alternative).

Every header value that came from a payload is folded to one line here, whatever the source
did, so a CR or LF can never start a header of its own.
"""
from __future__ import annotations

import functools
import hashlib
import json
from email.message import EmailMessage
from email.headerregistry import HeaderRegistry
from email.policy import EmailPolicy
from email.utils import formatdate, getaddresses
from typing import Any, Iterable

from bridge.render import one_line


class _Policy(EmailPolicy):
    """The default policy, except that a header value of 70-77 characters stays on its own line.

    Python folds such a value whole onto a continuation line ("Subject:\n [FIRING:1] ..."),
    and parsers (Python's among them) read it back with a leading space. One unfolded line
    of under 100 characters is well inside RFC 5322's 998."""

    def _fold(self, name, value, *args, **kwargs):
        folded = super()._fold(name, value, *args, **kwargs)
        head, sep, rest = folded.partition(self.linesep)
        if head == f"{name}:" and rest.startswith(" ") and rest.count(self.linesep) == 1:
            return f"{name}:{rest}"
        return folded


class _Headers(HeaderRegistry):
    """The standard header classes, each made once: the stock registry builds a new class for
    every header of every message, a tenth of a delivery's CPU time."""

    @functools.lru_cache(maxsize=256)
    def __getitem__(self, name):
        return super().__getitem__(name)


POLICY = _Policy(header_factory=_Headers())


def mail_domain(mail_from: str) -> str:
    """The domain of our Message-IDs, lower-cased: every id the bridge makes is then lower
    case, so a reply whose client or relay changed the case still finds its mail."""
    domain = mail_from.rpartition("@")[2].strip(" >").lower()
    return domain or "bridge.invalid"


def message_id(key: str, domain: str) -> str:
    """A stable Message-ID for a key: the same key (a resend, a retry) gives the same id."""
    return f"<{hashlib.sha256(key.encode('utf-8')).hexdigest()[:32]}@{domain}>"


def thread_ids(dedup_key: str, thread_key: str | None, thread_root: bool,
               domain: str) -> tuple[str, str | None]:
    """(Message-ID, In-Reply-To) for an event: a thread hangs off a stable root id, which the
    event that opens the thread takes as its own."""
    if not thread_key:
        return message_id(dedup_key, domain), None
    root = message_id("thread:" + thread_key, domain)
    if thread_root:
        return root, None
    return message_id(dedup_key, domain), root


def _addresses(value: str) -> list[str]:
    return [addr for _, addr in getaddresses([one_line(value)]) if addr]


def set_header(msg: EmailMessage, name: str, value: str) -> None:
    """Set a header whose value may come from a payload. Folding CR/LF is not enough: the
    email package decodes RFC 2047 words as it parses a value (`=?utf-8?q?a=0D=0AX:_y?=`),
    and would write a decoded CR LF out as a line break, so the decoded value is checked too."""
    value = one_line(value)
    if "=?" not in value:  # no encoded word, nothing decodes to a line break: one parse
        msg[name] = value
        return
    for _ in range(3):  # an encoded word may hide another one
        msg[name] = value
        decoded = str(msg[name])
        if "\r" not in decoded and "\n" not in decoded:
            return
        del msg[name]
        value = one_line(decoded)
    msg[name] = value.replace("=?", "= ?")  # give up on encoded words in this value


def compose(row: Any, attachments: Iterable[tuple[str, str, bytes]] = ()) -> EmailMessage:
    """Build the message for an outbox row; `attachments` are (filename, mime type, bytes)."""
    msg = EmailMessage(policy=POLICY)
    set_header(msg, "Subject", row.subject)
    set_header(msg, "From", row.mail_from)
    msg["To"] = ", ".join(_addresses(row.mail_to))
    msg["Date"] = formatdate(row.created_at, localtime=False, usegmt=True)
    set_header(msg, "Message-ID", row.message_id)
    extra: dict[str, str] = json.loads(row.headers or "{}")
    if row.in_reply_to:
        set_header(msg, "In-Reply-To", row.in_reply_to)
        # A confirmation of a reply carries the whole chain; other mails hang off one id.
        set_header(msg, "References", extra.pop("References", row.in_reply_to))
    msg["Auto-Submitted"] = "auto-generated"
    msg["X-Auto-Response-Suppress"] = "All"
    for name, value in extra.items():
        if name.replace("-", "").isalnum():
            set_header(msg, name, value)
    msg.set_content(row.text or "", subtype="plain", charset="utf-8")
    if row.html:
        msg.add_alternative(row.html, subtype="html", charset="utf-8")
    for filename, mime, data in attachments:
        maintype, _, subtype = mime.partition("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype or "octet-stream",
                           filename=one_line(filename))
    return msg


def envelope(row: Any) -> tuple[str, list[str]]:
    """(MAIL FROM, RCPT TO) for a row."""
    sender = _addresses(row.mail_from)
    return (sender[0] if sender else ""), _addresses(row.mail_to)
