"""The deliveries page (`/deliveries`) and its JSON API (`/api/deliveries`): where is my mail?

Everything here needs ADMIN_TOKEN; without it these paths do not exist (404). A browser logs in
once through a form and then carries a signed session cookie; scripts send
`Authorization: Bearer <token>`. A wrong token is compared in constant time and costs a short
pause. A change made with the cookie (resend, retry, log out) needs the session's CSRF token;
one made with the bearer header does not, as no browser sends that header by itself.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets
import time
from urllib.parse import parse_qs

from flask import (Blueprint, Flask, Response, current_app, flash, jsonify, redirect,
                   render_template, request, session, url_for)
from flask.sessions import SecureCookieSessionInterface
from jinja2 import select_autoescape

from bridge.logs import log_line
from bridge.outbox import DEAD, DUPLICATE, QUEUED, RETRYING, SENDING, STATUSES
from bridge.events import bearer_token, same_secret

bp = Blueprint("ops", __name__)

PAGE_SIZE = 50
WRONG_TOKEN_DELAY = 0.5        # seconds; slows guessing down, not a person who mistyped
PAYLOAD_SHOWN = 64 * 1024      # characters of a request body the detail page shows
FILTER_STATUSES = STATUSES + (DUPLICATE,)
PAGE_CSP = ("default-src 'none'; style-src 'self'; script-src 'self'; connect-src 'self'; "
            "img-src 'self' data:; frame-src 'self'; form-action 'self'; frame-ancestors 'none'; "
            "base-uri 'none'")
# The mail's own HTML runs nothing and reaches nothing but inline styles and images.
MAIL_CSP = ("sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data: https:; "
            "font-src data:; frame-ancestors 'self'; base-uri 'none'")


WEBHOOK_PATHS = ("/hooks/", "/wechat")


class PageSessions(SecureCookieSessionInterface):
    """The signed cookie session of these pages. Webhook requests carry none: they skip the
    cookie and the signing serializer Flask would otherwise build for every request."""

    def open_session(self, app: Flask, request):
        if request.path.startswith(WEBHOOK_PATHS):
            return self.make_null_session(app)
        return super().open_session(app, request)


def register(app: Flask) -> None:
    # Our page templates end in .html.j2, which Flask would not escape by default.
    app.jinja_options = {**app.jinja_options,
                         "autoescape": select_autoescape(("html", "htm", "xml", "html.j2"))}
    app.config.update(SESSION_COOKIE_NAME="bridge_session", SESSION_COOKIE_SAMESITE="Lax",
                      PERMANENT_SESSION_LIFETIME=dt.timedelta(hours=12))
    app.session_interface = PageSessions()
    app.register_blueprint(bp)


def _services():
    return current_app.extensions["bridge"]


def _is_api() -> bool:
    return request.path.startswith("/api/")


def _token_mark(token: str) -> str:
    """What the session cookie holds: changes with ADMIN_TOKEN, reveals nothing of it."""
    return hashlib.sha256(b"bridge admin:" + token.encode("utf-8")).hexdigest()


# -- who may look
@bp.before_request
def guard():
    token = _services().settings.admin_token
    if not token:
        return _not_found()
    if request.endpoint == "ops.login":  # checks the token it is given itself
        return None
    given = bearer_token(request.headers)
    if given:
        return None if same_secret(given, token) else _refused(wrong=True)
    if same_secret(session.get("admin", ""), _token_mark(token)):
        return _csrf_refused() if request.method == "POST" else None
    return _refused(wrong=False)


def _not_found():
    return (jsonify(status="error", reason="not found"), 404) if _is_api() else \
        (render_template("ops/message.html.j2", message="not_found"), 404)


def _refused(wrong: bool, back_to: str | None = None):
    if wrong:
        time.sleep(WRONG_TOKEN_DELAY)
    if _is_api():
        reason = "wrong token" if wrong else "send Authorization: Bearer <ADMIN_TOKEN>"
        return jsonify(status="error", reason=reason), 401, {"WWW-Authenticate": "Bearer"}
    if back_to is None:  # after logging in, come back here (a GET) or to the list
        back_to = request.full_path.rstrip("?") if request.method == "GET" else url_for(".deliveries")
    return render_template("ops/login.html.j2", wrong=wrong, next=back_to), 401


def _csrf_refused():
    given = request.form.get("csrf") or request.headers.get("X-CSRF-Token", "")
    if given and same_secret(given, session.get("csrf", "")):
        return None
    if _is_api():
        return jsonify(status="error", reason="missing or wrong CSRF token (X-CSRF-Token)"), 403
    return render_template("ops/message.html.j2", message="csrf"), 403


@bp.app_context_processor
def csrf_field():
    def csrf_token() -> str:
        if "csrf" not in session:
            session["csrf"] = secrets.token_urlsafe(32)
        return session["csrf"]
    return {"csrf_token": csrf_token}


@bp.after_request
def page_headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", PAGE_CSP)
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@bp.route("/deliveries/login", methods=["GET", "POST"])
def login():
    target = _safe_next(request.values.get("next", ""))
    if request.method == "GET":
        return render_template("ops/login.html.j2", wrong=False, next=target)
    if not same_secret(request.form.get("token", ""), _services().settings.admin_token):
        log_line("admin_login", outcome="refused", addr=request.remote_addr)
        return _refused(wrong=True, back_to=target)
    session.clear()
    session.permanent = True
    session["admin"] = _token_mark(_services().settings.admin_token)
    session["csrf"] = secrets.token_urlsafe(32)
    log_line("admin_login", outcome="ok", addr=request.remote_addr)
    return redirect(target, 303)


def _safe_next(target: str) -> str:
    """Only back to a page of ours: never to another site (`//evil`, `https://…`)."""
    if target.startswith("/deliveries") and not target.startswith("/deliveries/login"):
        return target
    return url_for(".deliveries")


@bp.post("/deliveries/logout")
def logout():
    session.clear()
    return redirect(url_for(".login"), 303)


# -- reading
def _filters() -> dict:
    status = request.args.get("status", "")
    return {"source": request.args.get("source", "")[:32] or None,
            "status": status if status in FILTER_STATUSES else None,
            "text": request.args.get("q", "").strip()[:200] or None}


def _page() -> int:
    # Capped: a huge number would overflow the database's OFFSET.
    return min(10 ** 6, max(1, request.args.get("page", 1, type=int)))


def _list(filters: dict, page: int):
    """One page of rows, newest first, and whether an older page exists."""
    rows = _services().outbox.recent(limit=PAGE_SIZE + 1, offset=(page - 1) * PAGE_SIZE,
                                     brief=True, **filters)
    return rows[:PAGE_SIZE], len(rows) > PAGE_SIZE


@bp.app_template_filter("fromjson")
def from_json(text: str | None):
    return json.loads(text) if text else {}


@bp.app_template_filter("local_time")
def local_time(timestamp: float | None) -> str:
    if timestamp is None:
        return ""
    when = dt.datetime.fromtimestamp(timestamp, _services().settings.timezone)
    return when.strftime("%Y-%m-%d %H:%M:%S %Z")


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return dt.datetime.fromtimestamp(timestamp, _services().settings.timezone).isoformat(timespec="seconds")


def _request_record(row) -> dict | None:
    return json.loads(row.request) if row.request else None


def pretty_payload(record: dict | None) -> tuple[str, bool]:
    """The request body for reading: JSON indented (also GitHub's form `payload=`), capped."""
    if not record:
        return "", False
    body = record.get("body", "")
    form = parse_qs(body) if "=" in body and not body.lstrip().startswith(("{", "[")) else {}
    candidate = form["payload"][0] if len(form.get("payload", [])) == 1 else body
    try:
        shown = json.dumps(json.loads(candidate), indent=2, ensure_ascii=False)
    except ValueError:
        shown = body
    capped = len(shown) > PAYLOAD_SHOWN or bool(record.get("truncated"))
    return shown[:PAYLOAD_SHOWN], capped


CHART_HOURS, CHART_BUCKETS = 24, 96
CHART_SERIES = (("in", "events in"), ("out", "mails out"), ("digests", "digests"), ("refused", "provider refusals"))


def chart(activity: dict[str, list[int]], width: int = 960, height: int = 100) -> dict:
    """The last day's activity as SVG polylines on one scale (drawn by the template)."""
    top = max([1] + [n for counts in activity.values() for n in counts])
    step = width / max(1, CHART_BUCKETS - 1)
    lines = [{"key": key, "label": label, "total": sum(activity[key]),
              "points": " ".join(f"{i * step:.1f},{height - n * height / top:.1f}"
                                 for i, n in enumerate(activity[key]))}
             for key, label in CHART_SERIES]
    return {"lines": lines, "top": top, "width": width, "height": height,
            "minutes": CHART_HOURS * 60 // CHART_BUCKETS}


@bp.app_template_filter("pause_time")
def pause_time(timestamp: float) -> str:
    """`20:14` today, `2026-06-02 00:00` another day, in BRIDGE_TIMEZONE, with the zone."""
    zone = _services().settings.timezone
    when = dt.datetime.fromtimestamp(timestamp, zone)
    same_day = when.date() == dt.datetime.now(zone).date()
    return when.strftime("%H:%M" if same_day else "%Y-%m-%d %H:%M") + f" {zone.key}"


@bp.get("/deliveries")
def deliveries():
    filters, page = _filters(), _page()
    rows, more = _list(filters, page)
    svc = _services()
    outbox, counts = svc.outbox, svc.outbox.counts()
    activity = outbox.activity(time.time() - CHART_HOURS * 3600, CHART_HOURS * 3600 / CHART_BUCKETS, CHART_BUCKETS)
    return render_template("ops/list.html.j2", rows=rows, more=more, page=page, filters=filters,
                           replies_of=_replies_by_mail([row.id for row in rows]),
                           sources=outbox.sources(), statuses=FILTER_STATUSES,
                           counts=counts, timezone=svc.settings.timezone, pause=svc.pacer.state(),
                           waiting=sum(counts.get(s, 0) for s in (QUEUED, RETRYING, SENDING)),
                           chart=chart(activity), retention=svc.retention)


@bp.get("/deliveries/<int:row_id>")
def delivery(row_id: int):
    row = _services().outbox.get(row_id)
    if row is None:
        return _not_found()
    record = _request_record(row)
    payload, capped = pretty_payload(record)
    return render_template("ops/detail.html.j2", row=row, record=record, payload=payload,
                           capped=capped, attempts=_services().outbox.attempts_of(row_id),
                           carried=_services().outbox.carried(row_id) if row.digest_of else [],
                           replies=_replies_by_mail([row_id]).get(row_id, []))


@bp.get("/deliveries/<int:row_id>/mail.html")
def mail_html(row_id: int):
    """The mail's HTML part on its own, for the detail page's sandboxed iframe."""
    row = _services().outbox.get(row_id)
    if row is None or not row.html:
        return _not_found()
    return Response(row.html, mimetype="text/html", headers={"Content-Security-Policy": MAIL_CSP})


# -- changing
def _resend(row_id: int) -> bool:
    """Queue one row again (same Message-ID); False when it is being sent right now."""
    svc = _services()
    queued = svc.outbox.requeue([row_id]) > 0
    if queued:
        svc.wake_sender()
    log_line("resend", outbox_id=row_id, queued=queued, by="api" if _is_api() else "page")
    return queued


@bp.post("/deliveries/<int:row_id>/resend")
def resend(row_id: int):
    if _services().outbox.get(row_id) is None:
        return _not_found()
    flash(str(row_id), "resent" if _resend(row_id) else "busy")
    return redirect(url_for(".delivery", row_id=row_id), 303)


@bp.post("/deliveries/retry-dead")
def retry_dead():
    svc = _services()
    count = svc.outbox.requeue(status=DEAD)
    if count:
        svc.wake_sender()
    log_line("retry_dead", queued=count)
    flash(str(count), "retried")
    return redirect(url_for(".deliveries"), 303)


# -- replies: beside the mails they answer (or whose confirmation they are), and on their own
def _replies_by_mail(outbox_ids: list[int]) -> dict[int, list]:
    by_mail: dict[int, list] = {}
    for reply in _services().replies.for_mails(outbox_ids):
        for mail_id in {reply.outbox_id, reply.confirmation_id} & set(outbox_ids):
            by_mail.setdefault(mail_id, []).append(reply)
    return by_mail


def reply_summary(reply) -> dict:
    return {"id": reply.id, "received_at": _iso(reply.created_at), "message_id": reply.message_id,
            "sender": reply.sender, "subject": reply.subject, "text": reply.text, "status": reply.status,
            "reason": reply.reason, "answers": reply.outbox_id, "target": reply.target,
            "action": json.loads(reply.action) if reply.action else None, "attempts": reply.attempts,
            "last_error": reply.last_error, "hint": reply.hint,
            "result": json.loads(reply.result) if reply.result else None,
            "confirmation": reply.confirmation_id}


def _retry_reply(reply_id: int) -> bool:
    svc = _services()
    queued = svc.replies.retry(reply_id)
    if queued and svc.runner is not None:
        svc.runner.wake()
    log_line("retry_reply", reply_id=reply_id, queued=queued, by="api" if _is_api() else "page")
    return queued


@bp.get("/deliveries/replies")
def replies_page():
    return render_template("ops/replies.html.j2", replies=_services().replies.recent(PAGE_SIZE),
                           replies_on=_services().settings.replies is not None)


@bp.post("/deliveries/replies/<int:reply_id>/retry")
def retry_reply(reply_id: int):
    reply = _services().replies.get(reply_id)
    if reply is None:
        return _not_found()
    flash(str(reply_id), "reply_retried" if _retry_reply(reply_id) else "reply_not_failed")
    back = url_for(".delivery", row_id=reply.outbox_id) if reply.outbox_id else url_for(".replies_page")
    return redirect(back, 303)


@bp.get("/api/replies")
def api_replies():
    return jsonify(items=[reply_summary(r) for r in _services().replies.recent(PAGE_SIZE)])


@bp.post("/api/replies/<int:reply_id>/retry")
def api_retry_reply(reply_id: int):
    return _api_requeue(reply_id, _services().replies.get(reply_id) is not None, _retry_reply,
                        "only a failed action can be retried")


def _api_requeue(item_id: int, found: bool, requeue, refused: str):
    """The API's answer to "do it again" (a mail's resend, a reply's retry): 404 for what is
    not there, 409 with `refused` when `requeue(item_id)` declines, else 202."""
    if not found:
        return _not_found()
    if not requeue(item_id):
        return jsonify(status="error", id=item_id, reason=refused), 409
    return jsonify(status="queued", id=item_id), 202


# -- the JSON API
def summary(row) -> dict:
    return {"id": row.id, "created_at": _iso(row.created_at), "source": row.source,
            "kind": row.kind, "subject": row.subject,
            "recipients": [a.strip() for a in row.mail_to.split(",") if a.strip()],
            "status": row.status, "attempts": row.attempts, "duplicates": row.duplicates,
            "route": row.route, "delivery_id": row.delivery_id, "message_id": row.message_id,
            "last_error": row.last_error, "hint": row.hint, "sent_at": _iso(row.sent_at),
            "digest_id": row.digest_id, "digest_of": json.loads(row.digest_of) if row.digest_of else None}


@bp.get("/api/deliveries")
def api_list():
    filters, page = _filters(), _page()
    rows, more = _list(filters, page)
    return jsonify(items=[summary(row) for row in rows], page=page, more=more)


@bp.get("/api/deliveries/<int:row_id>")
def api_detail(row_id: int):
    row = _services().outbox.get(row_id)
    if row is None:
        return _not_found()
    tries = [{"at": _iso(a.at), "outcome": a.outcome, "detail": a.detail,
              "seconds": round(a.seconds, 3)} for a in _services().outbox.attempts_of(row_id)]
    return jsonify({**summary(row), "text": row.text, "html": row.html,
                    "request": _request_record(row), "attempt_log": tries,
                    "replies": [reply_summary(r) for r in _replies_by_mail([row_id]).get(row_id, [])]})


@bp.post("/api/deliveries/<int:row_id>/resend")
def api_resend(row_id: int):
    return _api_requeue(row_id, _services().outbox.get(row_id) is not None, _resend,
                        "being sent right now; try again")
