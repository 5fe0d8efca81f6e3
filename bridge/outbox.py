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
import fcntl
import functools
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

from bridge.cooperative import offload

QUEUED, SENDING, SENT, RETRYING, DEAD, IGNORED = "queued", "sending", "sent", "retrying", "dead", "ignored"
DIGESTED = "digested"    # carried by a digest row (`digest_id`), which mails it with others
STATUSES = (QUEUED, SENDING, SENT, RETRYING, DEAD, IGNORED, DIGESTED)
WAITING = (QUEUED, RETRYING)
LIMITED = "limited"      # an attempt's outcome: the provider refused for its limits, not the mail
DUPLICATE = "duplicate"  # not a row status: a row whose event came again (`duplicates` > 0)
# Rows retention deletes after RETAIN_DAYS.
DONE = (SENT, IGNORED, DIGESTED)

WAL_SIZE_LIMIT = 16 * 1024 * 1024
SCHEMA_WAIT = 120.0  # seconds a starting process waits for a database another one holds
PRUNE_BATCH = 200    # rows per prune transaction: a short lock, intake goes on in between

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
    sa.Column("digest_id", BigId, index=True),   # a carried event: the digest row that mails it
    sa.Column("digest_of", sa.Text),              # a digest: JSON list of the rows it carries
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

