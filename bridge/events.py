"""The neutral shapes every layer shares: Event, Answer, the one typed error, and small helpers
for headers, JSON bodies and secrets. Nothing here knows a source, a template or a database."""
from __future__ import annotations

import base64
import functools
import hmac
import json
import re
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Mapping


class Rejected(Exception):
    """The request cannot be taken: the web layer answers `status` with `reason` (one line)."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Answer:
    """A request that is fine but makes no mail: a ping (`pong`) or nothing to parse."""

    status: str
    reason: str = ""


@dataclass(frozen=True)
class Event:
    """One thing that happened, to be mailed once.

    `template` names the template family (`github/push` → github/push.subject.j2, .txt.j2,
    .html.j2); `context` is what those templates see. `dedup_key` makes a repeat a duplicate;
    with `dedup_window` set, only a repeat within that many seconds is one. `thread_key` puts
    every mail about one thing in one thread; `thread_root` marks the event that opens it.
    """

    source: str
    kind: str
    dedup_key: str
    template: str
    context: Mapping[str, Any]
    thread_key: str | None = None
    thread_root: bool = False
    headers: Mapping[str, str] = field(default_factory=dict)
    attachments: tuple[Mapping[str, Any], ...] = ()
    ignored: str | None = None
    delivery_id: str | None = None
    dedup_window: float | None = None
    # What answering this mail does (bridge/actions: target and its ids); None: nothing.
    reply_target: Mapping[str, Any] | None = None


def header(headers: Mapping[str, str], name: str) -> str:
    """Case-insensitive header lookup on a plain mapping ('' when absent)."""
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return ""


def media_type(headers: Mapping[str, str]) -> str:
    return header(headers, "Content-Type").split(";")[0].strip().lower()


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def json_object(raw: str | bytes, what: str = "body") -> dict:
    """Decode a JSON object, or refuse with 400 and a one-line reason."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Rejected(400, f"{what} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise Rejected(400, f"{what} must be a JSON object")
    # JSON may escape a lone UTF-16 surrogate (\ud800), which no mail or database takes. Only
    # an escape can make one (strict UTF-8 has none), so only a body with such an escape is
    # checked: encoding the whole document again costs as much as decoding it.
    if _SURROGATE_ESCAPE.search(raw if isinstance(raw, str) else raw.decode("latin-1")):
        try:
            json.dumps(doc, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise Rejected(400, f"{what} holds a lone UTF-16 surrogate, which is not text") from None
    return doc


def same_secret(given: str, expected: str) -> bool:
    """Constant-time comparison of two secrets of any length."""
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def bearer_token(headers: Mapping[str, str]) -> str:
    scheme, _, token = header(headers, "Authorization").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def presented_secret(headers: Mapping[str, str]) -> str:
    """The bearer token, or the password of basic auth (Alertmanager's and Grafana's HTTP
    settings offer both)."""
    scheme, _, value = header(headers, "Authorization").strip().partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return ""
        return decoded.partition(":")[2]
    return ""


def form_payload(body: bytes) -> str:
    """The `payload=` field of a form body (GitHub's and Gitea's "form" content type)."""
    try:
        form = urllib.parse.parse_qs(body.decode("ascii"), strict_parsing=False)
    except UnicodeDecodeError:
        raise Rejected(400, "form body is not URL-encoded ASCII") from None
    if "payload" not in form:
        raise Rejected(400, "form body has no payload= field")
    return form["payload"][0]


def selected(names: list[str], globs: tuple[str, ...] | list[str]) -> bool:
    """True when a plain glob matches one of `names` and no `!glob` does (only `!` globs: all
    but those)."""
    wanted = [g for g in globs if not g.startswith("!")] or ["*"]
    unwanted = [g[1:] for g in globs if g.startswith("!")]
    return any(matches_any(name, wanted) for name in names) \
        and not any(matches_any(name, unwanted) for name in names)


def matches_any(value: str, globs: tuple[str, ...] | list[str]) -> bool:
    """Globs with * and ? only: brackets are literal, so `*[bot]` means what it says."""
    return any(_glob(g).fullmatch(value) for g in globs)


@functools.lru_cache(maxsize=1024)
def _glob(pattern: str) -> re.Pattern:
    # compiled once: the filters run per request over the same few settings
    return re.compile(re.escape(pattern).replace(r"\*", ".*").replace(r"\?", "."), re.DOTALL)


DURATION = re.compile(r"(?:\d+[smhdw])+")
DURATION_PART = re.compile(r"(\d+)([smhdw])")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(word: str) -> int | None:
    """`2h`, `1d12h`, `90m` → seconds; None for anything else."""
    if not DURATION.fullmatch(word.strip().lower()):
        return None
    return sum(int(n) * UNIT_SECONDS[unit] for n, unit in DURATION_PART.findall(word.lower()))
