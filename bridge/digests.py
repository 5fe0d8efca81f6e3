"""Digests: when more mail waits for one recipient list than the budget sends within
DIGEST_AFTER seconds, the waiting mails are combined, so a storm reaches the inbox in minutes
as a few mails instead of in hours as hundreds.

`plan()` and `digest_context()` are plain functions over rows; `Digester` reads the waiting
rows, renders each digest from the `digest/digest` templates (overridable like any other) and
stores it with `Outbox.store_digest`, which marks what it carries in the same transaction.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

from bridge.events import Event
from bridge.logs import log_line
from bridge.mail.compose import mail_domain, message_id
from bridge.outbox import NewMail

THREAD_MIN = 3          # this many waiting events of one thread get a digest in that thread
LINES_SHOWN = 3         # first lines of each event's text
LINE_CHARS = 200
CHECK_EVERY = 1.0       # seconds between looks at the queue, per process
_URL = re.compile(r"https?://[^\s<>\"')\]]+")


@dataclass(frozen=True)
class Group:
    """Rows one digest carries; `thread` is the thread's root Message-ID, or None (by source)."""

    rows: tuple[Any, ...]
    thread: str | None


def thread_of(row) -> str:
    """The root Message-ID a row hangs off (a row that opens a thread is its own root)."""
    return row.in_reply_to or row.message_id


def _chunks(rows: Sequence[Any], most: int) -> list[tuple[Any, ...]]:
    """Split into as few pieces of at most `most` as possible, of nearly equal size."""
    count = -(-len(rows) // most)
    size = -(-len(rows) // count) if count else 0
    return [tuple(rows[i:i + size]) for i in range(0, len(rows), size)] if size else []


def plan(rows: Sequence[Any], most: int) -> list[Group]:
    """Waiting rows (arrival order) → digests: one per busy thread, the rest one per source;
    at most `most` events each. A group of one is no digest: that row goes alone."""
    by_thread: dict[str, list] = {}
    for row in rows:
        by_thread.setdefault(thread_of(row), []).append(row)
    groups, rest = [], []
    for thread, members in by_thread.items():
        if len(members) >= THREAD_MIN:
            groups += [Group(chunk, thread) for chunk in _chunks(members, most)]
        else:
            rest += members
    by_source: dict[str, list] = {}
    for row in sorted(rest, key=lambda r: r.id):
        by_source.setdefault(row.source, []).append(row)
    for members in by_source.values():
        groups += [Group(chunk, None) for chunk in _chunks(members, most)]
    return sorted((g for g in groups if len(g.rows) >= 2), key=lambda g: g.rows[0].id)


def kind_label(kind: str) -> str:
    """`github:issues.opened` → `issues`: what the subject counts."""
    return kind.partition(":")[2].partition(".")[0] or kind


def _scope(rows: Sequence[Any]) -> str | None:
    """What every row is about, when the source says (GitHub's List-Id: `acme/widgets`)."""
    names = {json.loads(row.headers or "{}").get("List-Id", "").partition(" <")[0].strip() for row in rows}
    return names.pop() if len(names) == 1 and "" not in names else None


def digest_context(group: Group, zone) -> dict[str, Any]:
    """What the digest templates see."""
    rows = group.rows
    events = []
    for row in rows:
        lines = [line.strip() for line in (row.text or "").splitlines() if line.strip()]
        link = _URL.search(row.text or "")
        events.append({
            "id": row.id, "subject": row.subject, "kind": row.kind, "source": row.source,
            "lines": [line[:LINE_CHARS] for line in lines[:LINES_SHOWN]],
            "more_lines": max(0, len(lines) - LINES_SHOWN),
            "link": link.group(0).rstrip(".,;:") if link else None,
            "at": dt.datetime.fromtimestamp(row.created_at, zone).strftime("%Y-%m-%d %H:%M:%S"),
        })
    sources = list(dict.fromkeys(row.source for row in rows))
    return {"count": len(rows), "source": ", ".join(sources), "scope": _scope(rows),
            "kinds": Counter(kind_label(row.kind) for row in rows).most_common(),
            "thread": group.thread is not None, "thread_subject": rows[0].subject if group.thread else None,
            "events": events, "zone": getattr(zone, "key", str(zone))}


def digest_mail(group: Group, rendered, domain: str) -> NewMail:
    """The digest as an outbox row: its key (and so its Message-ID) comes from what it carries."""
    first = group.rows[0]
    key = "digest:" + hashlib.sha256(",".join(str(r.id) for r in group.rows).encode()).hexdigest()[:32]
    headers = {k: v for k, v in json.loads(first.headers or "{}").items() if k == "List-Id"} \
        if _scope(group.rows) else {}
    return NewMail(
        dedup_key=key, source=first.source, kind=f"{first.source}:digest", subject=rendered.subject,
        text=rendered.text, html=rendered.html, mail_from=first.mail_from,
        mail_to=tuple(a.strip() for a in first.mail_to.split(",") if a.strip()),
        message_id=message_id(key, domain), in_reply_to=group.thread, route=first.route,
        headers=headers)


def shared_target(group: Group) -> dict | None:
    """What answering the digest acts on: the thread's target when every event it carries has
    that one (a storm on one issue); a digest of many things has none."""
    targets = {row.reply_target for row in group.rows}
    return json.loads(targets.pop()) if group.thread and len(targets) == 1 and None not in targets else None


class Digester:
    """Looks at the queue (at most once a second per process) and combines what waits."""

    def __init__(self, outbox, pacer, renderer, settings, invite=lambda mail, target: mail):
        self.outbox, self.pacer, self.renderer, self.settings = outbox, pacer, renderer, settings
        self.invite = invite  # (mail, reply target) → the mail as stored: answerable when replies are on
        self._looked = 0.0
        self._lock = threading.Lock()

    def maybe_combine(self) -> int:
        """Build the digests the queue calls for now; returns how many were stored. A sender
        thread asks before it claims; the others wait meanwhile, so none of them claims alone
        a row the digest is about to carry."""
        with self._lock:
            if self.settings.digest_max < 2 or time.monotonic() - self._looked < CHECK_EVERY:
                return 0
            self._looked = time.monotonic()
            return self._combine_all()

    def _combine_all(self) -> int:
        capacity = self.pacer.capacity(self.settings.digest_after)
        if capacity is None:
            return 0
        made = 0
        for mail_to, waiting in self.outbox.waiting_lists().items():
            if waiting > capacity:
                made += self.combine(mail_to)
        return made

    def combine(self, mail_to: str) -> int:
        made = self.outbox.combine(mail_to, self.digests)
        for digest_id, events in made:
            log_line("digest", outbox_id=digest_id, events=events, mail_to=mail_to)
        return len(made)

    def digests(self, rows) -> list[tuple[list[int], NewMail]]:
        """Waiting rows → [(carried ids, the digest mail)], rendered from the digest templates."""
        out = []
        for group in plan(rows, self.settings.digest_max):
            event = Event(source=group.rows[0].source, kind="digest", dedup_key="", template="digest/digest",
                          context=digest_context(group, self.settings.timezone))
            mail = digest_mail(group, self.renderer.render(event), mail_domain(group.rows[0].mail_from))
            out.append(([r.id for r in group.rows], self.invite(mail, shared_target(group))))
        return out
