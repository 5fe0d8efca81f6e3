"""A reply mail → the new text and its references, or the reason to ignore it (sans-I/O).

STAND-IN until the `replyparse` branch lands the full quote stripper with its sample tests;
same API: `read_reply(raw, own_addresses) -> Reply | Ignored`.
"""
from __future__ import annotations

import email
import email.policy
import re
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import parseaddr
from html.parser import HTMLParser
from typing import Collection


@dataclass(frozen=True)
class Reply:
    message_id: str
    sender: str
    subject: str
    text: str
    references: tuple[str, ...]


@dataclass(frozen=True)
class Ignored:
    reason: str
    message_id: str = ""
    sender: str = ""


AUTO_SUBJECT = re.compile(r"^\s*(自动回复|automatic reply|auto:|out of office|autoreply)", re.I)
QUOTE_HEADERS = [
    re.compile(r"^-{3,}\s*(原始邮件|Original Message)\s*-{3,}", re.I),
    re.compile(r"^_{10,}\s*$"),
    re.compile(r"^\s*在.{0,200}写道[:：]\s*$"),
    re.compile(r"^.{0,200}于.{0,80}写道[:：]\s*$"),
    re.compile(r"^\s*On .{0,300}wrote:\s*$"),
    re.compile(r"^\s*(From|发件人)\s*[:：].{0,300}$"),
]
ID = re.compile(r"<[^<>\s]+>")


class _Text(HTMLParser):
    """HTML → text, without quoted blocks (blockquote, gmail_quote)."""

    BREAKS = {"br", "div", "p", "tr", "li", "h1", "h2", "h3"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag, attrs):
        classes = dict(attrs).get("class") or ""
        if self.skip or tag == "blockquote" or "gmail_quote" in classes or tag in ("style", "script", "head"):
            self.skip += tag not in ("br", "meta")
            return
        if tag in self.BREAKS:
            self.out.append("\n")

    def handle_endtag(self, tag):
        if self.skip and tag not in ("br", "meta"):
            self.skip -= 1

    def handle_data(self, data):
        if not self.skip:
            self.out.append(data.replace("\xa0", " "))


def html_text(html: str) -> str:
    parser = _Text()
    parser.feed(html)
    return re.sub(r"\n{3,}", "\n\n", "".join(parser.out))


def new_text(text: str) -> str:
    """The lines above the quote header, without a signature or `>` quotes."""
    kept = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if line.rstrip() == "--" or any(rx.match(line) for rx in QUOTE_HEADERS):
            break
        if not line.lstrip().startswith(">"):
            kept.append(line.rstrip())
    return "\n".join(kept).strip()


def _body(msg: EmailMessage) -> str:
    part = msg.get_body(preferencelist=("plain", "html"))
    if part is None:
        return ""
    try:
        content = part.get_content()
    except (LookupError, UnicodeError):
        content = part.get_payload(decode=True).decode("gb18030", "replace")
    return html_text(content) if part.get_content_subtype() == "html" else content


def _automatic(msg: EmailMessage) -> str | None:
    auto = str(msg.get("Auto-Submitted", "")).strip().lower()
    if auto and auto != "no":
        return f"automatic mail (Auto-Submitted: {auto})"
    for name in ("X-Autoreply", "X-Autorespond"):
        if msg.get(name) is not None:
            return f"automatic mail ({name})"
    if str(msg.get("Precedence", "")).strip().lower() in ("bulk", "junk", "list"):
        return "automatic mail (Precedence)"
    if msg.get_content_type() == "multipart/report":
        return "delivery report"
    if AUTO_SUBJECT.match(str(msg.get("Subject", ""))):
        return "automatic reply (subject)"
    return None


def read_reply(raw: bytes, own_addresses: Collection[str] = ()) -> Reply | Ignored:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    message_id = (ID.findall(str(msg.get("Message-ID", ""))) or [""])[0]
    sender = parseaddr(str(msg.get("From", "")))[1].lower()
    if sender in {a.lower() for a in own_addresses}:
        return Ignored("mail from the bridge's own address", message_id, sender)
    why = _automatic(msg)
    if why:
        return Ignored(why, message_id, sender)
    refs = ID.findall(str(msg.get("In-Reply-To", ""))) + ID.findall(str(msg.get("References", "")))[::-1]
    if not refs:
        return Ignored("no In-Reply-To or References", message_id, sender)
    return Reply(message_id, sender, str(msg.get("Subject", "")), new_text(_body(msg)),
                 tuple(dict.fromkeys(refs)))
