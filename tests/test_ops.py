"""The deliveries page and its API: who may look, what the list and detail show, resend + CSRF."""
import json
import mailbox
import re
import time

import pytest

from bridge import ops
from bridge.outbox import DEAD, QUEUED, SENT

TOKEN = "admin-token-for-tests"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


def post(client, subject, text="body", key=None, html=None):
    headers = {"Idempotency-Key": key} if key else {}
    doc = {"subject": subject, "text": text, **({"html": html} if html else {})}
    r = client.post("/hooks/generic", json=doc, headers=headers)
    assert r.status_code in (200, 202), r.json
    return r.json["id"]


def deliver(app):
    """One pass of the app's own sender over what is due (one batch is plenty here)."""
    svc = app.extensions["bridge"]
    transport = svc.make_transport()
    try:
        svc.sender.work_once(transport)
    finally:
        transport.close()


def log_in(client, token=TOKEN, next_url="/deliveries"):
    return client.post("/deliveries/login", data={"token": token, "next": next_url})


def csrf_of(client):
    page = client.get("/deliveries").get_data(as_text=True)
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)


@pytest.fixture
def admin_app(make_app):
    return make_app(ADMIN_TOKEN=TOKEN, BRIDGE_TIMEZONE="Asia/Shanghai")


@pytest.fixture
def admin(admin_app):
    return admin_app.test_client()


@pytest.fixture
def smtp_app(make_app, smtp_server, cafile):
    """An admin app that mails through a real SMTP server; `refuse(n)` makes the next n
    mails meet a permanent 550, so they die."""
    app = make_app(ADMIN_TOKEN=TOKEN, **smtp_server.env(cafile))
    app.refuse = lambda n: smtp_server.failures.extend(["550 5.1.1 no such mailbox"] * n)
    return app


# -- who may look
@pytest.mark.parametrize("path", ["/deliveries", "/deliveries/1", "/api/deliveries", "/deliveries/login"])
def test_without_admin_token_the_pages_do_not_exist(client, path):
    assert client.get(path, headers=BEARER).status_code == 404


def test_without_credentials_401_and_a_login_form(admin):
    r = admin.get("/deliveries")
    assert r.status_code == 401
    page = r.get_data(as_text=True)
    assert 'name="token"' in page and 'value="/deliveries"' in page
    after_post = admin.post("/deliveries/1/resend").get_data(as_text=True)
    assert 'name="next" value="/deliveries"' in after_post      # not back to a POST-only URL
    api = admin.get("/api/deliveries")
    assert api.status_code == 401 and api.json["status"] == "error"
    assert api.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("path", ["/deliveries", "/api/deliveries"])
def test_wrong_bearer_is_401_after_a_pause(admin, path):
    started = time.monotonic()
    r = admin.get(path, headers={"Authorization": "Bearer not-" + TOKEN})
    assert r.status_code == 401
    assert time.monotonic() - started >= ops.WRONG_TOKEN_DELAY
    assert TOKEN not in r.get_data(as_text=True)


def test_right_bearer_lists(admin):
    post(admin, "visible with the bearer token")
    r = admin.get("/deliveries", headers=BEARER)
    assert r.status_code == 200 and "visible with the bearer token" in r.get_data(as_text=True)
    assert "default-src 'none'" in r.headers["Content-Security-Policy"]
    assert r.headers["Cache-Control"] == "no-store"


def test_login_form_sets_a_session_cookie(admin):
    wrong = log_in(admin, token="guess")
    assert wrong.status_code == 401 and "not right" in wrong.get_data(as_text=True)
    assert admin.get("/deliveries").status_code == 401
    ok = log_in(admin, next_url="/deliveries?status=sent")
    assert ok.status_code == 303 and ok.headers["Location"] == "/deliveries?status=sent"
    cookie = admin.get_cookie("bridge_session")
    assert cookie is not None and cookie.http_only and TOKEN not in cookie.value
    assert admin.get("/deliveries").status_code == 200
    assert admin.post("/deliveries/logout", data={"csrf": csrf_of(admin)}).status_code == 303
    assert admin.get("/deliveries").status_code == 401


def test_login_never_sends_you_to_another_site(admin):
    for target in ("//evil.example/x", "https://evil.example/", "/hooks/generic"):
        assert log_in(admin, next_url=target).headers["Location"] == "/deliveries"


def test_the_session_holds_across_workers_without_secret_key(make_app):
    """gunicorn workers are separate apps: each must accept the cookie another one signed."""
    first = make_app(ADMIN_TOKEN=TOKEN).test_client()
    log_in(first)
    second = make_app(ADMIN_TOKEN=TOKEN).test_client()
    second.set_cookie("bridge_session", first.get_cookie("bridge_session").value)
    assert second.get("/deliveries").status_code == 200
    other_token = make_app(ADMIN_TOKEN="a-new-token").test_client()
    other_token.set_cookie("bridge_session", first.get_cookie("bridge_session").value)
    assert other_token.get("/deliveries").status_code == 401


