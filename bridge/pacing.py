"""Pacing: the SMTP account's budget and pause, kept in the database so that every sender
thread of every process on every machine keeps to one budget and stops together.

`smtp_sends` logs each mail handed to the server (a sliding window per budget entry: never
more than N in any W seconds, which is how providers count); `smtp_accounts` holds the pause
a provider's limit answer started, the limit learned from it and the connections allowed.
A sender asks `reserve()` before each mail: one short write transaction that either takes a
token (or, after a pause, the single probe) or says how long to wait.
"""
from __future__ import annotations

import datetime as dt
import logging
import random
import time
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from bridge.logs import log_line
from bridge.mail.limits import CONNECTIONS, QUOTA, Window, cooldown, learned_window, next_day, provider
from bridge.outbox import BigId, Outbox, metadata
from bridge.outbox import outbox as outbox_rows
from bridge.settings import SmtpSettings

accounts = sa.Table(
    "smtp_accounts", metadata,
    sa.Column("account", sa.String(300), primary_key=True),
    sa.Column("paused_until", sa.Float),
    sa.Column("paused_at", sa.Float),
    sa.Column("pause_kind", sa.String(16)),
    sa.Column("pause_answer", sa.Text),
    sa.Column("strikes", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_limited_at", sa.Float),
    sa.Column("probe", sa.Integer, nullable=False, server_default="0"),   # 1: the next mail probes
    sa.Column("probe_until", sa.Float),                                   # a probe is out until then
    sa.Column("learned_count", sa.Integer),                               # per learned_seconds
    sa.Column("learned_seconds", sa.Float),
    sa.Column("connections", sa.Integer),                                 # lowered by "too many connections"
    sa.Column("refusals", sa.Integer, nullable=False, server_default="0"),
)

sends = sa.Table(
    "smtp_sends", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("account", sa.String(300), nullable=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.Index("ix_smtp_sends_account_at", "account", "at"),
)

PROBE_LEASE = 120.0   # a probe that never reports back (its process died) frees the way after this
PRUNE_EVERY = 50      # reservations, on average, between clean-ups of the send log
ROW_FRESH = 0.25      # seconds a read of the account row serves the mails that follow it
GATE_POLL = 1.0       # how often a thread that waits on a probe or a lowered connection count looks again


@dataclass(frozen=True)
class Ticket:
    """A reserved send: `send_id` is its line in the send log, `probe` the first after a pause."""

    send_id: int | None
    probe: bool = False


@dataclass(frozen=True)
class PauseState:
    """What /metrics and the deliveries page show about the account."""

    provider: str
    paused: bool
    kind: str | None
    answer: str | None
    until: float | None
    remaining: float
    probing: bool
    tokens_left: dict[str, int]
    learned: str | None
    connections: int
    refusals: int


class Unpaced:
    """The Maildir (no SMTP account): nothing to pace, never paused."""

    def ready(self, index: int = 0) -> tuple[float, int | None]:
        return 0.0, None

    def reserve(self) -> Ticket | float:
        return Ticket(None)

    def done(self, ticket: Ticket, went_out: bool = True) -> None:
        pass

    def refused(self, ticket: Ticket, kind: str, answer: str) -> float:
        return 0.0

    def capacity(self, seconds: float) -> float | None:
        return None

    def state(self) -> PauseState | None:
        return None


# Built once: each mail reads the account row, and building a statement costs more than running it.
_ACCOUNT = sa.select(accounts).where(accounts.c.account == sa.bindparam("account"))
_ACCOUNT_LOCKED = _ACCOUNT.with_for_update()


class Pacer:
    def __init__(self, outbox: Outbox, smtp: SmtpSettings, zone: ZoneInfo):
        self.outbox = outbox
        self.smtp = smtp
        self.key = smtp.account
        preset = provider(smtp.host)
        self.provider = preset.name if preset else f"The SMTP server {smtp.host}"
        # A daily quota comes back at the provider's midnight; for others, at BRIDGE_TIMEZONE's.
        self.day_zone = ZoneInfo(preset.day_zone) if preset else zone
        self._recent: tuple[float, Any] = (0.0, None)   # (monotonic time, account row) of the last read
        self._ensure_row()

    # -- the account row
    def _ensure_row(self) -> None:
        """The account's row, made once; a start gives back the connections a "too many
        connections" answer took (SMTP_CONNECTIONS may have been lowered meanwhile)."""
        dialect = postgresql if self.outbox.is_postgres else sqlite
        with self.outbox._writing(durable=False) as conn:
            conn.execute(dialect.insert(accounts).values(account=self.key).on_conflict_do_nothing())
            self._update(conn, connections=None)

    def _row(self, conn, lock: bool = False):
        return conn.execute(_ACCOUNT_LOCKED if lock else _ACCOUNT, {"account": self.key}).one()

    def _update(self, conn, **values) -> None:
        conn.execute(accounts.update().where(accounts.c.account == self.key).values(**values))

    def windows(self, row) -> tuple[Window, ...]:
        learned = (Window(row.learned_count, row.learned_seconds),) if row.learned_count else ()
        return self.smtp.budget + learned

    # -- the budget
    def _nth_latest(self, conn, window: Window, now: float) -> float | None:
        """When the window's oldest counted send happened, if the window is full."""
        return conn.execute(
            sa.select(sends.c.at).where(sends.c.account == self.key, sends.c.at > now - window.seconds)
            .order_by(sends.c.at.desc()).offset(window.count - 1).limit(1)).scalar()

    def _budget_wait(self, conn, row, now: float) -> float:
        """Seconds until every budget entry has a token again (0: one may go now)."""
        wait = 0.0
        for window in self.windows(row):
            oldest = self._nth_latest(conn, window, now)
            if oldest is not None:
                wait = max(wait, oldest + window.seconds - now)
        return wait

    def _used(self, conn, since: float) -> int:
        return conn.execute(sa.select(sa.func.count()).select_from(sends)
                            .where(sends.c.account == self.key, sends.c.at > since)).scalar_one()

    def _tokens_left(self, conn, row, now: float) -> dict[str, int]:
        return {str(w): max(0, w.count - self._used(conn, now - w.seconds)) for w in self.windows(row)}

    # -- what a sender thread asks
    def ready(self, index: int = 0) -> tuple[float, int | None]:
        """(seconds to wait, most rows worth claiming now: None = no budget) for thread `index`."""
        now = time.time()
        with self.outbox.engine.connect() as conn:
            row = self._row(conn)
            if index >= (row.connections or self.smtp.connections):
                return GATE_POLL, 0
            if row.paused_until and row.paused_until > now:
                return row.paused_until - now, 0
            if row.probe:
                busy = row.probe_until and row.probe_until > now
                return (GATE_POLL, 0) if busy else (0.0, 1)
            if not self.windows(row):
                return 0.0, None
            wait = self._budget_wait(conn, row, now)
            return (wait, 0) if wait > 0 else (0.0, min(self._tokens_left(conn, row, now).values()))

    def reserve(self) -> Ticket | float:
        """Take a token for one mail (atomically, across processes), or say how long to wait.
        With no budget and no probe due, a read is enough: there is no token to take, and a read
        at most ROW_FRESH old will do (a pause another process starts is seen that much later;
        one this process starts, at once)."""
        read_at, row = self._recent
        if row is None or time.monotonic() - read_at > ROW_FRESH:
            with self.outbox.engine.connect() as conn:
                row = self._row(conn)
            self._recent = (time.monotonic(), row)
        now = time.time()
        if row.paused_until and row.paused_until > now:
            return row.paused_until - now
        if not row.probe and not self.windows(row):
            return Ticket(None)
        with self.outbox._writing(durable=False) as conn:
            row = self._row(conn, lock=True)
            now = time.time()
            if row.paused_until and row.paused_until > now:
                return row.paused_until - now
            if row.probe and row.probe_until and row.probe_until > now:
                return GATE_POLL
            wait = self._budget_wait(conn, row, now)
            if wait > 0:
                return wait
            if row.probe:
                self._update(conn, probe_until=now + PROBE_LEASE)
            send_id = conn.execute(sends.insert().values(account=self.key, at=now)
                                   .returning(sends.c.id)).scalar_one()
            if random.randrange(PRUNE_EVERY) == 0:
                # As far back as a budget entry counts, or a refusal learns from: no further,
                # so the log stays small where the account has no daily budget.
                horizon = max([self.smtp.cooldowns[0]] + [w.seconds for w in self.windows(row)])
                conn.execute(sends.delete().where(sends.c.account == self.key, sends.c.at < now - horizon))
            return Ticket(send_id, probe=bool(row.probe))

    def done(self, ticket: Ticket, went_out: bool = True) -> None:
        """The server answered something that is not a limit (or was never reached): a probe
        has done its work either way; a mail that never went out gives its token back."""
        if not ticket.probe and went_out:
            return
        with self.outbox._writing(durable=False) as conn:
            if not went_out:
                conn.execute(sends.delete().where(sends.c.id == ticket.send_id))
            if ticket.probe:
                self._update(conn, probe=0 if went_out else 1, probe_until=None)
        if ticket.probe and went_out:
            log_line("smtp_resumed", account=self.smtp.host, note="the probe got through: full pace again")

    def refused(self, ticket: Ticket, kind: str, answer: str) -> float:
        """The server answered with a limit: pause the account (or use fewer connections).
        Returns the seconds until the pause ends."""
        self._recent = (0.0, None)
        with self.outbox._writing(durable=False) as conn:
            row = self._row(conn, lock=True)
            now = time.time()
            conn.execute(sends.delete().where(sends.c.id == ticket.send_id))  # it did not go out
            if kind == CONNECTIONS:
                fewer = max(1, (row.connections or self.smtp.connections) - 1)
                self._update(conn, connections=fewer, refusals=row.refusals + 1,
                             probe_until=None if ticket.probe else row.probe_until)
                log_line("smtp_connections", logging.WARNING, account=self.smtp.host, connections=fewer,
                         answer=answer)
                return 0.0
            if row.paused_until and row.paused_until > now:  # the same burst, seen by another thread
                self._update(conn, refusals=row.refusals + 1)
                return row.paused_until - now
            return self._pause(conn, row, now, kind, answer)

    def _pause(self, conn, row, now: float, kind: str, answer: str) -> float:
        ladder = self.smtp.cooldowns
        recent = row.last_limited_at and now - row.last_limited_at < max(ladder) * 2
        strikes = row.strikes + 1 if recent else 1
        until = now + cooldown(ladder, strikes)
        if kind == QUOTA:
            until = max(until, next_day(now, self.day_zone))
        learned = {}
        if kind != QUOTA:
            if row.learned_count:  # refused at the learned pace as well: a quarter less
                taught = learned_window(row.learned_count, row.learned_seconds)
            else:                  # what got through just before is more than the account may send
                taught = learned_window(conn.execute(
                    sa.select(sa.func.count()).select_from(outbox_rows)
                    .where(outbox_rows.c.sent_at > now - ladder[0])).scalar_one(), ladder[0])
            learned = {"learned_count": taught.count, "learned_seconds": taught.seconds}
        self._update(conn, paused_until=until, paused_at=now, pause_kind=kind, pause_answer=answer[:500],
                     strikes=strikes, last_limited_at=now, probe=1, probe_until=None,
                     refusals=row.refusals + 1, **learned)
        log_line("smtp_paused", logging.WARNING, account=self.smtp.host, kind=kind, answer=answer[:200],
                 until=dt.datetime.fromtimestamp(until, self.day_zone).isoformat(timespec="seconds"),
                 seconds=round(until - now), strikes=strikes,
                 learned=str(Window(learned["learned_count"], ladder[0])) if learned else None)
        return until - now

    # -- what digests and pages ask
    def capacity(self, seconds: float) -> float | None:
        """How many mails the budget sends within the next `seconds` (None: no budget known)."""
        now = time.time()
        with self.outbox.engine.connect() as conn:
            row = self._row(conn)
            windows = self.windows(row)
            if not windows:
                return None
            left = seconds - max(0.0, (row.paused_until or 0.0) - now)
            if left <= 0:
                return 0.0
            return min(w.count * left / w.seconds if left >= w.seconds
                       else w.count - self._used(conn, now - w.seconds + left) for w in windows)

    def state(self) -> PauseState:
        now = time.time()
        with self.outbox.engine.connect() as conn:
            row = self._row(conn)
            paused = bool(row.paused_until and row.paused_until > now)
            return PauseState(
                provider=self.provider, paused=paused, kind=row.pause_kind, answer=row.pause_answer,
                until=row.paused_until, remaining=max(0.0, (row.paused_until or 0.0) - now),
                probing=bool(row.probe), tokens_left=self._tokens_left(conn, row, now),
                learned=str(Window(row.learned_count, row.learned_seconds)) if row.learned_count else None,
                connections=row.connections or self.smtp.connections, refusals=row.refusals)
