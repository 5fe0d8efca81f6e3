"""The outbox: one table that is both the queue and the delivery history.

Intake inserts a rendered mail (idempotent on its dedup key) and commits before the 2xx goes
back; concurrent requests share one transaction (group commit). Senders claim due rows with
a lease: PostgreSQL's `FOR UPDATE SKIP LOCKED` lets several processes claim side by side;
SQLite serialises writers with `BEGIN IMMEDIATE`. A claim that
outlives its lease (its process died) is due again. Every mark carries the claim token, so a
sender whose lease ran out cannot overwrite the row another sender now owns.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import json
import queue
import random
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import sqlalchemy as sa
from sqlalchemy.engine import Engine, Row

QUEUED, SENDING, SENT, RETRYING, DEAD, IGNORED = "queued", "sending", "sent", "retrying", "dead", "ignored"
STATUSES = (QUEUED, SENDING, SENT, RETRYING, DEAD, IGNORED)
DUPLICATE = "duplicate"  # not a row status: a row whose event came again (`duplicates` > 0)

BODY_COLUMNS = ("text", "html", "headers", "attachments", "request")

metadata = sa.MetaData()
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

outbox = sa.Table(
    "outbox", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("dedup_key", sa.String(300), nullable=False, unique=True),
    sa.Column("fingerprint", sa.String(300), nullable=False, index=True),
    sa.Column("source", sa.String(32), nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("route", sa.String(100)),
    sa.Column("delivery_id", sa.Text, index=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("subject", sa.Text, nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("html", sa.Text),
    sa.Column("mail_from", sa.Text, nullable=False),
    sa.Column("mail_to", sa.Text, nullable=False),
    sa.Column("message_id", sa.String(300), nullable=False),
    sa.Column("in_reply_to", sa.String(300)),
    sa.Column("headers", sa.Text, nullable=False, default="{}"),
    sa.Column("attachments", sa.Text, nullable=False, default="[]"),
    sa.Column("request", sa.Text),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("duplicates", sa.Integer, nullable=False, default=0),
    sa.Column("next_attempt_at", sa.Float, nullable=False),
    sa.Column("claim", sa.String(64)),
    sa.Column("claimed_until", sa.Float),
    sa.Column("last_error", sa.Text),
    sa.Column("hint", sa.Text),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("sent_at", sa.Float),
    # What answering this mail does (JSON, see bridge/actions): replies look it up by Message-ID.
    sa.Column("reply_target", sa.Text),
    sa.Index("ix_outbox_due", "status", "next_attempt_at"),
    sa.Index("ix_outbox_message_id", "message_id"),
)

attempts = sa.Table(
    "attempts", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("outbox_id", BigId, nullable=False, index=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Column("seconds", sa.Float, nullable=False),
)


# Built once: intake runs these per request, and building a statement costs more than running it.
_FIND_KEY = (sa.select(outbox.c.id)
             .where(outbox.c.fingerprint == sa.bindparam("key"), outbox.c.created_at > sa.bindparam("since"))
             .order_by(outbox.c.id.desc()).limit(1))
_COUNT_DUPLICATE = (outbox.update().where(outbox.c.id == sa.bindparam("row_id"))
                    .values(duplicates=outbox.c.duplicates + 1, updated_at=sa.bindparam("now")))
_INSERT = outbox.insert().returning(outbox.c.id)


@dataclass(frozen=True)
class NewMail:
    """A rendered mail, ready to be stored."""

    dedup_key: str
    source: str
    kind: str
    subject: str
    text: str
    html: str | None
    mail_from: str
    mail_to: tuple[str, ...]
    message_id: str
    in_reply_to: str | None = None
    route: str | None = None
    delivery_id: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    attachments: tuple[Mapping[str, Any], ...] = ()
    request: Mapping[str, Any] | None = None
    ignored: bool = False
    dedup_window: float | None = None
    reply_target: str | None = None


@dataclass(frozen=True)
class Stored:
    id: int
    status: str          # "accepted", "duplicate" or "ignored"


@dataclass(frozen=True)
class Failure:
    """Why one send failed. `permanent`: never retry. `counts`: counts toward MAX_ATTEMPTS;
    a login failure does not, so a fixed password delivers what waited."""

    detail: str
    permanent: bool = False
    counts: bool = True
    hint: str | None = None


class GroupCommitter:
    """Runs `store(batch)` on one thread for whatever callers are waiting, so a burst of
    requests shares one transaction. A failed transaction fails every caller in it: none of
    them was stored, and each answers 503."""

    MAX_GROUP = 64

    def __init__(self, store):
        self.store = store
        self.pending: queue.SimpleQueue = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def submit(self, item):
        done = concurrent.futures.Future()
        self.pending.put((item, done))
        with self.lock:  # started on first use: after gunicorn forks, not before
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name="outbox-commit", daemon=True)
                self.thread.start()
        return done.result()

    def _run(self) -> None:
        while True:
            group = [self.pending.get()]
            while len(group) < self.MAX_GROUP:
                try:
                    group.append(self.pending.get_nowait())
                except queue.Empty:
                    break
            try:
                results = self.store([item for item, _ in group])
            except BaseException as exc:  # handed to every caller; this thread lives on
                if len(group) == 1:
                    group[0][1].set_exception(exc)
                    continue
                # One bad row must not fail the requests it shared a transaction with.
                for item, done in group:
                    try:
                        done.set_result(self.store([item])[0])
                    except BaseException as one:
                        done.set_exception(one)
            else:
                for (_, done), result in zip(group, results):
                    done.set_result(result)


def _begin_immediate(dbapi_conn, timeout: float = 30.0) -> None:
    """BEGIN IMMEDIATE, waiting up to `timeout` for a writer in another process. SQLite's own
    busy wait sleeps ever longer (up to 100 ms) between tries, so a waiter sleeps through the
    moments the lock is free and, with two web processes and a worker, some requests wait a
    second; trying every 0.5 ms instead keeps that wait near the other's transaction time."""
    deadline = time.monotonic() + timeout
    dbapi_conn.execute("PRAGMA busy_timeout=0")
    try:
        while True:
            try:
                dbapi_conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise sa.exc.OperationalError("BEGIN IMMEDIATE", None, exc) from exc
            time.sleep(0.0005)
    finally:
        dbapi_conn.execute("PRAGMA busy_timeout=30000")