# -- the list
def test_list_newest_first_with_local_time(admin_app, admin):
    post(admin, "older one")
    post(admin, "newer one")
    page = admin.get("/deliveries", headers=BEARER).get_data(as_text=True)
    assert page.index("newer one") < page.index("older one")
    assert "Asia/Shanghai" in page and " CST" in page
    assert "generic:message" in page and "team@example.com" in page


def test_filters_by_source_status_and_text(smtp_app):
    admin = smtp_app.test_client()
    sent_id = post(admin, "Deploy finished", key="k-sent")
    deliver(smtp_app)
    dead_id = post(admin, "Disk 100% full")
    smtp_app.refuse(1)
    deliver(smtp_app)
    queued_id = post(admin, "backup_ok queued")
    post(admin, "Deploy finished", key="k-sent")  # a repeat: the sent row counts a duplicate

    def ids(**query):
        r = admin.get("/api/deliveries", query_string=query, headers=BEARER)
        assert r.status_code == 200
        return [item["id"] for item in r.json["items"]]

    assert ids() == [queued_id, dead_id, sent_id]
    assert ids(status=SENT) == [sent_id]
    assert ids(status=DEAD) == [dead_id]
    assert ids(status=QUEUED) == [queued_id]
    assert ids(status="duplicate") == [sent_id]
    assert ids(q="deploy") == [sent_id]          # case-insensitive
    assert ids(q="100%") == [dead_id]            # % is a character, not a wildcard
    assert ids(q="deploy_finished") == []        # _ too
    assert ids(q="k-sent") == [sent_id]          # the delivery id
    assert ids(source="generic") == [queued_id, dead_id, sent_id]
    assert ids(source="github") == []
    assert ids(status="no-such-status") == [queued_id, dead_id, sent_id]
    html = admin.get("/deliveries?status=duplicate", headers=BEARER).get_data(as_text=True)
    assert "+1 duplicate" in html and "Retry all dead (1)" in html


def test_the_list_reads_no_bodies(admin_app, admin):
    post(admin, "a big one", text="x" * 100_000)
    (row,) = admin_app.extensions["bridge"].outbox.recent(brief=True)
    assert row.subject == "a big one" and "text" not in row._fields and "request" not in row._fields


def test_pages(admin, monkeypatch):
    monkeypatch.setattr(ops, "PAGE_SIZE", 2)
    made = [post(admin, f"row {n}") for n in range(5)]
    first = admin.get("/api/deliveries", headers=BEARER).json
    third = admin.get("/api/deliveries?page=3", headers=BEARER).json
    assert [i["id"] for i in first["items"]] == made[:-3:-1] and first["more"]
    assert [i["id"] for i in third["items"]] == made[:1] and not third["more"]
    page = admin.get("/deliveries?page=2&q=row", headers=BEARER).get_data(as_text=True)
    assert "page=1" in page and "page=3" in page and "q=row" in page


def test_hostile_text_is_escaped(admin):
    row_id = post(admin, '<script>alert(1)</script>', text="<img src=x onerror=alert(2)>")
    for path in ("/deliveries", f"/deliveries/{row_id}"):
        page = admin.get(path, headers=BEARER).get_data(as_text=True)
        assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)" in page
        assert "<img src=x" not in page


# -- the detail
def test_detail_shows_request_mail_and_attempts(admin_app, admin):
    row_id = post(admin, "部署完成 ✓", text="第一行", key="guid-1234",
                  html="<p>hello <script>alert(1)</script></p>")
    deliver(admin_app)
    page = admin.get(f"/deliveries/{row_id}", headers=BEARER).get_data(as_text=True)
    assert "部署完成 ✓" in page and "第一行" in page and "guid-1234" in page
    assert "POST /hooks/generic" in page and "Idempotency-Key" in page
    assert '&#34;subject&#34;: &#34;部署完成 ✓&#34;' in page   # pretty JSON, escaped
    assert 'sandbox=""' in page and f"/deliveries/{row_id}/mail.html" in page
    assert re.search(r'<span class="badge sent">sent</span></td>\s*<td data-label="Answer"', page)
    html = admin.get(f"/deliveries/{row_id}/mail.html", headers=BEARER)
    assert html.status_code == 200 and html.mimetype == "text/html"
    assert html.headers["Content-Security-Policy"].startswith("sandbox;")
    assert "<p>hello" in html.get_data(as_text=True)


