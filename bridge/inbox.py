"""The IMAP reader: mail in the reply mailbox → stored reply rows (actions, or reasons).

One reader at a time across processes: the lease `imap_reader` in the database, renewed
while it reads; another process takes over when a holder stops renewing. A lost connection is
retried with a growing pause. Each message is judged (bridge/mail/reply.py, then the sender
allow-list and the signed references), stored, and only then flagged \\Seen, so a crash in
between reads it again and the stored Message-ID makes that a no-op.
"""
from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from email.utils import parseaddr

from bridge import commands, metrics
from bridge.actions import github, wechat
from bridge.actions.store import IGNORED, QUEUED, NewReply
from bridge.events import matches_any
from bridge.logs import log_line
from bridge.mail.imap import LoginError, Mailbox
from bridge.mail.reply import Ignored, read_reply
from bridge.mail.tokens import verified

LOGIN_HINT = ("QQ Mail / 163: turn IMAP on in the mailbox's settings and log in with the "
              "authorization code (授权码), as for SMTP; Gmail: an app password")
LEASE = "imap_reader"
LEASE_SECONDS = 30.0
IDLE_SLICE = 9.0                 # re-issue IDLE (and renew the lease) this often
BACKOFF_MAX = 300.0


def plan(settings, reply, target: dict | None) -> tuple[str, str | None, dict]:
    """(target name, thread, action) for a reply to a mail with this target (sans-I/O)."""
    if not target:
        return "none", None, {"op": "nothing"}
    name = target["target"]
    if name == "alertmanager":
        return name, target["thread"], commands.plan_alert_reply(
            reply.text, target, settings.replies.max_silence_seconds)
    if not reply.text.strip():
        return "none", None, {"op": "empty"}
    if name == "github":
        return name, f"github:{target['repo']}#{target['number']}", github.plan(reply.text, target, reply.sender)
    return name, f"wechat:{target['openid']}", wechat.plan(reply.text, target)