def _sqlite_engine(url: str) -> Engine:
    path = sa.engine.make_url(url).database
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        # Let us issue BEGIN ourselves: pysqlite's implicit BEGIN is DEFERRED, and a deferred
        # reader that later writes fails at once with SQLITE_BUSY instead of waiting.
        dbapi_conn.isolation_level = None
        dbapi_conn.execute("PRAGMA journal_mode=WAL")
        dbapi_conn.execute("PRAGMA synchronous=FULL")
        dbapi_conn.execute("PRAGMA busy_timeout=30000")

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn):
        _begin_immediate(conn.connection.dbapi_connection)

    return engine


def _add_missing_columns(conn) -> None:
    """A database made by an earlier release gets the columns added since (each new column is
    nullable or has a server default, so old rows stay valid): upgrading is restarting."""
    inspector = sa.inspect(conn)
    for table in metadata.sorted_tables:
        present = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name not in present:
                ddl = sa.schema.CreateColumn(column).compile(dialect=conn.dialect)
                conn.execute(sa.text(f"ALTER TABLE {table.name} ADD COLUMN {ddl}"))
        for index in table.indexes:  # an index added later, on an old table
            index.create(conn, checkfirst=True)


def make_engine(url: str, pool_size: int = 5) -> Engine:
    if url.startswith("sqlite"):
        return _sqlite_engine(url)
    return sa.create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True,
                            pool_recycle=300, connect_args={"connect_timeout": 5})


