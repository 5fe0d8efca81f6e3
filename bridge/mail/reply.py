"""A raw reply mail (bytes) → a Reply, or Ignored with the reason (sans-I/O, no settings).

What is ignored is what must never act: automatic mail (RFC 3834 Auto-Submitted, the
X-Autoreply / X-Autorespond / Precedence headers vacation responders set, delivery-status
reports and bounces, auto-reply subjects in Chinese and English), mail from the bridge's own
addresses (a loop), and mail that references nothing (it cannot be matched to a mail sent).
Whether the references are the bridge's own, signed ids, and whether the sender may act, is
for the caller: this module only reads.

Chinese clients declare charsets loosely: "gb2312" mail is often GBK, so the GB family is
decoded as GB18030 (a superset of both), Big5 as Big5-HKSCS; an undeclared or wrong charset
falls back to UTF-8, then GB18030, then UTF-8 with replacement characters.
"""
from __future__ import annotations

import base64
import binascii
import email
import quopri
import re
from dataclasses import dataclass
from email.message import Message
from email.utils import getaddresses
from typing import Collection

from bridge.mail.htmltext import html_to_text
from bridge.mail.quotes import new_text
from bridge.render import one_line


@dataclass(frozen=True)
class Reply:
    message_id: str              # the reply's own Message-ID, with angle brackets, stripped
    sender: str                  # the From address, lower-cased (no display name)
    subject: str                 # decoded (RFC 2047), CR/LF folded
    text: str                    # the new text only ("" when the reply quotes and adds nothing)
    references: tuple[str, ...]  # In-Reply-To first, then References newest→oldest, deduplicated


@dataclass(frozen=True)
class Ignored:
    reason: str                  # one line a person understands
    message_id: str = ""
    sender: str = ""


_CHARSET_ALIASES = {name: "gb18030" for name in (
    "gb2312", "gb_2312", "gb_2312-80", "gb2312-80", "csgb2312", "euc-cn", "x-euc-cn", "gbk",
    "x-gbk", "cp936", "ms936", "windows-936", "chinese", "gb18030")}
_CHARSET_ALIASES.update({name: "big5hkscs" for name in (
    "big5", "big-5", "x-big5", "cn-big5", "csbig5", "big5-hkscs", "big5hkscs", "cp950")})

