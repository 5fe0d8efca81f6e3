"""Outbox → real SMTP server (aiosmtpd, TLS via trustme, AUTH): what arrives, and what a
failing server does to the rows."""
import email
import email.policy

import pytest

from bridge.mail.smtp import AUTH_HINT
from bridge.outbox import DEAD, RETRYING, SENT
from tests.smtpd import SmtpServer


def post(client, subject, text="body", **extra):
    r = client.post("/hooks/generic", json={"subject": subject, "text": text, **extra})
    assert r.status_code == 202, r.json
    return r.json["id"]


def drain(app, transport=None, rounds=20):
    """Run the sender until a batch claims nothing; returns the transport (still open)."""
    svc = app.extensions["bridge"]
    transport = transport or svc.make_transport()
    for _ in range(rounds):
        if not svc.sender.work_once(transport):
            break
    return transport


def row(app, row_id):
    return app.extensions["bridge"].outbox.get(row_id)


@pytest.fixture
def smtp_app(make_app, smtp_server, cafile):
    return make_app(**smtp_server.env(cafile))


def test_chinese_subject_round_trips(smtp_app, smtp_server):
    subject = "【告警】磁盘空间不足 — 服务器 ✓ 🚀"
    post(smtp_app.test_client(), subject, "正文第一行\n第二行", html="<p>你好</p>")
    drain(smtp_app).close()
    (msg,) = smtp_server.messages
    raw = msg.as_bytes()
    assert b"=?utf-8?" in raw.split(b"\n\n", 1)[0].lower()  # RFC 2047 on the wire
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["Subject"] == subject
    assert parsed.get_content_type() == "multipart/alternative"
    assert parsed.get_body(("plain",)).get_content().startswith("正文第一行\n第二行")
    assert "<p>你好</p>" in parsed.get_body(("html",)).get_content()
    for name in ("Date", "Message-ID", "From", "To"):
        assert parsed[name]
    assert parsed["Auto-Submitted"] == "auto-generated"


def test_header_injection_cannot_add_a_header(smtp_app, smtp_server):
    post(smtp_app.test_client(), "hello\r\nBcc: evil@example.com\r\n\r\nbody")
    drain(smtp_app).close()
    (msg,) = smtp_server.messages
    assert msg["Bcc"] is None
    assert smtp_server.envelopes[0][1] == ["team@example.com"]
    assert msg["Subject"] == "hello Bcc: evil@example.com body"


def test_one_login_for_a_batch_of_50(smtp_app, smtp_server):
    client = smtp_app.test_client()
    for i in range(50):
        post(client, f"batch {i}")
    drain(smtp_app).close()
    assert len(smtp_server.messages) == 50
    assert smtp_server.logins == 1


def test_message_id_is_stable_across_a_resend(smtp_app, smtp_server):
    row_id = post(smtp_app.test_client(), "resend me")
    transport = drain(smtp_app)
    smtp_app.extensions["bridge"].outbox.requeue([row_id])
    drain(smtp_app, transport).close()
    first, second = smtp_server.messages
    assert first["Message-ID"] == second["Message-ID"] == row(smtp_app, row_id).message_id


def test_thread_key_sets_in_reply_to(smtp_app, smtp_server):
    client = smtp_app.test_client()
    post(client, "one", thread="deploys")
    post(client, "two", thread="deploys")
    drain(smtp_app).close()
    a, b = smtp_server.messages
    assert a["In-Reply-To"] == b["In-Reply-To"] == a["References"]
    assert a["Message-ID"] != b["Message-ID"]


def test_wrong_password_is_retryable_with_the_hint(make_app, smtp_server, cafile):
    app = make_app(**{**smtp_server.env(cafile), "SMTP_PASSWORD": "my-qq-password", "MAX_ATTEMPTS": "2"})
    row_id = post(app.test_client(), "needs the 授权码")
    for _ in range(4):
        drain(app, rounds=1).close()
    r = row(app, row_id)
    assert r.status == RETRYING and r.attempts == 4   # a login failure never kills the row
    assert r.last_error.startswith("535") and r.hint == AUTH_HINT and "授权码" in r.hint
    assert smtp_server.messages == [] and smtp_server.failed_logins == 4
    # The setting is fixed: the same row goes out.
    fixed = make_app(**{**smtp_server.env(cafile), "DATABASE_URL": app.extensions["bridge"].settings.database_url})
    drain(fixed).close()
    assert row(fixed, row_id).status == SENT and len(smtp_server.messages) == 1


def test_connection_failure_does_not_retry_login_per_row(make_app, smtp_server, cafile):
    app = make_app(**{**smtp_server.env(cafile), "SMTP_PASSWORD": "wrong"})
    client = app.test_client()
    for i in range(5):
        post(client, f"row {i}")
    drain(app, rounds=1).close()
    assert smtp_server.failed_logins == 1