class Outbox:
    def __init__(self, engine: Engine, retry_base: float = 10.0, retry_max: float = 1800.0,
                 max_attempts: int = 15):
        self.engine = engine
        self.retry_base = retry_base
        self.retry_max = retry_max
        self.max_attempts = max_attempts
        self.is_postgres = engine.dialect.name == "postgresql"
        # SQLite has one writer at a time; threads of one process queue here, on a lock that
        # wakes the next at once, instead of in SQLite's busy handler, which sleeps up to 100 ms.
        self._write_lock = threading.Lock() if not self.is_postgres else contextlib.nullcontext()
        self._committer = GroupCommitter(self._store_group)

    @contextlib.contextmanager
    def _writing(self, durable: bool = True):
        """A write transaction. `durable=False` is for the sender's bookkeeping: its commit
        survives a killed process but not a power cut (no fsync: SQLite WAL with synchronous
        NORMAL, PostgreSQL synchronous_commit off), and what such a cut loses is at worst one
        more send of a mail. Intake is always durable: a 202 is a promise."""
        with self._write_lock, self.engine.connect() as conn:
            if not self.is_postgres:  # a per-connection setting, and only outside a transaction
                conn.connection.dbapi_connection.execute(
                    f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            with conn.begin():
                if self.is_postgres and not durable:
                    conn.execute(sa.text("SET LOCAL synchronous_commit TO OFF"))
                yield conn

    # -- schema
    def create_schema(self) -> None:
        with self._writing() as conn:
            if self.is_postgres:  # several web workers start at once; one creates the tables
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(727274)"))
            metadata.create_all(conn, checkfirst=True)
            _add_missing_columns(conn)

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    # -- intake
    def enqueue(self, mail: NewMail) -> Stored:
        """Store `mail` durably, or say which stored row it duplicates. Concurrent callers
        share one transaction (group commit): one fsync for many requests under load, and
        each caller still returns only after its row is committed."""
        return self._committer.submit(mail)

    def _store_group(self, mails: list[NewMail]) -> list[Stored]:
        now = time.time()
        with self._writing() as conn:
            if self.is_postgres:  # serialise checks of one key across processes, in one order
                for key in sorted({m.dedup_key for m in mails}):
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": key})
            return [self._store_one(conn, mail, now) for mail in mails]

    def _store_one(self, conn, mail: NewMail, now: float) -> Stored:
        since = 0.0 if mail.dedup_window is None else now - mail.dedup_window
        existing = conn.execute(_FIND_KEY, {"key": mail.dedup_key, "since": since}).scalar()
        if existing is not None:
            conn.execute(_COUNT_DUPLICATE, {"row_id": existing, "now": now})
            return Stored(existing, "duplicate")
        key = mail.dedup_key if mail.dedup_window is None else f"{mail.dedup_key}@{now:.6f}"
        row_id = conn.execute(_INSERT, {
            "dedup_key": key, "fingerprint": mail.dedup_key, "source": mail.source, "kind": mail.kind,
            "route": mail.route, "delivery_id": mail.delivery_id,
            "status": IGNORED if mail.ignored else QUEUED,
            "subject": mail.subject, "text": mail.text, "html": mail.html, "mail_from": mail.mail_from,
            "mail_to": ", ".join(mail.mail_to), "message_id": mail.message_id,
            "in_reply_to": mail.in_reply_to, "headers": json.dumps(dict(mail.headers)),
            "attachments": json.dumps(list(mail.attachments)),
            "request": json.dumps(mail.request, ensure_ascii=False) if mail.request else None,
            "attempts": 0, "duplicates": 0, "next_attempt_at": now, "created_at": now, "updated_at": now,
            "reply_target": mail.reply_target,
        }).scalar_one()
        return Stored(row_id, "ignored" if mail.ignored else "accepted")

    # -- sending
    def claim(self, limit: int, lease: float) -> tuple[str, list[Row]]:
        """Take up to `limit` due rows for `lease` seconds; returns the claim token and rows."""
        token = uuid.uuid4().hex
        now = time.time()
        due = sa.or_(
            sa.and_(outbox.c.status.in_((QUEUED, RETRYING)), outbox.c.next_attempt_at <= now),
            sa.and_(outbox.c.status == SENDING, outbox.c.claimed_until < now),
        )
        ids = (sa.select(outbox.c.id).where(due).order_by(outbox.c.next_attempt_at, outbox.c.id)
               .limit(limit).with_for_update(skip_locked=True))
        with self._writing(durable=False) as conn:
            rows = conn.execute(
                outbox.update().where(outbox.c.id.in_(ids.scalar_subquery()))
                .values(status=SENDING, claim=token, claimed_until=now + lease, updated_at=now)
                .returning(*outbox.c)
            ).all()
        return token, sorted(rows, key=lambda r: r.id)

    def mark_sent(self, row_id: int, token: str, detail: str, seconds: float) -> bool:
        """Record a delivery at once: a sender killed later resends nothing it already sent,
        only the message it had in hand."""
        now = time.time()
        with self._writing(durable=False) as conn:
            done = conn.execute(
                outbox.update().where(outbox.c.id == row_id, outbox.c.claim == token)
                .values(status=SENT, sent_at=now, updated_at=now, attempts=outbox.c.attempts + 1,
                        claim=None, claimed_until=None, last_error=None, hint=None)
            ).rowcount
            self._log_attempt(conn, row_id, now, SENT, detail, seconds)
        return bool(done)

    def release(self, token: str, delay: float = 0.0) -> int:
        """Give back the rows a claim did not get to: due again after `delay` seconds."""
        now = time.time()
        with self._writing(durable=False) as conn:
            return conn.execute(
                outbox.update().where(outbox.c.claim == token, outbox.c.status == SENDING)
                .values(status=sa.case((outbox.c.attempts > 0, RETRYING), else_=QUEUED),
                        claim=None, claimed_until=None, next_attempt_at=now + delay, updated_at=now)
            ).rowcount

    def mark_failed(self, row: Row, token: str, failure: Failure, seconds: float) -> str:
        """Record a failed attempt; the row goes back to the queue with backoff, or dies."""
        now = time.time()
        attempts = row.attempts + 1
        dead = failure.permanent or (failure.counts and attempts >= self.max_attempts)
        status = DEAD if dead else RETRYING
        with self._writing(durable=False) as conn:
            conn.execute(
                outbox.update().where(outbox.c.id == row.id, outbox.c.claim == token)
                .values(status=status, attempts=attempts, claim=None, claimed_until=None,
                        next_attempt_at=now + self.backoff(attempts), last_error=failure.detail,
                        hint=failure.hint, updated_at=now)
            )
            self._log_attempt(conn, row.id, now, status, failure.detail, seconds)
        return status

    def extend(self, token: str, lease: float) -> set[int]:
        """Keep a claim's unsent rows for `lease` more seconds; returns the ids still held (a
        row whose lease lapsed may have been claimed by another sender meanwhile)."""
        now = time.time()
        with self._writing(durable=False) as conn:
            return set(conn.execute(
                outbox.update().where(outbox.c.claim == token, outbox.c.status == SENDING)
                .values(claimed_until=now + lease).returning(outbox.c.id)).scalars())

    def backoff(self, attempts: int) -> float:
        """Exponential, capped, with ±25 % jitter so a fleet of retries does not stampede."""
        # The exponent stops at 30: a login failure never kills a row, so attempts may grow
        # without end, and 2 ** 1100 as a float overflows.
        delay = min(self.retry_max, self.retry_base * 2 ** min(30, max(0, attempts - 1)))
        return delay * random.uniform(0.75, 1.25)

    @staticmethod
    def _log_attempt(conn, row_id: int, at: float, outcome: str, detail: str, seconds: float) -> None:
        conn.execute(attempts.insert().values(outbox_id=row_id, at=at, outcome=outcome,
                                              detail=detail[:2000], seconds=seconds))

    # -- operator actions and reads
    def requeue(self, ids: Iterable[int] | None = None, status: str = DEAD) -> int:
        """Queue rows again now (their Message-ID stays): given ids, or every row in `status`."""
        now = time.time()
        where = outbox.c.id.in_(list(ids)) if ids is not None else outbox.c.status == status
        with self._writing() as conn:
            return conn.execute(
                outbox.update().where(where, outbox.c.status != SENDING)
                .values(status=QUEUED, next_attempt_at=now, claim=None, claimed_until=None,
                        updated_at=now)
            ).rowcount

    def by_message_id(self, message_id: str) -> Row | None:
        """The newest row that carries this Message-ID (a reply's reference)."""
        with self.engine.connect() as conn:
            return conn.execute(sa.select(outbox).where(outbox.c.message_id == message_id)
                                .order_by(outbox.c.id.desc()).limit(1)).first()

    def get(self, row_id: int) -> Row | None:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(outbox).where(outbox.c.id == row_id)).first()

    def attempts_of(self, row_id: int) -> list[Row]:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(attempts).where(attempts.c.outbox_id == row_id)
                                .order_by(attempts.c.id)).all()

    def recent(self, limit: int = 50, offset: int = 0, source: str | None = None,
               status: str | None = None, text: str | None = None,
               brief: bool = False) -> list[Row]:
        """Newest first. `status` is a row status, or DUPLICATE: rows that were repeated;
        `text` matches subject, recipients, delivery id or kind, case-insensitively.
        `brief` leaves out the bodies and the stored request (a list does not show them)."""
        columns = [c for c in outbox.c if not (brief and c.name in BODY_COLUMNS)]
        query = sa.select(*columns).order_by(outbox.c.id.desc()).limit(limit).offset(offset)
        if source:
            query = query.where(outbox.c.source == source)
        if status == DUPLICATE:
            query = query.where(outbox.c.duplicates > 0)
        elif status:
            query = query.where(outbox.c.status == status)
        if text:
            query = query.where(sa.or_(*(column.icontains(text, autoescape=True) for column in (
                outbox.c.subject, outbox.c.mail_to, outbox.c.delivery_id, outbox.c.kind))))
        with self.engine.connect() as conn:
            return conn.execute(query).all()

    def sources(self) -> list[str]:
        """Every source that has a row (the deliveries page's filter choices)."""
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(outbox.c.source).distinct()
                                     .order_by(outbox.c.source)).scalars())

    def counts(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(outbox.c.status, sa.func.count()).group_by(outbox.c.status))
            return {status: n for status, n in rows}

    def oldest_due_age(self) -> float:
        """Seconds the oldest unsent row has waited (0 when none)."""
        with self.engine.connect() as conn:
            oldest = conn.execute(sa.select(sa.func.min(outbox.c.created_at))
                                  .where(outbox.c.status.in_((QUEUED, RETRYING, SENDING)))).scalar()
        return max(0.0, time.time() - oldest) if oldest else 0.0