def test_detail_masks_secrets_in_request_headers(make_app):
    app = make_app(ADMIN_TOKEN=TOKEN, GENERIC_TOKEN="hook-secret-value")
    client = app.test_client()
    r = client.post("/hooks/generic", json={"subject": "s", "text": "t"},
                    headers={"Authorization": "Bearer hook-secret-value"})
    page = client.get(f"/deliveries/{r.json['id']}", headers=BEARER).get_data(as_text=True)
    assert "hook-secret-value" not in page and "***" in page
    detail = client.get(f"/api/deliveries/{r.json['id']}", headers=BEARER).json
    assert detail["request"]["headers"]["Authorization"] == "***"


def test_login_failure_shows_the_authorization_code_hint(make_app, smtp_server, cafile):
    env = {**smtp_server.env(cafile), "SMTP_PASSWORD": "the-mailbox-password"}
    app = make_app(ADMIN_TOKEN=TOKEN, **env)
    client = app.test_client()
    row_id = post(client, "will not go out")
    deliver(app)
    page = client.get(f"/deliveries/{row_id}", headers=BEARER).get_data(as_text=True)
    assert "535" in page and "授权码" in page and "retrying" in page
    assert "the-mailbox-password" not in page


def test_payload_is_pretty_and_capped():
    form = {"method": "POST", "path": "/hooks/github", "headers": {},
            "body": "payload=%7B%22zen%22%3A+%22Keep+it+simple%22%7D", "truncated": False}
    assert ops.pretty_payload(form) == ('{\n  "zen": "Keep it simple"\n}', False)
    big = {"body": json.dumps({"a": "x" * (ops.PAYLOAD_SHOWN + 10)}), "truncated": False}
    shown, capped = ops.pretty_payload(big)
    assert capped and len(shown) == ops.PAYLOAD_SHOWN
    assert ops.pretty_payload({"body": "not json", "truncated": True}) == ("not json", True)


def test_unknown_row_is_404(admin):
    assert admin.get("/deliveries/999", headers=BEARER).status_code == 404
    assert admin.get("/api/deliveries/999", headers=BEARER).json["status"] == "error"
    assert admin.post("/api/deliveries/999/resend", headers=BEARER).status_code == 404


# -- resend, retry, CSRF
def maildir_ids(app):
    box = mailbox.Maildir(app.extensions["bridge"].settings.mail_dir, create=False)
    return [msg["Message-ID"] for msg in box]


def test_resend_needs_the_csrf_token(admin_app, admin):
    row_id = post(admin, "send me twice")
    deliver(admin_app)
    log_in(admin)
    for data in ({}, {"csrf": "forged"}):
        r = admin.post(f"/deliveries/{row_id}/resend", data=data)
        assert r.status_code == 403 and "CSRF" in r.get_data(as_text=True)
    assert admin_app.extensions["bridge"].outbox.get(row_id).status == SENT
    r = admin.post(f"/deliveries/{row_id}/resend", data={"csrf": csrf_of(admin)})
    assert r.status_code == 303 and r.headers["Location"] == f"/deliveries/{row_id}"
    assert "Queued again" in admin.get(r.headers["Location"]).get_data(as_text=True)
    assert admin_app.extensions["bridge"].outbox.get(row_id).status == QUEUED
    deliver(admin_app)
    first, again = maildir_ids(admin_app)
    assert first == again                                   # the same Message-ID
    assert len(admin_app.extensions["bridge"].outbox.attempts_of(row_id)) == 2


def test_api_resend_with_bearer_and_with_cookie(admin_app, admin):
    row_id = post(admin, "api resend")
    deliver(admin_app)
    r = admin.post(f"/api/deliveries/{row_id}/resend", headers=BEARER)
    assert r.status_code == 202 and r.json == {"status": "queued", "id": row_id}
    deliver(admin_app)
    log_in(admin)
    assert admin.post(f"/api/deliveries/{row_id}/resend").status_code == 403
    r = admin.post(f"/api/deliveries/{row_id}/resend", headers={"X-CSRF-Token": csrf_of(admin)})
    assert r.status_code == 202
    deliver(admin_app)
    detail = admin.get(f"/api/deliveries/{row_id}").json
    assert [a["outcome"] for a in detail["attempt_log"]] == [SENT, SENT, SENT]
    assert detail["attempts"] == 3 and detail["created_at"].endswith("+08:00")


def test_retry_all_dead(smtp_app):
    admin = smtp_app.test_client()
    dead = [post(admin, f"dead {n}") for n in range(2)]
    smtp_app.refuse(2)
    deliver(smtp_app)
    alive = post(admin, "alive")
    log_in(admin)
    assert admin.post("/deliveries/retry-dead").status_code == 403
    r = admin.post("/deliveries/retry-dead", data={"csrf": csrf_of(admin)})
    assert r.status_code == 303
    assert "2 dead mail(s) queued again" in admin.get("/deliveries").get_data(as_text=True)
    outbox = smtp_app.extensions["bridge"].outbox
    assert [outbox.get(i).status for i in dead + [alive]] == [QUEUED] * 3