@pytest.mark.parametrize("answer", ["421 4.3.2 Service not available", "451 4.3.0 Temporary failure"])
def test_temporary_answers_retry(smtp_app, smtp_server, answer):
    smtp_server.failures = [answer]
    row_id = post(smtp_app.test_client(), "try again")
    transport = drain(smtp_app, rounds=1)
    r = row(smtp_app, row_id)
    assert r.status == RETRYING and r.last_error.startswith(answer[:3])
    drain(smtp_app, transport).close()
    assert row(smtp_app, row_id).status == SENT
    assert len(smtp_server.messages) == 1


def test_permanent_answer_is_dead_at_once(smtp_app, smtp_server):
    smtp_server.failures = ["554 5.7.1 Message rejected as spam"]
    row_id = post(smtp_app.test_client(), "spammy")
    drain(smtp_app).close()
    r = row(smtp_app, row_id)
    assert r.status == DEAD and r.attempts == 1 and "554" in r.last_error


def test_dead_after_max_attempts_never_dropped(make_app, smtp_server, cafile):
    app = make_app(**smtp_server.env(cafile), MAX_ATTEMPTS="3")
    smtp_server.failures = ["451 busy"] * 10
    row_id = post(app.test_client(), "unlucky")
    drain(app).close()
    r = row(app, row_id)
    assert r.status == DEAD and r.attempts == 3 and r.last_error == "451 busy"
    assert [a.outcome for a in app.extensions["bridge"].outbox.attempts_of(row_id)] == [RETRYING, RETRYING, DEAD]


def test_server_down_then_back_delivers_once(make_app, ca, cafile):
    server = SmtpServer(ca, tls="implicit").start()
    app = make_app(**server.env(cafile))
    server.stop()
    row_id = post(app.test_client(), "while down")
    drain(app, rounds=1).close()
    assert row(app, row_id).status == RETRYING
    assert "Connection refused" in row(app, row_id).last_error
    server.start()
    try:
        drain(app).close()
        assert row(app, row_id).status == SENT
        assert len(server.messages) == 1
    finally:
        server.stop()


def test_dropped_connection_is_reopened(smtp_app, smtp_server, ca):
    client = smtp_app.test_client()
    post(client, "first")
    transport = drain(smtp_app)
    smtp_server.stop()       # the server restarts: the open connection is dead
    smtp_server.start()
    post(client, "second")
    drain(smtp_app, transport).close()
    assert [m["Subject"] for m in smtp_server.messages] == ["first", "second"]
    assert smtp_server.logins == 2


def test_starttls_server(make_app, ca, cafile):
    server = SmtpServer(ca, tls="starttls").start()
    try:
        app = make_app(**server.env(cafile))
        post(app.test_client(), "over starttls")
        drain(app).close()
        assert [m["Subject"] for m in server.messages] == ["over starttls"]
    finally:
        server.stop()


def test_untrusted_certificate_is_refused(make_app, smtp_server, tmp_path):
    other = tmp_path / "other-ca.pem"
    __import__("trustme").CA().cert_pem.write_to_path(str(other))
    app = make_app(**smtp_server.env(str(other)))
    row_id = post(app.test_client(), "mitm?")
    drain(app, rounds=1).close()
    r = row(app, row_id)
    assert r.status == RETRYING and "certificate" in r.last_error.lower()
    assert smtp_server.messages == []


def test_maildir_is_the_default(app, client, tmp_path):
    import mailbox
    post(client, "本地 maildir")
    drain(app).close()
    box = mailbox.Maildir(str(tmp_path / "mail"), create=False)
    (msg,) = [box.get_message(k) for k in box.keys()]
    parsed = email.message_from_bytes(msg.as_bytes(), policy=email.policy.default)
    assert parsed["Subject"] == "本地 maildir"


@pytest.mark.parametrize("subject", [
    "=?utf-8?q?hi=0D=0AReply-To:_attacker@evil.example?=",
    "=?utf-8?b?aGkNClJlcGx5LVRvOiBhdHRhY2tlckBldmlsLmV4YW1wbGU=?=",
    "=?utf-8?q?=3D=3Futf-8=3Fq=3Fhi=3D0D=3D0AReply-To:_attacker@evil.example=3F=3D?=",
])
def test_encoded_words_cannot_smuggle_a_header(smtp_app, smtp_server, subject):
    post(smtp_app.test_client(), subject)
    drain(smtp_app).close()
    (msg,) = smtp_server.messages
    raw = msg.as_bytes()
    head = raw.split(b"\n\n", 1)[0]
    assert b"\nReply-To:" not in head and msg["Reply-To"] is None
    assert "attacker@evil.example" in msg["Subject"]
