"""Blueprint: /hooks/<source>[/<route>], /healthz, /readyz. Typed source errors → 4xx.

The order of checks is the same for every source: size (413, before reading), route (404),
credentials (401: missing ones before reading, a signature while the body streams in), parse
(400/415), then store (202, or 503 when the database is away). More than INTAKE_MAX_INFLIGHT
received requests being parsed and stored at once in one process, or more than
INTAKE_MAX_BODY_MEMORY bytes of bodies in memory: 429.
"""
from __future__ import annotations

import logging
import time

from flask import Blueprint, current_app, g, request
from sqlalchemy.exc import SQLAlchemyError

from bridge import metrics
from bridge.bodies import received, too_big
from bridge.intake import DATABASE_DOWN, request_record, store
from bridge.logs import log_line
from bridge.events import Answer, Rejected

bp = Blueprint("web", __name__)


def services():
    return current_app.extensions["bridge"]


def answer(code: int, status: str, **fields):
    """(JSON body, code): Flask serialises it once, and the request's log line reads the dict."""
    return {"status": status, **{k: v for k, v in fields.items() if v is not None}}, code


def body_check(source, headers, config):
    """The source's streaming check of the body, or None to verify the whole body after."""
    make = getattr(source, "body_check", None)
    return make(headers, config) if make is not None else None


def read_body(limit: int):
    """The request body (a context manager giving bytes): anything over `limit` is refused
    without reading it all, and its memory is counted against INTAKE_MAX_BODY_MEMORY."""
    return received(request.stream, request.content_length, limit, None, services().body_memory)


@bp.post("/hooks/<name>")
@bp.post("/hooks/<name>/<route>")
def hook(name: str, route: str | None = None):
    started = time.monotonic()
    source = services().hooks.get(name)
    if source is None:
        return answer(404, "error", reason=f"no source named {name!r}")
    result = _take(source, route)
    body, code = result[0], result[1]
    metrics.request(name, code, body.get("status"))
    log_line("request", source=name, route=route, code=code, outcome=body.get("status"),
             outbox_id=body.get("id"), reason=body.get("reason"),
             delivery_id=g.get("delivery_id") or request.headers.get("X-GitHub-Delivery")
             or request.headers.get("Idempotency-Key"),
             ms=round((time.monotonic() - started) * 1000))
    return result


def _take(source, route: str | None):
    """Size, route, credentials, then the body as it streams in; only a received, verified body
    takes an intake slot, so clients that are slow to send hold none."""
    svc = services()
    config = svc.settings.sources[source.NAME]
    headers = dict(request.headers)
    try:
        too_big(request.content_length, source.MAX_BODY)
        recipients = svc.settings.recipients(route)
        if recipients is None:
            return answer(404, "error", reason=f"unknown route {route!r}: set MAIL_TO_<ROUTE>")
        check = body_check(source, headers, config)
        with received(request.stream, request.content_length, source.MAX_BODY, check, svc.body_memory) as body:
            if check is None:
                source.verify(headers, body, config)
            if not svc.intake_slots.acquire(blocking=False):
                # Shed load at once rather than queue: a flood must not starve /healthz or time
                # out the senders that are already being served.
                return answer(429, "error", reason="too many requests in flight; retry shortly")
            try:
                return _parse_and_store(svc, source, headers, body, config, recipients, route)
            finally:
                svc.intake_slots.release()
    except Rejected as exc:
        return unread_answer(exc)


def unread_answer(exc: Rejected):
    """A refusal that may leave part of the body unread: the connection is closed after it, so
    the server does not read (or wait for) the rest of that body."""
    return (*answer(exc.status, "error", reason=exc.reason), {"Connection": "close"})


def _parse_and_store(svc, source, headers, body: bytes, config, recipients, route: str | None):
    try:
        parsed = source.parse(headers, body, config, route=route)
    except Rejected as exc:
        return answer(exc.status, "error", reason=exc.reason)
    except Exception as exc:  # a parser bug must not become a 500 for the sender to retry forever
        current_app.logger.exception("parse failed")
        return answer(400, "error", reason=f"payload could not be read ({type(exc).__name__})")
    if isinstance(parsed, Answer):
        return answer(200, parsed.status, reason=parsed.reason or None)
    # The source's own delivery ids, for the request's log line.
    g.delivery_id = ",".join(dict.fromkeys(e.delivery_id for e in parsed if e.delivery_id))
    record = request_record(request.method, request.full_path.rstrip("?"), headers, body,
                            getattr(source, "secret_headers", ()))
    try:
        results = [store(svc, event, recipients, route, record) for event in parsed]
    except DATABASE_DOWN as exc:
        log_line("store_failed", logging.ERROR, error=f"{type(exc).__name__}: {exc}"[:300])
        return answer(503, "error", reason="the outbox database is unavailable; try again")
    except Exception as exc:  # the database refused this payload's values: retrying won't help
        log_line("store_refused", logging.ERROR, error=f"{type(exc).__name__}: {exc}"[:300])
        return answer(400, "error", reason=f"this payload could not be stored ({type(exc).__name__})")
    if not results:
        return answer(200, "ignored", reason="nothing to mail in this request")
    return _summarise(results, parsed)


def _summarise(results, events):
    ids = [r.id for r in results]
    id_field = ids[0] if len(ids) == 1 else ids
    if any(r.status == "accepted" for r in results):
        return answer(202, "accepted", id=id_field)
    if all(r.status == "ignored" for r in results):
        reasons = "; ".join(sorted({e.ignored for e in events if e.ignored}))
        return answer(200, "ignored", id=id_field, reason=reasons)
    return answer(200, "duplicate", id=id_field, reason="already received")


@bp.get("/healthz")
def healthz():
    return answer(200, "ok")


@bp.get("/readyz")
def readyz():
    try:
        services().outbox.ping()
    except (SQLAlchemyError, OSError) as exc:
        return answer(503, "error", reason=f"database unreachable ({type(exc).__name__})")
    return answer(200, "ok")
