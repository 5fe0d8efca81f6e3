"""Replies and what they do, stored beside the outbox (same database, same schema upgrade).

`replies`: one row per reply mail read from the mailbox, idempotent on its Message-ID (and on
its IMAP UID): an ignored one keeps its reason; an acted-on one is also the action's queue row
(status, attempts, lease, last error, the API's answer), like an outbox row. It is committed
before the IMAP message is flagged, so a crash in between reads the mail again and finds it.
`bridge_state`: small named values every process shares — the reply-id secret, the WeChat
access token, the IMAP reader's lease.
"""
from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from typing import Any, Mapping

import sqlalchemy as sa
from sqlalchemy.engine import Row

from bridge.outbox import BigId, Outbox, metadata

IGNORED, QUEUED, RUNNING, RETRYING, DONE, FAILED = "ignored", "queued", "running", "retrying", "done", "failed"
STATUSES = (IGNORED, QUEUED, RUNNING, RETRYING, DONE, FAILED)

replies = sa.Table(
    "replies", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("message_id", sa.String(300), nullable=False, unique=True),
    sa.Column("imap_uid", sa.String(100), index=True),           # "<UIDVALIDITY>:<UID>"
    sa.Column("sender", sa.Text, nullable=False, default=""),
    sa.Column("subject", sa.Text, nullable=False, default=""),
    sa.Column("text", sa.Text, nullable=False, default=""),
    sa.Column("references", sa.Text, nullable=False, default="[]"),
    sa.Column("outbox_id", BigId, index=True),                   # the mail it answers
    sa.Column("target", sa.String(32)),                          # github, alertmanager, wechat, none
    sa.Column("thread", sa.Text),
    sa.Column("action", sa.Text),                                # JSON: what to do
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text),                                # why ignored
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("next_attempt_at", sa.Float, nullable=False, default=0.0),
    sa.Column("claim", sa.String(64)),
    sa.Column("claimed_until", sa.Float),
    sa.Column("last_error", sa.Text),
    sa.Column("hint", sa.Text),
    sa.Column("result", sa.Text),                                # JSON: the API's answer
    sa.Column("confirmation_id", BigId),                         # outbox row of the answer mail
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Index("ix_replies_due", "status", "next_attempt_at"),
)

state = sa.Table(
    "bridge_state", metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
    sa.Column("holder", sa.String(64)),
    sa.Column("expires_at", sa.Float),
)


@dataclass(frozen=True)
class NewReply:
    message_id: str
    imap_uid: str | None
    sender: str
    subject: str
    text: str
    references: tuple[str, ...]
    status: str                       # IGNORED or QUEUED
    reason: str | None = None
    outbox_id: int | None = None
    target: str | None = None
    thread: str | None = None
    action: Mapping[str, Any] | None = None


