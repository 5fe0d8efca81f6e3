"""The sender: claims due outbox rows, composes each mail and hands it to the transport.

Runs as threads in each web process (SEND_IN_WEB=true) or in the `worker` process. Each
thread owns one transport, so one logged-in SMTP connection serves a whole batch. No
database transaction is open while the SMTP server is talking: claim, send, mark are three
separate short steps. On stop, a thread finishes the message in hand and gives back the rest.
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
from bridge.outbox import Outbox

IDLE_CLOSE_SECONDS = 15.0
BATCH_LINGER_SECONDS = 0.05


def no_attachments(row: Any) -> list[tuple[str, str, bytes]]:
    return []


class Sender:
    def __init__(self, outbox: Outbox, make_transport: Callable[[], Any], batch_size: int = 20,
                 lease_seconds: float = 60.0, poll_seconds: float = 1.0,
                 attach: Callable[[Any], list] = no_attachments,
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
        self.stopping = threading.Event()
        self._wake = threading.Event()
        self.threads: list[threading.Thread] = []

    # -- one batch
    def work_once(self, transport) -> int:
        """Claim one batch and try each row once; returns how many rows were claimed."""
        token, rows = self.outbox.claim(self.batch_size, self.lease_seconds)
        claimed_at = time.monotonic()
        held = {row.id for row in rows}
        delay = 0.0
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
                handled += 1
                if row.id not in held:
                    log_line("claim_lost", logging.WARNING, outbox_id=row.id)
                    continue
                if not self.deliver(transport, row, token):
                    # No connection: the rest of the claim waits as long as this row does.
                    delay = self.outbox.backoff(row.attempts + 1)
                    break
        finally:
            if handled < len(rows):
                self.outbox.release(token, delay)
        return len(rows)

    def deliver(self, transport, row, token: str) -> bool:
        """Send one row and record the outcome; False when the server could not be reached."""
        started = time.monotonic()
        try:
            msg = compose(row, self.attach(row))
            mail_from, rcpt_to = envelope(row)
            detail = transport.send(msg, mail_from, rcpt_to)
        except Exception as exc:  # every failure is recorded on the row, none is fatal
            failure = classify(exc)
            seconds = time.monotonic() - started
            status = self.outbox.mark_failed(row, token, failure, seconds)
            metrics.mail_failed(exc, status, seconds)
            log_line("delivery", logging.WARNING, outbox_id=row.id, delivery_id=row.delivery_id,
                     source=row.source, status=status, attempt=row.attempts + 1,
                     ms=round(seconds * 1000), error=failure.detail, hint=failure.hint)
            return not isinstance(exc, ConnectFailed)
        seconds = time.monotonic() - started
        self.outbox.mark_sent(row.id, token, detail, seconds)
        log_line("delivery", outbox_id=row.id, delivery_id=row.delivery_id, source=row.source,
                 status="sent", attempt=row.attempts + 1, ms=round(seconds * 1000),
                 message_id=row.message_id, via=transport.describe())
        metrics.mail_sent(seconds)
        return True

    # -- the loop
    def run(self) -> None:
        transport = self.make_transport()
        idle_since = time.monotonic()
        try:
            while not self.stopping.is_set():
                try:
                    claimed = self.work_once(transport)
                except Exception as exc:  # the database went away: wait and try again
                    log_line("sender_error", logging.ERROR, error=f"{type(exc).__name__}: {exc}")
                    claimed = 0
                    self.stopping.wait(self.poll_seconds)
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
            thread = threading.Thread(target=self.run, name=f"bridge-sender-{n}", daemon=True)
            thread.start()
            self.threads.append(thread)

    def stop(self, timeout: float = 25.0) -> None:
        """Finish the message in hand, give back the rest of the claim, close connections."""
        self.stopping.set()
        self._wake.set()
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
