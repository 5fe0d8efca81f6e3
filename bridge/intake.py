"""Event → rendered, stored outbox row: the one path every source's events take."""
from __future__ import annotations

import hashlib
import uuid
from typing import Any, Mapping

from sqlalchemy.exc import InterfaceError, OperationalError, TimeoutError as PoolTimeout

from bridge.invite import invited
from bridge.mail.compose import mail_domain, thread_ids
from bridge.outbox import NewMail, Stored
from bridge.events import Event

# Errors that mean the outbox database cannot be reached (answer 503 so the sender retries),
# as opposed to one that refuses this payload's values (retrying would not help). A pool whose
# every connection stays busy past its wait (PoolTimeout) is one of the first kind.
DATABASE_DOWN = (OperationalError, InterfaceError, PoolTimeout, OSError)

MASKED = ("authorization", "cookie", "signature", "token", "secret", "password")
REQUEST_BODY_CAP = 256 * 1024


def request_record(method: str, path: str, headers: Mapping[str, str], body: bytes,
                   secret_headers: tuple[str, ...] = ()) -> dict[str, Any]:
    """What the deliveries page shows of a request: secrets masked (by a word in the header's
    name, or because the source says the header carries its credentials), the body capped."""
    secret = {name.lower() for name in secret_headers}
    shown = {name: ("***" if name.lower() in secret or any(word in name.lower() for word in MASKED) else value)
             for name, value in headers.items()}
    text = body[:REQUEST_BODY_CAP].decode("utf-8", "replace")
    return {"method": method, "path": path, "headers": shown, "body": text,
            "truncated": len(body) > REQUEST_BODY_CAP}


def bounded_key(key: str) -> str:
    """A dedup key that fits its column: long ones (built from request headers) are hashed."""
    return key if len(key) <= 200 else "sha256:" + hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()


def store(services, event: Event, recipients: tuple[str, ...], route: str | None = None,
          request: Mapping[str, Any] | None = None) -> Stored:
    """Render `event`, store it (idempotently), and wake the sender."""
    settings = services.settings
    rendered = services.renderer.render(event)
    # A windowed key comes back as a new mail after its window (a reminder): it needs a
    # Message-ID of its own, or mail clients drop it as a copy of the first one.
    id_key = event.dedup_key if event.dedup_window is None else f"{event.dedup_key}@{uuid.uuid4().hex}"
    msg_id, in_reply_to = thread_ids(id_key, event.thread_key, event.thread_root,
                                     mail_domain(settings.mail_from))
    stored = services.outbox.enqueue(invited(services, NewMail(
        dedup_key=bounded_key(event.dedup_key), source=event.source, kind=event.kind,
        subject=rendered.subject, text=rendered.text, html=rendered.html,
        mail_from=settings.mail_from, mail_to=recipients, message_id=msg_id,
        in_reply_to=in_reply_to, route=route, delivery_id=event.delivery_id,
        headers=event.headers, attachments=event.attachments, request=request,
        ignored=event.ignored is not None, dedup_window=event.dedup_window,
    ), event.reply_target))
    if stored.status == "accepted":
        services.wake_sender()
    return stored