# The dedup key of a pruned row, kept while a redelivery of its event may still come (GitHub
# redelivers deliveries of the last 3 days): a repeat then stays a duplicate.
kept_keys = sa.Table(
    "kept_keys", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("fingerprint", sa.String(300), nullable=False, index=True),
    sa.Column("outbox_id", BigId, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("until", sa.Float, nullable=False, index=True),
)


@dataclass(frozen=True)
class Pruned:
    rows: int = 0
    attempts: int = 0
    kept_keys: int = 0
    expired_keys: int = 0

    def __add__(self, other: "Pruned") -> "Pruned":
        return Pruned(self.rows + other.rows, self.attempts + other.attempts,
                      self.kept_keys + other.kept_keys, self.expired_keys + other.expired_keys)


class Prepared:
    """A statement compiled once per dialect and run on the DB-API cursor of a connection that
    is in a transaction. Intake and the sender run these per mail, and SQLAlchemy's work per
    execution (compiling, an execution context, a result object, events) cost more than the
    database's own: in a group of 16 on SQLite, 213 → 139 µs of CPU per stored mail.
    `columns`: for an INSERT, the columns every caller gives (no Python-side defaults are
    applied here)."""

    def __init__(self, statement, columns: Iterable[str] | None = None):
        self.statement, self.columns = statement, list(columns) if columns else None
        self._compiled: dict[str, tuple[str, list[str] | None, dict]] = {}

    def _compile(self, dialect) -> tuple[str, list[str] | None, dict]:
        if dialect.name not in self._compiled:
            compiled = self.statement.compile(dialect=dialect, column_keys=self.columns)
            # literal values in the statement (status=SENT, claim=None) are bound parameters
            # with a value; a parameter the caller must give has none
            defaults = {name: value for name, value in compiled.params.items()
                        if compiled.binds[name].unique and not compiled.binds[name].required}
            self._compiled[dialect.name] = (compiled.string, compiled.positiontup, defaults)
        return self._compiled[dialect.name]

    def run(self, conn: "DriverConnection", params: Mapping[str, Any]) -> int:
        """Execute with `params`; the rows it changed."""
        return self._execute(conn, params, lambda cursor: cursor.rowcount)

    def rows(self, conn: "DriverConnection", params: Mapping[str, Any]) -> list[tuple]:
        return self._execute(conn, params, lambda cursor: cursor.fetchall())

    def scalar(self, conn: "DriverConnection", params: Mapping[str, Any]) -> Any:
        return self._execute(conn, params, lambda cursor: cursor.fetchone()[0])

    def _execute(self, conn: "DriverConnection", params: Mapping[str, Any], read):
        """Execute and `read` the cursor: a driver error in either (SQLite reads rows as it
        steps) comes back as SQLAlchemy's (OperationalError, IntegrityError, ...), as from
        conn.execute, so intake still tells an outage (503) from a refused payload (400)."""
        sql, names, defaults = self._compile(conn.dialect)
        given = {**defaults, **params}
        args = [given[name] for name in names] if names is not None else given
        with conn.errors(sql, args):
            cursor = conn.dbapi.cursor()
            cursor.execute(sql, args)
            return read(cursor)


@dataclass(frozen=True)
class DriverConnection:
    """A DB-API connection inside a write transaction, with its dialect: what Prepared runs on.
    `pooled`: the pool's handle on it, when we own it (not inside a SQLAlchemy Connection)."""

    dbapi: Any
    dialect: Any
    pooled: Any = None

    @classmethod
    def of(cls, conn: sa.Connection) -> "DriverConnection":
        return cls(conn.connection.dbapi_connection, conn.dialect)

    def errors(self, statement: str, params: Any = None):
        return driver_errors(self.dialect, statement, params, self.pooled)


@contextlib.contextmanager
def driver_errors(dialect, statement: str, params: Any = None, pooled=None):
    """The driver's errors as SQLAlchemy's, which callers (intake's 503) tell apart. A
    connection the error shows is gone is dropped from the pool, as SQLAlchemy would."""
    error = dialect.loaded_dbapi.Error
    try:
        yield
    except error as exc:
        gone = pooled is not None and dialect.is_disconnect(exc, pooled.dbapi_connection, None)
        if gone:
            pooled.invalidate(exc)
        raise sa.exc.DBAPIError.instance(statement, params, exc, error, connection_invalidated=gone) from exc


KEY_SLOTS = (1, 2, 4, 8, 16)


@functools.lru_cache(maxsize=None)
def _key_lookups(slots: int) -> tuple[Prepared, Prepared]:
    """The dedup lookups (stored rows; kept keys of pruned ones) for `slots` keys. A group's
    keys fill the smallest that holds them, spare slots repeating a key: five compiled
    statements serve every group size, and a lone key is an equality, not a set to build."""
    keys = [sa.bindparam(f"key{i}") for i in range(slots)]
    return (Prepared(sa.select(outbox.c.fingerprint, outbox.c.id, outbox.c.created_at)
                     .where(outbox.c.fingerprint.in_(keys), outbox.c.created_at > sa.bindparam("since"))),
            Prepared(sa.select(kept_keys.c.fingerprint, kept_keys.c.outbox_id, kept_keys.c.created_at)
                     .where(kept_keys.c.fingerprint.in_(keys), kept_keys.c.created_at > sa.bindparam("since"),
                            kept_keys.c.until > sa.bindparam("now"))))


# Built once: intake and the sender run these per mail, and building a statement costs more
# than running it.
_LOCK_KEY = Prepared(sa.text("SELECT pg_advisory_xact_lock(hashtext(:k))"))
_COUNT_DUPLICATE = Prepared(outbox.update().where(outbox.c.id == sa.bindparam("row_id"))
                            .values(duplicates=outbox.c.duplicates + 1, updated_at=sa.bindparam("now")))
_INSERT = Prepared(outbox.insert().returning(outbox.c.id), columns=(
    "dedup_key", "fingerprint", "source", "kind", "route", "delivery_id", "status", "subject", "text",
    "html", "mail_from", "mail_to", "message_id", "in_reply_to", "headers", "attachments", "request",
    "attempts", "duplicates", "next_attempt_at", "created_at", "updated_at", "reply_target"))
_MARK_SENT = Prepared(outbox.update()
                      .where(outbox.c.id == sa.bindparam("row_id"), outbox.c.claim == sa.bindparam("token"))
                      .values(status=SENT, sent_at=sa.bindparam("now"), updated_at=sa.bindparam("now"),
                              attempts=outbox.c.attempts + 1, claim=None, claimed_until=None,
                              last_error=None, hint=None))
# inline: no RETURNING of the new id (PostgreSQL's compiler adds one; nobody reads it)
_LOG_ATTEMPT = Prepared(attempts.insert().inline(), columns=("outbox_id", "at", "outcome", "detail", "seconds"))


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
    a login failure does not, so a fixed password delivers what waited. `limit`: the account
    is over a provider's limit; the sender pauses it and the row waits."""

    detail: str
    permanent: bool = False
    counts: bool = True
    hint: str | None = None
    limit: str | None = None     # the provider's limit on the account (bridge.mail.limits), not the mail's fault


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


def _set_synchronous(connection, level: str) -> None:
    """SQLite's fsync setting for the next transaction on this pooled connection, issued only
    when it changes (intake and the sender's bookkeeping alternate; most requests don't)."""
    if connection.info.get("synchronous") != level:
        connection.dbapi_connection.execute(f"PRAGMA synchronous={level}")
        connection.info["synchronous"] = level


@contextlib.contextmanager
def _setup_lock(path: str | None):
    """One process at a time sets up a SQLite file (WAL, auto_vacuum, tables): several workers
    starting on a fresh database would otherwise race SQLite's lock and one would die with
    `database is locked`. The lock is a file of its own beside the database: opening and
    closing the database file itself would drop the POSIX locks SQLite holds on it in this
    process, which corrupts the database."""
    if not path or path == ":memory:":
        yield
        return
    with open(f"{path}-setup.lock", "ab") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


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
        dbapi_conn.execute("PRAGMA busy_timeout=30000")
        if dbapi_conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            with _setup_lock(path):  # once per database file, by the first process to open it
                # Freed pages go back to the file system (after a prune): only a database
                # without tables takes it; an older file is converted by `outbox prune`.
                dbapi_conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
                dbapi_conn.execute("PRAGMA journal_mode=WAL")
        dbapi_conn.execute("PRAGMA synchronous=FULL")
        _record.info["synchronous"] = "FULL"
        # The -wal file shrinks back to this after a checkpoint instead of keeping its peak.
        dbapi_conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn):
        _begin_immediate(conn.connection.dbapi_connection)

    @sa.event.listens_for(engine, "commit")
    def _on_commit(conn):
        # COMMIT here (the DB-API commit() that follows finds nothing left to do): under gevent
        # its fsync runs in a native thread, so only this caller waits, not the whole process.
        offload(conn.connection.dbapi_connection.execute, "COMMIT")

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
                _set_synchronous(conn.connection, "FULL" if durable else "NORMAL")
            with conn.begin():
                if self.is_postgres and not durable:
                    conn.execute(sa.text("SET LOCAL synchronous_commit TO OFF"))
                yield conn

    @contextlib.contextmanager
    def _writing_fast(self, durable: bool = True):
        """`_writing` on the pool's DB-API connection, without SQLAlchemy's Connection and
        Transaction objects around it (149 → 129 µs of CPU per mark): for the Prepared
        statements intake and the sender run per mail."""
        with self._write_lock:
            with driver_errors(self.engine.dialect, "connect"):
                pooled = self.engine.raw_connection()
            conn = DriverConnection(pooled.dbapi_connection, self.engine.dialect, pooled)
            try:
                with conn.errors("BEGIN"):
                    if self.is_postgres:  # psycopg opens the transaction at the first statement
                        if not durable:
                            conn.dbapi.execute("SET LOCAL synchronous_commit TO OFF")
                    else:
                        _set_synchronous(pooled, "FULL" if durable else "NORMAL")
                        _begin_immediate(conn.dbapi)
                try:
                    yield conn
                except BaseException:
                    with contextlib.suppress(Exception):  # the error in hand is the one to report
                        conn.dbapi.rollback() if self.is_postgres else conn.dbapi.execute("ROLLBACK")
                    raise
                with conn.errors("COMMIT"):
                    if self.is_postgres:
                        conn.dbapi.commit()
                    else:  # as in _on_commit: under gevent the fsync runs in a native thread
                        offload(conn.dbapi.execute, "COMMIT")
            finally:
                pooled.close()

    # -- schema
    def create_schema(self) -> None:
        """Create missing tables and columns. Every process does this at start: one at a time
        (an advisory lock on PostgreSQL, a file lock on SQLite), and a database that is busy
        (locked by another process) is waited for rather than fatal."""
        deadline = time.monotonic() + SCHEMA_WAIT
        path = None if self.is_postgres else self.engine.url.database
        while True:
            try:
                self.ping()  # the first connection switches SQLite to WAL, under the same lock
                with _setup_lock(path), self._writing() as conn:
                    if self.is_postgres:  # several web workers start at once; one creates the tables
                        conn.execute(sa.text("SELECT pg_advisory_xact_lock(727274)"))
                    metadata.create_all(conn, checkfirst=True)
                    _add_missing_columns(conn)
                return
            except sa.exc.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

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
        with self._writing_fast() as conn:
            if self.is_postgres:  # serialise checks of one key across processes, in one order
                for key in sorted({m.dedup_key for m in mails}):
                    _LOCK_KEY.run(conn, {"k": key})
            seen = self._seen_keys(conn, mails, now)
            return [self._store_one(conn, mail, now, seen) for mail in mails]

    @staticmethod
    def _seen_keys(conn, mails: list[NewMail], now: float) -> dict[str, list[tuple[float, int, bool]]]:
        """Every stored row (and pruned row's kept key) the group's keys may repeat, in two
        queries for the whole group: key → [(created_at, row id, row still there)]."""
        since = min(0.0 if m.dedup_window is None else now - m.dedup_window for m in mails)
        keys = sorted({m.dedup_key for m in mails})
        seen: dict[str, list[tuple[float, int, bool]]] = {}
        for start in range(0, len(keys), KEY_SLOTS[-1]):
            chunk = keys[start:start + KEY_SLOTS[-1]]
            slots = next(n for n in KEY_SLOTS if n >= len(chunk))
            params = {f"key{i}": chunk[min(i, len(chunk) - 1)] for i in range(slots)}
            params.update(since=since, now=now)
            stored, kept = _key_lookups(slots)
            for query, present in ((stored, True), (kept, False)):
                for key, row_id, created in query.rows(conn, params):
                    seen.setdefault(key, []).append((created, row_id, present))
        return seen

    def _store_one(self, conn, mail: NewMail, now: float, seen: dict[str, list[tuple[float, int, bool]]]) -> Stored:
        since = 0.0 if mail.dedup_window is None else now - mail.dedup_window
        earlier = [(row_id, present) for created, row_id, present in seen.get(mail.dedup_key, ()) if created > since]
        if earlier:
            row_id, present = max(earlier)
            if present:
                _COUNT_DUPLICATE.run(conn, {"row_id": row_id, "now": now})
            # else its row is gone (retention), its key is not
            return Stored(row_id, "duplicate")
        key = mail.dedup_key if mail.dedup_window is None else f"{mail.dedup_key}@{now:.6f}"
        row_id = _INSERT.scalar(conn, {
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
        })
        seen.setdefault(mail.dedup_key, []).append((now, row_id, True))  # a repeat in this group
        return Stored(row_id, "ignored" if mail.ignored else "accepted")

    # -- sending
    def claim(self, limit: int, lease: float) -> tuple[str, list[Row]]:
        """Take up to `limit` due rows for `lease` seconds; returns the claim token and rows."""
        return self.claim_rows(outbox, lambda now: sa.or_(
            sa.and_(outbox.c.status.in_((QUEUED, RETRYING)), outbox.c.next_attempt_at <= now),
            sa.and_(outbox.c.status == SENDING, outbox.c.claimed_until < now),
        ), SENDING, limit, lease)

    def claim_rows(self, table: sa.Table, due, claimed_status, limit: int, lease: float) -> tuple[str, list[Row]]:
        """The lease every queue here uses (mails, reply actions): up to `limit` rows of `table`
        for which `due(now)` holds, skipping rows another process has locked, are marked
        `claimed_status` under a new token for `lease` seconds; (token, rows by id). Every later
        write is fenced by the token, so a sender whose lease ran out changes nothing."""
        token = uuid.uuid4().hex
        now = time.time()
        ids = (sa.select(table.c.id).where(due(now)).order_by(table.c.next_attempt_at, table.c.id)
               .limit(limit).with_for_update(skip_locked=True))
        with self._writing(durable=False) as conn:
            rows = conn.execute(
                table.update().where(table.c.id.in_(ids.scalar_subquery()))
                .values(status=claimed_status, claim=token, claimed_until=now + lease, updated_at=now)
                .returning(*table.c)
            ).all()
        return token, sorted(rows, key=lambda r: r.id)

    def mark_sent(self, row_id: int, token: str, detail: str, seconds: float) -> bool:
        """Record a delivery at once: a sender killed later resends nothing it already sent,
        only the message it had in hand."""
        now = time.time()
        with self._writing_fast(durable=False) as conn:
            done = _MARK_SENT.run(conn, {"row_id": row_id, "token": token, "now": now})
            self._log_attempt(conn, row_id, now, SENT, detail, seconds)
        return bool(done)

    def release(self, token: str, delay: float | None = 0.0) -> int:
        """Give back the rows a claim did not get to: due again after `delay` seconds, or with
        `delay=None` as due as before (a budget held them back: they keep their turn)."""
        now = time.time()
        due = {} if delay is None else {"next_attempt_at": now + delay}
        with self._writing(durable=False) as conn:
            return conn.execute(
                outbox.update().where(outbox.c.claim == token, outbox.c.status == SENDING)
                .values(status=sa.case((outbox.c.attempts > 0, RETRYING), else_=QUEUED),
                        claim=None, claimed_until=None, updated_at=now, **due)
            ).rowcount

    def mark_limited(self, row: Row, token: str, failure: Failure, seconds: float) -> str:
        """The provider refused for its limits on the account, not for this mail: the row waits
        its turn again, and the refusal does not count toward MAX_ATTEMPTS."""
        now = time.time()
        status = RETRYING if row.attempts else QUEUED
        with self._writing(durable=False) as conn:
            conn.execute(
                outbox.update().where(outbox.c.id == row.id, outbox.c.claim == token)
                .values(status=status, claim=None, claimed_until=None, last_error=failure.detail,
                        hint=failure.hint, updated_at=now))
            self._log_attempt(DriverConnection.of(conn), row.id, now, LIMITED, failure.detail, seconds)
        return status

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
            self._log_attempt(DriverConnection.of(conn), row.id, now, status, failure.detail, seconds)
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
    def _log_attempt(conn: DriverConnection, row_id: int, at: float, outcome: str, detail: str, seconds: float) -> None:
        _LOG_ATTEMPT.run(conn, {"outbox_id": row_id, "at": at, "outcome": outcome,
                                "detail": detail[:2000], "seconds": seconds})

    # -- retention
    def prune(self, done_before: float, dead_before: float, keep: Mapping[str, float],
              batch: int = PRUNE_BATCH, pause: float = 0.0) -> Pruned:
        """Delete sent, ignored and digested rows created before `done_before` and dead rows
        created before `dead_before`, with their attempts and stored requests: `batch` rows per
        short transaction, `pause` seconds between two. `keep[source]`: seconds after its event
        that a pruned row's dedup key still makes a repeat a duplicate. Then expired kept keys
        go, and SQLite gives the freed pages back to the file system."""
        now = time.time()
        old = sa.or_(sa.and_(outbox.c.status.in_(DONE), outbox.c.created_at < done_before),
                     sa.and_(outbox.c.status == DEAD, outbox.c.created_at < dead_before))
        find = (sa.select(outbox.c.id, outbox.c.fingerprint, outbox.c.source, outbox.c.created_at)
                .where(old).order_by(outbox.c.id).limit(batch))
        total = Pruned()
        while True:
            with self.engine.connect() as conn:  # read outside the write lock; re-checked below
                rows = conn.execute(find).all()
            if rows:
                total += self._prune_rows(rows, old, keep, now)
            if len(rows) < batch:
                break
            time.sleep(pause)
        with self._writing(durable=False) as conn:
            expired = conn.execute(kept_keys.delete().where(kept_keys.c.until <= now)).rowcount
        self.reclaim()
        return total + Pruned(expired_keys=expired)

    def _prune_rows(self, rows: list[Row], old, keep: Mapping[str, float], now: float) -> Pruned:
        with self._writing(durable=False) as conn:
            # A row requeued since it was read is no longer old: the condition is asked again.
            gone = set(conn.execute(outbox.delete().where(outbox.c.id.in_([r.id for r in rows]), old)
                                    .returning(outbox.c.id)).scalars())
            if not gone:
                return Pruned()
            n_attempts = conn.execute(attempts.delete().where(attempts.c.outbox_id.in_(gone))).rowcount
            keys = [{"fingerprint": r.fingerprint, "outbox_id": r.id, "created_at": r.created_at,
                     "until": r.created_at + keep.get(r.source, 0.0)}
                    for r in rows if r.id in gone and r.created_at + keep.get(r.source, 0.0) > now]
            if keys:
                conn.execute(kept_keys.insert(), keys)
        return Pruned(len(gone), n_attempts, len(keys))

    def reclaim(self, convert: bool = False) -> str:
        """SQLite: hand free pages back to the file system, a few thousand per step so no step
        holds the write lock long. `convert`: a database made before auto_vacuum was set is
        rebuilt once (VACUUM) so that it can. PostgreSQL reuses freed space by itself."""
        if self.is_postgres:
            return ""
        with self.engine.connect() as conn:
            raw = conn.connection.dbapi_connection
            if raw.execute("PRAGMA auto_vacuum").fetchone()[0] == 0:
                if not convert:
                    return "auto_vacuum is off (run `flask --app bridge outbox prune` once)"
                with self._write_lock:
                    raw.execute("PRAGMA auto_vacuum=INCREMENTAL")
                    raw.execute("VACUUM")
                return "database rebuilt with auto_vacuum=INCREMENTAL"
            for _ in range(10_000):  # bounded: each step frees up to 2000 pages
                if not raw.execute("PRAGMA freelist_count").fetchone()[0]:
                    break
                with self._write_lock:
                    raw.execute("PRAGMA incremental_vacuum(2000)").fetchall()  # one row per page
        return ""

    # -- digests
    _DIGESTIBLE = sa.and_(outbox.c.status.in_(WAITING), outbox.c.digest_id.is_(None),
                          outbox.c.digest_of.is_(None), outbox.c.attachments == "[]")

    def waiting_lists(self) -> dict[str, int]:
        """Recipient list → how many mails wait for it that a digest may carry."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(outbox.c.mail_to, sa.func.count())
                                .where(self._DIGESTIBLE).group_by(outbox.c.mail_to))
            return {mail_to: n for mail_to, n in rows}

    def combine(self, mail_to: str, make_digests) -> list[tuple[int, int]]:
        """Digest what waits for one recipient list, in one transaction: `make_digests(rows)`
        (the waiting rows, arrival order) returns [(carried ids, NewMail)]; each digest is
        stored and the rows it carries marked `digested`. The rows are locked meanwhile, so no
        sender claims one of them; a crash leaves either the rows waiting alone or the digest
        that carries them, never both, never neither. Returns [(digest id, events)]."""
        now = time.time()
        made = []
        with self._writing() as conn:
            rows = conn.execute(sa.select(outbox).where(self._DIGESTIBLE, outbox.c.mail_to == mail_to)
                                .order_by(outbox.c.id).with_for_update(skip_locked=True)).all()
            driver = DriverConnection.of(conn)
            for carried, mail in make_digests(rows):
                stored = self._store_one(driver, mail, now, self._seen_keys(driver, [mail], now))
                conn.execute(outbox.update().where(outbox.c.id == stored.id)
                             .values(digest_of=json.dumps(carried)))
                conn.execute(outbox.update().where(outbox.c.id.in_(carried))
                             .values(status=DIGESTED, digest_id=stored.id, updated_at=now))
                made.append((stored.id, len(carried)))
        return made

    def carried(self, digest_id: int) -> list[Row]:
        """The events a digest row carries, in arrival order (bodies left out)."""
        columns = [c for c in outbox.c if c.name not in BODY_COLUMNS]
        with self.engine.connect() as conn:
            return conn.execute(sa.select(*columns).where(outbox.c.digest_id == digest_id)
                                .order_by(outbox.c.id)).all()

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

    def activity(self, since: float, bucket: float, buckets: int) -> dict[str, list[int]]:
        """Counts per time bucket from `since`: events in, mails out, digests out, and the
        provider's limit refusals (the deliveries page's chart)."""
        def per_bucket(conn, column, *where) -> list[int]:
            sums = [sa.func.sum(sa.case((sa.and_(column >= since + i * bucket, column < since + (i + 1) * bucket),
                                         1), else_=0)) for i in range(buckets)]
            return [int(v or 0) for v in conn.execute(sa.select(*sums).where(column >= since, *where)).one()]

        with self.engine.connect() as conn:
            return {"in": per_bucket(conn, outbox.c.created_at, outbox.c.digest_of.is_(None)),
                    "out": per_bucket(conn, outbox.c.sent_at),
                    "digests": per_bucket(conn, outbox.c.sent_at, outbox.c.digest_of.is_not(None)),
                    "refused": per_bucket(conn, attempts.c.at, attempts.c.outcome == LIMITED)}

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