class ReplyStore:
    """Reads and writes of `replies` and `bridge_state`, through the outbox's engine and lock."""

    def __init__(self, outbox: Outbox):
        self.outbox = outbox
        self.engine = outbox.engine
        self._secret: bytes | None = None

    # -- shared state
    def secret(self) -> bytes:
        """The key that signs Message-IDs: made once, kept in the database, the same for every
        process and across restarts (a reply to last month's mail still matches)."""
        if self._secret is None:
            self.put_if_absent("reply_secret", secrets.token_hex(32))
            self._secret = bytes.fromhex(self.read_state("reply_secret")[0])
        return self._secret

    def read_state(self, name: str) -> tuple[str | None, float | None]:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(state.c.value, state.c.expires_at).where(state.c.name == name)).first()
        return (row.value, row.expires_at) if row else (None, None)

    def write_state(self, name: str, value: str, expires_at: float | None = None) -> None:
        with self.outbox._writing() as conn:
            if not conn.execute(state.update().where(state.c.name == name)
                                .values(value=value, expires_at=expires_at)).rowcount:
                conn.execute(state.insert().values(name=name, value=value, expires_at=expires_at))

    def put_if_absent(self, name: str, value: str) -> None:
        with self.outbox._writing() as conn:
            if self.outbox.is_postgres:
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": name})
            if conn.execute(sa.select(state.c.name).where(state.c.name == name)).first() is None:
                conn.execute(state.insert().values(name=name, value=value))

    def lease(self, name: str, holder: str, seconds: float) -> bool:
        """Take or renew the lease `name` for `holder`; False while another holder's is live."""
        now = time.time()
        with self.outbox._writing(durable=False) as conn:
            if self.outbox.is_postgres:
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": name})
            row = conn.execute(sa.select(state.c.holder, state.c.expires_at).where(state.c.name == name)).first()
            if row is None:
                conn.execute(state.insert().values(name=name, value="lease", holder=holder, expires_at=now + seconds))
                return True
            if row.holder != holder and (row.expires_at or 0) > now:
                return False
            conn.execute(state.update().where(state.c.name == name)
                         .values(holder=holder, expires_at=now + seconds))
            return True

    def release_lease(self, name: str, holder: str) -> None:
        with self.outbox._writing(durable=False) as conn:
            conn.execute(state.update().where(state.c.name == name, state.c.holder == holder)
                         .values(holder=None, expires_at=0.0))

    # -- replies
    def seen(self, message_id: str = "", imap_uid: str | None = None) -> bool:
        """Is this reply stored already (same Message-ID, or the same message by its UID)?"""
        clauses = [replies.c.message_id == message_id] if message_id else []
        if imap_uid:
            clauses.append(replies.c.imap_uid == imap_uid)
        if not clauses:
            return False
        with self.engine.connect() as conn:
            return conn.execute(sa.select(replies.c.id).where(sa.or_(*clauses)).limit(1)).first() is not None

    def record(self, reply: NewReply) -> int | None:
        """Store a reply durably; None when its Message-ID is stored already (it acts once)."""
        now = time.time()
        with self.outbox._writing() as conn:
            if self.outbox.is_postgres:  # two readers (a takeover, a cron --once) check one id in turn
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": reply.message_id})
            if conn.execute(sa.select(replies.c.id).where(replies.c.message_id == reply.message_id)).first():
                return None
            return conn.execute(replies.insert().returning(replies.c.id).values(
                message_id=reply.message_id, imap_uid=reply.imap_uid, sender=reply.sender,
                subject=reply.subject, text=reply.text, references=json.dumps(list(reply.references)),
                outbox_id=reply.outbox_id, target=reply.target, thread=reply.thread,
                action=json.dumps(dict(reply.action), ensure_ascii=False) if reply.action is not None else None,
                status=reply.status, reason=reply.reason, attempts=0, next_attempt_at=now,
                created_at=now, updated_at=now)).scalar_one()

    def claim(self, limit: int, lease: float) -> tuple[str, list[Row]]:
        """Due actions, and finished ones whose confirmation is not queued yet."""
        return self.outbox.claim_rows(replies, lambda now: sa.or_(
            sa.and_(replies.c.status.in_((QUEUED, RETRYING)), replies.c.next_attempt_at <= now),
            sa.and_(replies.c.status == RUNNING, replies.c.claimed_until < now),
            sa.and_(replies.c.status.in_((DONE, FAILED)), replies.c.confirmation_id.is_(None),
                    sa.or_(replies.c.claimed_until.is_(None), replies.c.claimed_until < now)),
        ), sa.case((replies.c.status.in_((DONE, FAILED)), replies.c.status), else_=RUNNING), limit, lease)

    def hold(self, row_id: int, token: str, lease: float) -> bool:
        """Renew one claimed row's lease just before it is performed; False when the lease ran
        out meanwhile and another process may have taken the row (then it is theirs)."""
        now = time.time()
        with self.outbox._writing(durable=False) as conn:
            return bool(conn.execute(
                replies.update().where(replies.c.id == row_id, replies.c.claim == token,
                                       replies.c.claimed_until >= now)
                .values(claimed_until=now + lease)).rowcount)

    def finish(self, row_id: int, token: str, status: str, result: Mapping[str, Any] | None,
               error: str | None = None, hint: str | None = None, retry_in: float = 0.0) -> bool:
        """Record one attempt: DONE / FAILED (final) or RETRYING after `retry_in` seconds."""
        now = time.time()
        with self.outbox._writing() as conn:
            return bool(conn.execute(
                replies.update().where(replies.c.id == row_id, replies.c.claim == token)
                .values(status=status, attempts=replies.c.attempts + 1, next_attempt_at=now + retry_in,
                        result=json.dumps(dict(result), ensure_ascii=False) if result is not None else None,
                        last_error=error, hint=hint, updated_at=now,
                        claimed_until=None if status == RETRYING else now + 60)).rowcount)

    def confirmed(self, row_id: int, token: str, outbox_id: int) -> None:
        with self.outbox._writing(durable=False) as conn:
            conn.execute(replies.update().where(replies.c.id == row_id, replies.c.claim == token)
                         .values(confirmation_id=outbox_id, claim=None, claimed_until=None,
                                 updated_at=time.time()))

    def retry(self, row_id: int) -> bool:
        """The deliveries page's retry button: a failed action runs again (and confirms again)."""
        now = time.time()
        with self.outbox._writing() as conn:
            return bool(conn.execute(
                replies.update().where(replies.c.id == row_id, replies.c.status == FAILED)
                .values(status=QUEUED, next_attempt_at=now, claim=None, claimed_until=None,
                        confirmation_id=None, updated_at=now)).rowcount)

    def thread_results(self, target: str, thread: str, op: str) -> list[dict[str, Any]]:
        """The results of this thread's finished actions of one kind (its silences, say)."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(replies.c.action, replies.c.result).where(
                replies.c.target == target, replies.c.thread == thread, replies.c.status == DONE)
                .order_by(replies.c.id)).all()
        return [json.loads(r.result) for r in rows
                if r.result and r.action and json.loads(r.action).get("op") == op]

    def prune(self, before: float) -> int:
        """Delete finished replies (ignored, done, failed and confirmed) created before `before`:
        retention keeps them as long as the mails they answer."""
        finished = sa.or_(replies.c.status == IGNORED,
                          sa.and_(replies.c.status.in_((DONE, FAILED)), replies.c.confirmation_id.is_not(None)))
        with self.outbox._writing(durable=False) as conn:
            return conn.execute(replies.delete().where(finished, replies.c.created_at < before)).rowcount

    def get(self, row_id: int) -> Row | None:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(replies).where(replies.c.id == row_id)).first()

    def for_mails(self, outbox_ids: list[int]) -> list[Row]:
        """Replies answering these outbox rows, or confirmed by them (the deliveries page)."""
        if not outbox_ids:
            return []
        with self.engine.connect() as conn:
            return conn.execute(sa.select(replies).where(sa.or_(
                replies.c.outbox_id.in_(outbox_ids), replies.c.confirmation_id.in_(outbox_ids)))
                .order_by(replies.c.id)).all()

    def recent(self, limit: int = 50) -> list[Row]:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(replies).order_by(replies.c.id.desc()).limit(limit)).all()

    def counts(self) -> dict[tuple[str, str], int]:
        """(target, status) → rows, for /metrics."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(replies.c.target, replies.c.status, sa.func.count())
                                .group_by(replies.c.target, replies.c.status)).all()
        return {(target or "none", status): n for target, status, n in rows}