class Inbox:
    def __init__(self, services, on_stored=lambda: None):
        self.services = services
        self.settings = services.settings.replies
        self.store = services.replies
        self.on_stored = on_stored
        self.holder = uuid.uuid4().hex
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        own = {parseaddr(a)[1].lower() for a in (services.settings.mail_from, self.settings.reply_to)}
        self.own_addresses = own | ({self.settings.imap.user.lower()} if "@" in self.settings.imap.user else set())

    # -- judging one message
    def allowed(self, sender: str) -> bool:
        return matches_any(sender.lower(), self.settings.allowed_senders)

    def answered(self, references):
        """The outbox row of the first reference the bridge signed (and still has)."""
        secret = self.store.secret()
        for ref in references:
            if verified(ref, secret):
                row = self.services.outbox.by_message_id(ref)
                if row is not None:
                    return row
        return None

    def judge(self, raw: bytes, imap_uid: str | None) -> NewReply:
        parsed = read_reply(raw, self.own_addresses)
        if isinstance(parsed, Ignored):
            return NewReply(message_id=parsed.message_id or f"<imap-{imap_uid}@bridge.invalid>", imap_uid=imap_uid,
                            sender=parsed.sender, subject="", text="", references=(), status=IGNORED,
                            reason=parsed.reason)
        base = dict(message_id=parsed.message_id or f"<imap-{imap_uid}@bridge.invalid>", imap_uid=imap_uid,
                    sender=parsed.sender, subject=parsed.subject, text=parsed.text, references=parsed.references)
        if not self.allowed(parsed.sender):
            return NewReply(**base, status=IGNORED, reason="the sender is not in REPLY_ALLOWED_SENDERS")
        row = self.answered(parsed.references)
        if row is None:
            return NewReply(**base, status=IGNORED,
                            reason="no reference to a mail of this bridge (made up, altered, or pruned)")
        target = json.loads(row.reply_target) if row.reply_target else None
        name, thread, action = plan(self.services.settings, parsed, target)
        return NewReply(**base, status=QUEUED, outbox_id=row.id, target=name, thread=thread, action=action)

    def take(self, raw: bytes, imap_uid: str | None = None) -> str:
        """Judge and store one message; returns the outcome (for logs and /metrics)."""
        reply = self.judge(raw, imap_uid)
        stored = self.store.record(reply)
        outcome = "duplicate" if stored is None else ("accepted" if reply.status == QUEUED else "ignored")
        metrics.reply(outcome)
        log_line("reply", reply_id=stored, outcome=outcome, sender=reply.sender, target=reply.target,
                 op=(reply.action or {}).get("op"), reason=reply.reason, message_id=reply.message_id)
        if outcome == "accepted":
            self.on_stored()
        return outcome

    # -- reading the mailbox
    def _position_key(self) -> str:
        s = self.settings.imap
        return f"imap_last_uid:{s.user}@{s.host}:{s.port}/{s.mailbox}"

    def read_once(self, mailbox: Mailbox) -> int:
        """Take every message that arrived since the last call; returns how many."""
        value, _ = self.store.read_state(self._position_key())
        validity, _, last = (value or "").partition(":")
        after = int(last) if value and int(validity) == mailbox.uidvalidity else None
        uids = mailbox.new_uids(after)
        for uid in uids:
            key = f"{mailbox.uidvalidity}:{uid}"
            if not self.store.seen(imap_uid=key):
                raw = mailbox.fetch(uid)
                if raw is not None:
                    self.take(raw, key)
            mailbox.mark_done([uid])
            self.store.write_state(self._position_key(), key)
        if after is None:  # the first read: from now on, whatever comes after the newest mail
            self.store.write_state(self._position_key(), f"{mailbox.uidvalidity}:{mailbox.highest_uid()}")
        return len(uids)

    def once(self) -> int | None:
        """`flask inbox --once`: connect, read what is there, log out; None when another
        process is reading the mailbox (it reads this mail too)."""
        if not self.store.lease(LEASE, self.holder, LEASE_SECONDS):
            return None
        mailbox = Mailbox(self.settings.imap)
        try:
            mailbox.connect()
            return self.read_once(mailbox)
        finally:
            mailbox.close()
            self.store.release_lease(LEASE, self.holder)

    def run(self) -> None:
        pause = 1.0
        while not self.stopping.is_set():
            if not self._lease():
                self.stopping.wait(LEASE_SECONDS / 3)
                continue
            mailbox = Mailbox(self.settings.imap)
            try:
                mailbox.connect()
                log_line("inbox", connected=mailbox.describe(), idle=mailbox.can_idle)
                pause = 1.0
                self._serve(mailbox)
            except Exception as exc:  # network, TLS, login, database: wait, then again
                log_line("inbox_error", logging.WARNING, error=f"{type(exc).__name__}: {exc}"[:300],
                         retry_in=round(pause, 1), via=mailbox.describe(),
                         hint=LOGIN_HINT if isinstance(exc, LoginError) else None)
                self.stopping.wait(pause)
                pause = min(BACKOFF_MAX, pause * 2)
            finally:
                mailbox.close()
        self.store.release_lease(LEASE, self.holder)

    def _lease(self) -> bool:
        try:
            return self.store.lease(LEASE, self.holder, LEASE_SECONDS)
        except Exception as exc:  # the database is away: as if another process held it
            log_line("inbox_error", logging.WARNING, error=f"{type(exc).__name__}: {exc}"[:300])
            return False

    def _serve(self, mailbox: Mailbox) -> None:
        """Read, then wait: IDLE wakes on new mail; without it, read every IMAP_POLL_SECONDS.
        Waits come in slices, so the lease is renewed well before it runs out."""
        poll = self.settings.imap.poll_seconds
        next_read = 0.0
        while not self.stopping.is_set() and self._lease():
            if time.monotonic() >= next_read:
                self.read_once(mailbox)
                next_read = time.monotonic() + poll
            if mailbox.can_idle:
                if mailbox.wait(IDLE_SLICE, self.stopping):
                    next_read = 0.0
            else:
                self.stopping.wait(max(0.0, min(IDLE_SLICE, next_read - time.monotonic())))

    def start(self) -> None:
        self.thread = threading.Thread(target=self.run, name="bridge-inbox", daemon=True)
        self.thread.start()

    def stop(self, timeout: float = 12.0) -> None:
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(timeout)

