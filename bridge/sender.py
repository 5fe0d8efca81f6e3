"""The sender: claims due outbox rows, composes each mail and hands it to the transport.

Runs as threads in each web process (SEND_IN_WEB=true) or in the `worker` process. Each
thread owns one transport, so one logged-in SMTP connection serves a whole batch. No
database transaction is open while the SMTP server is talking: claim, send, mark are three
separate short steps. On stop, a thread finishes the message in hand and gives back the rest.
Before each mail the pacer (bridge/pacing.py) takes a token from the account's budget; while
the account is paused or over budget the rows stay queued, in their order.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from bridge import metrics
from bridge.logs import log_line
from bridge.mail.compose import compose, envelope
from bridge.mail.smtp import ConnectFailed, classify
from bridge.outbox import LIMITED, SENT, Outbox
from bridge.pacing import Ticket, Unpaced

IDLE_CLOSE_SECONDS = 15.0
BATCH_LINGER_SECONDS = 0.05
MAX_GATE_WAIT = 5.0      # a paused thread looks again this often (a resend, a stop, another process)
FAILED, UNREACHABLE = "failed", "unreachable"


def no_attachments(row: Any) -> list[tuple[str, str, bytes]]:
    return []


class Sender:
    def __init__(self, outbox: Outbox, make_transport: Callable[[], Any], batch_size: int = 20,
                 lease_seconds: float = 60.0, poll_seconds: float = 1.0,
                 attach: Callable[[Any], list] = no_attachments, pacer=None, digester=None,
                 prune: Callable[[], Any] | None = None, prune_every: float = 600.0):
        self.outbox = outbox
        self.make_transport = make_transport
        self.batch_size = batch_size
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.attach = attach
        self.prune, self.prune_every = prune, prune_every
        self._next_prune = time.monotonic()
        self._prune_lock = threading.Lock()
        self.pacer = pacer or Unpaced()
        self.digester = digester
        self.stopping = threading.Event()
        self._wake = threading.Event()
        self.threads: list[threading.Thread] = []

    # -- one batch
    def work_once(self, transport, limit: int | None = None) -> int:
        """Claim one batch (at most `limit` rows: what the budget lets go now) and try each row
        once; returns how many rows were claimed."""
        size = self.batch_size if limit is None else min(self.batch_size, limit)
        if size <= 0:
            return 0
        token, rows = self.outbox.claim(size, self.lease_seconds)
        claimed_at = time.monotonic()
        held = {row.id for row in rows}
        delay: float | None = 0.0
        handled = 0
        try:
            for row in rows:
                if self.stopping.is_set():
                    break
                # Renew before a row once a third of the lease is gone, so each row starts with
                # a full lease; a row whose lease lapsed anyway may be another sender's now.
                if time.monotonic() - claimed_at > self.lease_seconds / 3:
                    held = self.outbox.extend(token, self.lease_seconds)
                    claimed_at = time.monotonic()
                if row.id not in held:
                    handled += 1
                    log_line("claim_lost", logging.WARNING, outbox_id=row.id)
                    continue
                ticket = self.pacer.reserve()
                if not isinstance(ticket, Ticket):  # over budget or paused: the rest keep their turn
                    delay = None
                    break
                handled += 1
                outcome = self.deliver(transport, row, token, ticket)
                if outcome is UNREACHABLE:
                    # No connection: the rest of the claim waits as long as this row does.
                    delay = self.outbox.backoff(row.attempts + 1)
                    break
                if outcome is LIMITED:
                    delay = None
                    transport.close()
                    break
        finally:
            if handled < len(rows):
                self.outbox.release(token, delay)
        return len(rows)

    def deliver(self, transport, row, token: str, ticket: Ticket | None = None) -> str:
        """Send one row and record the outcome: SENT, FAILED, UNREACHABLE (the server could not
        be reached) or LIMITED (the provider refused for the account's limits)."""
        ticket = ticket or Ticket(None)
        started = time.monotonic()
        try:
            msg = compose(row, self.attach(row))
            mail_from, rcpt_to = envelope(row)
            detail = transport.send(msg, mail_from, rcpt_to)
        except Exception as exc:  # every failure is recorded on the row, none is fatal
            return self._failed(row, token, ticket, exc, time.monotonic() - started)
        seconds = time.monotonic() - started
        self.pacer.done(ticket)
        self.outbox.mark_sent(row.id, token, detail, seconds)
        log_line("delivery", outbox_id=row.id, delivery_id=row.delivery_id, source=row.source,
                 status="sent", attempt=row.attempts + 1, ms=round(seconds * 1000),
                 message_id=row.message_id, via=transport.describe())
        metrics.mail_sent(seconds, row.digest_of)
        return SENT

    def _failed(self, row, token: str, ticket: Ticket, exc: Exception, seconds: float) -> str:
        failure = classify(exc)
        if failure.limit:
            self.pacer.refused(ticket, failure.limit, failure.detail)
            status = self.outbox.mark_limited(row, token, failure, seconds)
        else:
            self.pacer.done(ticket, went_out=not isinstance(exc, ConnectFailed))
            status = self.outbox.mark_failed(row, token, failure, seconds)
        metrics.mail_failed(exc, LIMITED if failure.limit else status, seconds)
        log_line("delivery", logging.WARNING, outbox_id=row.id, delivery_id=row.delivery_id,
                 source=row.source, status=status, attempt=row.attempts + 1,
                 ms=round(seconds * 1000), error=failure.detail, limit=failure.limit, hint=failure.hint)
        if failure.limit:
            return LIMITED
        return UNREACHABLE if isinstance(exc, ConnectFailed) else FAILED

    # -- the loop
    def run(self, index: int = 0) -> None:
        transport = self.make_transport()
        idle_since = time.monotonic()
        try:
            while not self.stopping.is_set():
                try:
                    wait, limit = self.pacer.ready(index)
                    if wait > 0:  # paused, over budget, or a probe is out: the rows wait queued
                        transport.close()
                        self.housekeeping()  # a day-long pause must not stop retention
                        self.stopping.wait(min(wait, MAX_GATE_WAIT))
                        continue
                    if self.digester is not None:
                        self.digester.maybe_combine()
                    claimed = self.work_once(transport, limit)
                except Exception as exc:  # the database went away: wait and try again
                    log_line("sender_error", logging.ERROR, error=f"{type(exc).__name__}: {exc}")
                    claimed = 0
                    self.stopping.wait(self.poll_seconds)
                if claimed and claimed == limit:
                    continue  # the budget's share went out: ask it again
                if claimed == self.batch_size:
                    continue  # a full batch: more is probably due
                self.housekeeping()
                if claimed:
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since > IDLE_CLOSE_SECONDS:
                    transport.close()
                if self._wake.wait(self.poll_seconds):
                    self._wake.clear()
                    # Let a burst gather: one claim and one commit for many rows, not per row.
                    self.stopping.wait(BATCH_LINGER_SECONDS)
        finally:
            transport.close()

    def housekeeping(self) -> None:
        """Retention, on its own: once every `prune_every` seconds per process, by whichever
        sender thread is between batches (a prune goes in small batches, never a long lock)."""
        if self.prune is None:
            return
        with self._prune_lock:
            if time.monotonic() < self._next_prune:
                return
            self._next_prune = time.monotonic() + self.prune_every
        try:
            pruned = self.prune()
        except Exception as exc:  # tried again next time; sending goes on
            log_line("prune_failed", logging.ERROR, error=f"{type(exc).__name__}: {exc}"[:300])
            return
        if pruned.rows or pruned.expired_keys:
            log_line("pruned", rows=pruned.rows, attempts=pruned.attempts, kept_keys=pruned.kept_keys,
                     expired_keys=pruned.expired_keys)

    def wake(self) -> None:
        self._wake.set()

    def start(self, threads: int = 1) -> None:
        for n in range(threads):
            thread = threading.Thread(target=self.run, args=(n,), name=f"bridge-sender-{n}", daemon=True)
            thread.start()
            self.threads.append(thread)

    def stop(self, timeout: float = 25.0) -> None:
        """Finish the message in hand, give back the rest of the claim, close connections."""
        self.stopping.set()
        self._wake.set()
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