_CJK_CODECS = frozenset(_CHARSET_ALIASES.values())
_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
_ANGLE_ID = re.compile(r"<[^<>\s]+>")
_AUTO_SUBJECT = re.compile(
    r"^(?:[\[【(（] ?)?(?:自动回复|自動回覆|自动答复|automatic reply|auto[- ]?reply|autoreply|auto ?:"
    r"|auto[- ]?response|out of (?:the )?office|undeliverable|undelivered mail"
    r"|delivery status notification|mail delivery failed|系统退信|退信)", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_BOUNCE_SENDERS = re.compile(r"^(?:mailer-daemon|postmaster)@", re.IGNORECASE)
_LOUD_PRECEDENCE = frozenset({"bulk", "junk", "list", "auto_reply"})
# A person's reply is short (a GitHub comment holds 65,536 characters, a WeChat text 2,048
# bytes); reading no further keeps a huge or hostile mail from stalling the reader.
MAX_HTML = 300_000
# The stdlib parser recurses per nested multipart or message part, and slows down with the
# square of the depth (RecursionError at about 1,000); a reply has a handful.
MAX_CONTAINERS = 100
_CONTAINER = re.compile(rb"content-type:\s*(?:multipart|message)/", re.IGNORECASE)
MAX_TEXT = 100_000


def _codec(charset: str | None) -> str | None:
    """A Python codec for a declared charset, or None when there is none we can use."""
    if not charset:
        return None
    name = charset.strip().strip('"\'').split("*")[0].lower()   # RFC 2231 charset*lang
    name = _CHARSET_ALIASES.get(name, name)
    try:
        b"a".decode(name)   # LookupError for unknown names and bytes-to-bytes codecs (not b"")
    except (LookupError, ValueError):
        return None
    return name


def decode_bytes(data: bytes, charset: str | None = None) -> str:
    """Bytes in the declared charset if they decode, else UTF-8, else GB18030, else lossy.
    Text labelled GB or Big5 that is valid UTF-8 is UTF-8: GBK text almost never is, and
    mobile clients do mislabel UTF-8 so."""
    declared = _codec(charset)
    order = ("utf-8", declared) if declared in _CJK_CODECS else (declared, "utf-8")
    for name in dict.fromkeys(filter(None, (*order, "gb18030"))):
        try:
            return data.decode(name)
        except (UnicodeError, LookupError, ValueError):
            continue
    return data.decode(_codec(charset) or "utf-8", errors="replace")


def _decode_word(encoding: str, payload: str) -> bytes | None:
    if encoding.lower() == "q":
        return quopri.decodestring(payload.encode("ascii", "replace"), header=True)
    try:
        return base64.b64decode(payload + "=" * (-len(payload) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def decode_header(value: str) -> str:
    """RFC 2047 encoded words and raw 8-bit bytes → text. Adjacent words of one charset are
    joined before decoding: clients split a multi-byte character across two words. A word
    that does not decode stays as it is."""
    pieces: list[tuple[str | None, bytes | str]] = []   # (charset, bytes) or (None, text)
    pos = 0
    for match in _ENCODED_WORD.finditer(value):
        gap = value[pos:match.start()]
        if gap.strip() or not pieces or pieces[-1][0] is None:
            pieces.append((None, gap))   # whitespace between two encoded words is dropped
        charset, data = match.group(1).lower(), _decode_word(match.group(2), match.group(3))
        if data is None:
            pieces.append((None, match.group(0)))
        elif pieces[-1][0] == charset:
            pieces[-1] = (charset, pieces[-1][1] + data)
        else:
            pieces.append((charset, data))
        pos = match.end()
    pieces.append((None, value[pos:]))
    return "".join(_raw_text(data) if charset is None else decode_bytes(data, charset)
                   for charset, data in pieces)


def _raw_text(value: str) -> str:
    """A header value as the parser keeps it (8-bit bytes as surrogates) → text."""
    return decode_bytes(value.encode("utf-8", "surrogateescape"))


def _header(msg: Message, name: str) -> str:
    """The first `name` header as text, RFC 2047 words not decoded; read from the raw header
    because the parser's own decoding gives up on 8-bit GBK."""
    for key, value in msg.raw_items():
        if key.lower() == name.lower():
            return _raw_text(str(value))
    return ""


def _sender(msg: Message) -> str:
    addresses = [addr for _, addr in getaddresses([_header(msg, "From")]) if addr]
    return addresses[0].strip().lower() if addresses else ""


def _message_id(value: str) -> str:
    """The <id> in a Message-ID header (a comment after it is not part of it), else the value."""
    found = _ANGLE_ID.search(value)
    return found.group(0) if found else one_line(value)


def references(msg: Message) -> tuple[str, ...]:
    """In-Reply-To first, then References newest→oldest, each once, with angle brackets."""
    in_reply_to = _header(msg, "In-Reply-To")
    found = _ANGLE_ID.findall(in_reply_to)
    bare = in_reply_to.split()[:1]
    if not found and bare and "@" in bare[0] and not set("<>") & set(bare[0]):
        found = [f"<{bare[0]}>"]   # a client that drops the brackets
    found += reversed(_ANGLE_ID.findall(_header(msg, "References")))
    return tuple(dict.fromkeys(found))


def automatic(msg: Message, subject: str, sender: str) -> str | None:
    """Why this mail was written by a machine (an auto-reply, a bounce), or None."""
    auto_submitted = one_line(_header(msg, "Auto-Submitted"))
    if auto_submitted and auto_submitted.split(";")[0].strip().lower() != "no":
        return f"automatic mail (Auto-Submitted: {auto_submitted})"
    for name in ("X-Autoreply", "X-Autorespond"):
        if name.lower() in (key.lower() for key in msg.keys()):
            return f"automatic mail ({name}: {one_line(_header(msg, name))})"
    precedence = (one_line(_header(msg, "Precedence")).lower().split() or [""])[0]
    if precedence in _LOUD_PRECEDENCE:
        return f"automatic mail (Precedence: {precedence})"
    if msg.get_content_type() == "multipart/report" or any(
            part.get_content_type() == "message/delivery-status" for part in _parts(msg)):
        return "delivery-status report (a bounce)"
    if _BOUNCE_SENDERS.match(sender):
        return f"bounce (from {sender})"
    if _AUTO_SUBJECT.match(subject):
        return f"automatic reply (subject: {subject[:80]})"
    return None


def _parts(msg: Message) -> list[Message]:
    """The leaf parts of the message itself (not of a forwarded message/rfc822 inside it), in
    order; a loop, not recursion, however deep the nesting."""
    leaves, todo = [], [msg]
    while todo:
        part = todo.pop()
        if part.is_multipart() and part.get_content_maintype() == "multipart":
            todo.extend(reversed([sub for sub in part.get_payload() if isinstance(sub, Message)]))
        else:
            leaves.append(part)
    return leaves


def _part_text(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    text = decode_bytes(payload, part.get_content_charset())
    if part.get_content_type() == "text/html":
        return html_to_text(text[:MAX_HTML])
    if str(part.get_param("format", "")).lower() == "flowed":
        return _unflow(text, str(part.get_param("delsp", "")).lower() == "yes")
    return text


def _unflow(text: str, delsp: bool) -> str:
    """RFC 3676 format=flowed: a line ending in a space continues on the next one."""
    out: list[str] = []
    carry = ""
    for line in text.replace("\r\n", "\n").split("\n"):
        if line.startswith(" "):
            line = line[1:]   # space-stuffing
        if line.endswith(" ") and line != "-- ":
            carry += line[:-1] if delsp else line
            continue
        out.append(carry + line)
        carry = ""
    if carry:
        out.append(carry)
    return "\n".join(out)


def body_text(msg: Message) -> str:
    """The text/plain body if there is one with text, else the HTML body made text."""
    inline = [part for part in _parts(msg)
              if part.get_content_maintype() == "text"
              and str(part.get("Content-Disposition", "")).split(";")[0].strip().lower()
              != "attachment"]
    for kind in ("text/plain", "text/html"):
        for part in inline:
            if part.get_content_type() == kind:
                text = _part_text(part)
                if text.strip():
                    return text
    return ""


def _printable(text: str) -> str:
    """Without control characters other than tab and newline (a NUL is text no database takes)."""
    return _CONTROL.sub("", text)


def _own(sender: str, own_addresses: Collection[str]) -> bool:
    if isinstance(own_addresses, str):
        own_addresses = [own_addresses]   # one address, not a collection of characters
    own = {addr.strip().lower() for _, addr in getaddresses(list(own_addresses)) if addr}
    return sender in own


def read_reply(raw: bytes, own_addresses: Collection[str] = ()) -> Reply | Ignored:
    """Read one mail as a reply to the bridge; `own_addresses` are the bridge's From/Reply-To."""
    if len(_CONTAINER.findall(raw)) > MAX_CONTAINERS:
        return Ignored(f"unreadable mail (more than {MAX_CONTAINERS} multipart or message parts)")
    msg = email.message_from_bytes(raw)
    message_id = _printable(_message_id(_header(msg, "Message-ID")))
    sender = _printable(_sender(msg))
    subject = _printable(one_line(decode_header(_header(msg, "Subject"))))
    why = automatic(msg, subject, sender)
    if why is None and not sender:
        why = "no sender address (From)"
    if why is None and _own(sender, own_addresses):
        why = f"mail from the bridge's own address ({sender})"
    refs = tuple(_printable(ref) for ref in references(msg))
    if why is None and not refs:
        why = "not a reply (no In-Reply-To or References to match)"
    if why is not None:
        return Ignored(_printable(why), message_id, sender)
    text = _printable(new_text(body_text(msg)[:MAX_TEXT]))
    return Reply(message_id, sender, subject, text, refs)
