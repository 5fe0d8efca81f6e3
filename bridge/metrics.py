"""Prometheus metrics at `GET /metrics`; every name starts with `bridge_`.

Counters and the send-duration histogram are counted where things happen (web.py, sender.py).
Under gunicorn's several workers, and with a separate `worker` process, each process writes
its own mmap files into PROMETHEUS_MULTIPROC_DIR (gunicorn.conf.py and the Procfile set it)
and a scrape adds them all up, whichever process answers. Outbox depth and the age of the
oldest waiting row are read from the database at scrape time, so they hold even when the
senders run on another machine.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
if os.environ.get(MULTIPROC_ENV):  # prometheus_client writes there from the first metric on
    Path(os.environ[MULTIPROC_ENV]).mkdir(parents=True, exist_ok=True)

from flask import Blueprint, Response, current_app  # noqa: E402
from prometheus_client import (  # noqa: E402
    CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily  # noqa: E402
from sqlalchemy.exc import SQLAlchemyError  # noqa: E402

from bridge.outbox import STATUSES  # noqa: E402

REQUESTS = Counter("bridge_requests", "Webhook requests by source, outcome (accepted, duplicate, "
                   "ignored, pong, rejected, unavailable) and HTTP status",
                   ["source", "outcome", "code"])
SENT = Counter("bridge_mails_sent", "Mails handed over to the SMTP server or the Maildir")
FAILED = Counter("bridge_mails_failed", "Failed send attempts by reason (SMTP reply code or "
                 "error class) and the row's status afterwards (retrying, dead; limited: the "
                 "provider refused for the account's limits)",
                 ["reason", "status"])
DIGESTS = Counter("bridge_digests_sent", "Digest mails handed over (each carries several events)")
DIGEST_EVENTS = Histogram("bridge_digest_events", "Events carried per digest mail sent",
                          buckets=(2, 5, 10, 20, 50, 100, 200))
SEND_SECONDS = Histogram("bridge_send_duration_seconds", "Time to hand one mail to the transport",
                         ["outcome"], buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))

REPLIES = Counter("bridge_replies", "Reply mails read from the mailbox by outcome (accepted: an "
                  "action was queued; ignored: automatic, a stranger, no signed reference; duplicate)",
                  ["outcome"])
ACTIONS = Counter("bridge_actions", "Reply action attempts by target (github, alertmanager, wechat, "
                  "none) and the action's status afterwards (done, retrying, failed)", ["target", "status"])

bp = Blueprint("metrics", __name__)


def request(source: str, code: int, status: str | None) -> None:
    """Count one webhook answer. Only known sources get here, so labels stay few."""
    outcome = status if code < 400 else "rejected" if code < 500 else "unavailable"
    REQUESTS.labels(source, outcome or "unknown", str(code)).inc()


def mail_sent(seconds: float, digest_of: str | None = None) -> None:
    SENT.inc()
    SEND_SECONDS.labels("sent").observe(seconds)
    if digest_of:
        DIGESTS.inc()
        DIGEST_EVENTS.observe(len(json.loads(digest_of)))


def failure_reason(exc: BaseException) -> str:
    """A bounded label for a failed send: `smtp_535`, or the error's class name."""
    cause = getattr(exc, "cause", exc)  # ConnectFailed wraps what really went wrong
    code = getattr(cause, "smtp_code", None)
    return f"smtp_{code}" if code else type(cause).__name__


def mail_failed(exc: BaseException, status: str, seconds: float) -> None:
    FAILED.labels(failure_reason(exc), status).inc()
    SEND_SECONDS.labels("failed").observe(seconds)


def reply(outcome: str) -> None:
    REPLIES.labels(outcome).inc()


def action(target: str, status: str) -> None:
    ACTIONS.labels(target, status).inc()


class ReplyCollector:
    """Reply rows by target and status, read from the database per scrape."""

    def __init__(self, store):
        self.store = store

    def collect(self):
        try:
            counts = self.store.counts()
        except (SQLAlchemyError, OSError):
            return
        rows = GaugeMetricFamily("bridge_reply_rows", "Stored replies by target and status (ignored, "
                                 "queued, running, retrying, done, failed)", labels=["target", "status"])
        for (target, status), n in sorted(counts.items()):
            rows.add_metric([target, status], n)
        yield rows


class OutboxCollector:
    """Outbox depth by status and the oldest waiting row, read from the database per scrape."""

    def __init__(self, outbox):
        self.outbox = outbox

    def collect(self):
        up = GaugeMetricFamily("bridge_database_up", "1 when the outbox database answered this scrape")
        try:
            counts, oldest = self.outbox.counts(), self.outbox.oldest_due_age()
        except (SQLAlchemyError, OSError):
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        rows = GaugeMetricFamily("bridge_outbox_rows", "Outbox rows by status", labels=["status"])
        for status in STATUSES:
            rows.add_metric([status], counts.get(status, 0))
        yield rows
        yield GaugeMetricFamily("bridge_outbox_oldest_queued_age_seconds",
                                "Seconds the oldest not yet sent row (queued, retrying, sending) "
                                "has waited; 0 when none", value=oldest)


class PacingCollector:
    """The SMTP account's pause and budget, read from the database per scrape (they are shared
    by every process, so any process answers alike)."""

    def __init__(self, pacer):
        self.pacer = pacer

    def collect(self):
        try:
            state = self.pacer.state()
        except (SQLAlchemyError, OSError):
            return
        if state is None:  # the Maildir: no account to pace
            return
        paused = GaugeMetricFamily("bridge_smtp_paused", "1 while the provider's limit pauses sending, by "
                                   "the limit (rate, quota) and the provider's answer", labels=["reason", "answer"])
        paused.add_metric([state.kind or "", (state.answer or "")[:120]], 1 if state.paused else 0)
        yield paused
        yield GaugeMetricFamily("bridge_smtp_pause_remaining_seconds", "Seconds until the pause ends (0: not "
                                "paused)", value=state.remaining)
        tokens = GaugeMetricFamily("bridge_smtp_tokens_left", "Mails the budget lets go now, per budget "
                                   "entry (SMTP_RATE, preset, or learned from a refusal)", labels=["budget"])
        for budget, left in state.tokens_left.items():
            tokens.add_metric([budget], left)
        yield tokens
        yield GaugeMetricFamily("bridge_smtp_connections", "Parallel SMTP connections allowed now",
                                value=state.connections)
        yield CounterMetricFamily("bridge_smtp_limit_refusals", "Answers that said the account is over a "
                                  "provider's limit", value=state.refusals)


def _counted() -> CollectorRegistry:
    """This process's counters, or every process's when they share a multiprocess folder."""
    if not os.environ.get(MULTIPROC_ENV):
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


@bp.get("/metrics")
def scrape():
    services = current_app.extensions["bridge"]
    outbox = CollectorRegistry()
    outbox.register(OutboxCollector(services.outbox))
    outbox.register(PacingCollector(services.pacer))
    if services.replies is not None:
        outbox.register(ReplyCollector(services.replies))
    return Response(generate_latest(_counted()) + generate_latest(outbox), content_type=CONTENT_TYPE_LATEST)
