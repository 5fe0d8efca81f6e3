"""POST /hooks/generic: any script or tool sends JSON {"subject", "text", "html"?}.

The smallest source, and the shape the others copy: load_config, verify, parse.
"""
from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from typing import Mapping

from bridge.settings import EnvReader
from bridge.events import Event, Rejected, bearer_token, header, json_object, media_type, same_secret

NAME = "generic"
MAX_BODY = 1024 * 1024
MAX_SUBJECT = 998  # RFC 5322's line limit; longer is a mistake, not a subject


@dataclass(frozen=True)
class Config:
    token: str = field(repr=False)


def load_config(env: EnvReader) -> Config:
    return Config(token=env.str("GENERIC_TOKEN"))


def verify(headers: Mapping[str, str], body: bytes, config: Config) -> None:
    if config.token and not same_secret(bearer_token(headers), config.token):
        raise Rejected(401, "missing or wrong bearer token (GENERIC_TOKEN)")


def _text_field(doc: dict, name: str, required: bool) -> str | None:
    value = doc.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        raise Rejected(400, f'"{name}" must be a non-empty string')
    return value


def parse(headers: Mapping[str, str], body: bytes, config: Config, route: str | None = None) -> list[Event]:
    """`route` is part of every source's interface; only defined sources' templates read it."""
    if media_type(headers) != "application/json":
        raise Rejected(415, "send Content-Type: application/json")
    doc = json_object(body)
    subject = _text_field(doc, "subject", required=True)
    if len(subject) > MAX_SUBJECT:
        raise Rejected(400, f'"subject" is longer than {MAX_SUBJECT} characters')
    text = _text_field(doc, "text", required=True)
    html = _text_field(doc, "html", required=False)
    thread = _text_field(doc, "thread", required=False)
    key = header(headers, "Idempotency-Key").strip()
    # Without a key every request is new; with one, the key alone decides.
    dedup = "generic:" + (hashlib.sha256(key.encode()).hexdigest() if key else uuid.uuid4().hex)
    return [Event(source=NAME, kind="generic:message", dedup_key=dedup, template="generic/message",
                  context={"subject": subject, "text": text, "html": html},
                  thread_key=f"generic:{thread}" if thread else None,
                  delivery_id=key or None)]
