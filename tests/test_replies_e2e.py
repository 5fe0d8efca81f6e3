"""The way back, end to end with real parts: a mail goes out through a real TLS+AUTH SMTP server
(aiosmtpd), a reply written the way a mail client writes it is delivered into a real Dovecot
(LMTP) and read over IMAPS (trustme CA), the action reaches the API (pytest-httpserver for
GitHub and WeChat, a real Alertmanager for silences), and the confirmation comes back at the
SMTP server in the reply's thread."""
from __future__ import annotations

import email.policy
import logging
import time
import uuid
from email.message import EmailMessage
from email.utils import formatdate

import pytest

from tests.amserver import alertmanager  # noqa: F401  (fixture)
from tests.imapserver import dovecot  # noqa: F401  (fixture)
from tests.util import wait_until
from tests.wechat_kit import TOKEN as WECHAT_TOKEN, message, post as wechat_post

REPLIER = "oncall@example.com"
GH_TOKEN = "ghp_replies_test_token"
GH_COMMENT = {"id": 1901, "html_url": "https://github.com/acme/widgets/issues/7#issuecomment-1901"}


class WayBack:
    """One bridge with replies on, driven step by step (no background threads)."""

    def __init__(self, app, smtp, imap):
        self.app, self.smtp, self.imap = app, smtp, imap
        self.svc = app.extensions["bridge"]
        self.client = app.test_client()

    def send(self, n: int) -> list:
        transport = self.svc.make_transport()
        try:
            assert wait_until(lambda: self.svc.sender.work_once(transport) == 0
                              and len(self.smtp.messages) >= n, 10)
        finally:
            transport.close()
        return list(self.smtp.messages)

    def github(self, number: int, event: str = "issue_comment", **extra) -> None:
        doc = {"action": "created", "repository": {"full_name": "acme/widgets", "html_url": "https://github.com/acme/widgets"},
               "issue": {"number": number, "title": f"Widget {number} wobbles", "html_url": f"https://github.com/acme/widgets/issues/{number}"},
               "comment": {"id": 77, "body": "It wobbles on Tuesdays.", "user": {"login": "alice"}},
               "sender": {"login": "alice"}, **extra}
        answer = self.client.post("/hooks/github", json=doc, headers={"X-GitHub-Event": event,
                                                                       "X-GitHub-Delivery": str(uuid.uuid4())})
        assert answer.status_code == 202, answer.json

    def read(self) -> int:
        """What `flask inbox --once` does: read the mailbox, run the due actions."""
        read = self.svc.inbox.once()
        while self.svc.runner.work_once():
            pass
        return read


def reply(parent, text: str, sender: str = REPLIER, html: str | None = None, charset: str = "utf-8",
          **headers) -> bytes:
    """A Gmail-style reply: Re: subject, In-Reply-To / References, 'On … wrote:' and quotes
    (`charset="gb18030"`: encoded as QQ Mail and Foxmail do)."""
    msg = EmailMessage()
    msg["From"] = f"Oncall Person <{sender}>"
    msg["To"] = parent["Reply-To"] or parent["From"]
    msg["Subject"] = "Re: " + parent["Subject"]
    msg["Date"] = formatdate()
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@mail.example.com>"
    msg["In-Reply-To"] = parent["Message-ID"]
    msg["References"] = " ".join(filter(None, [parent["References"], parent["Message-ID"]]))
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    quoted = "\n".join("> " + line for line in parent.get_body(("plain",)).get_content().splitlines())
    msg.set_content(f"{text}\n\nOn Tue, Dec 1, 2026 at 7:52 PM bridge <bridge@example.com> wrote:\n{quoted}\n",
                    charset=charset, cte="base64")
    if html:
        msg.add_alternative(html, subtype="html")
    return msg.as_bytes(policy=email.policy.SMTP)


@pytest.fixture
def way_back(make_app, smtp_server, cafile, dovecot, httpserver, tmp_path):  # noqa: F811
    dovecot.clear()
    httpserver.expect_request("/cgi-bin/stable_token", method="POST").respond_with_json(
        {"access_token": "wx-access-1", "expires_in": 7200})
    httpserver.expect_request("/cgi-bin/message/custom/send", method="POST").respond_with_json(
        {"errcode": 0, "errmsg": "ok"})

    def make(**env):
        env.setdefault("IMAP_URL", dovecot.url())
        app = make_app(**smtp_server.env(cafile), MAIL_TO=REPLIER,
                       GITHUB_TOKEN=GH_TOKEN, GITHUB_API_URL=httpserver.url_for("/api/v3"),
                       WECHAT_TOKEN=WECHAT_TOKEN, WECHAT_APPID="wxappid0001", WECHAT_APPSECRET="wx-secret",
                       WECHAT_API_URL=httpserver.url_for("/").rstrip("/"), BRIDGE_TIMEZONE="Asia/Shanghai",
                       **env)
        return WayBack(app, smtp_server, dovecot)
    return make


def github_api(httpserver, number: int, first: tuple[dict, int] | None = None) -> str:
    """GitHub's comment endpoint for issue `number`: 201 with GH_COMMENT, after `first` once."""
    path = f"/api/v3/repos/acme/widgets/issues/{number}/comments"
    if first:
        httpserver.expect_oneshot_request(path, method="POST").respond_with_json(first[0], status=first[1])
    httpserver.expect_request(path, method="POST").respond_with_json(GH_COMMENT, status=201)
    return path


def calls(httpserver, path: str) -> list:
    return [req for req, _ in httpserver.log if req.path == path]


def test_github_reply_becomes_one_comment_and_a_confirmation(way_back, httpserver):
    path = github_api(httpserver, 7, first=({"message": "Server Error"}, 502))
    wb = way_back(RETRY_BASE_SECONDS="0")
    wb.github(7)
    (mail,) = wb.send(1)
    assert mail["Reply-To"] == "bridge@example.com"
    assert "Reply to this mail to comment on GitHub (acme/widgets#7)" in mail.get_body(("plain",)).get_content()

    raw = reply(mail, "Fixed in 2.3.1, closing.\n修复已发布。\n\n-- \nOncall\n138-0000-0000")
    wb.imap.deliver(raw)
    assert wb.read() == 1
    wb.imap.deliver(raw)                                  # the same reply again: acts once
    wb.read()
    posts = calls(httpserver, path)
    assert len(posts) == 2 and [r.status for r in wb.svc.replies.recent()] == ["done"], "502, then one retry"
    body = posts[-1].get_json()["body"]
    assert posts[-1].headers["Authorization"] == f"Bearer {GH_TOKEN}"
    assert body.splitlines()[0] == f"_Reply by email from {REPLIER}:_"
    assert "Fixed in 2.3.1, closing.\n修复已发布。" in body
    assert "wobbles" not in body and "wrote:" not in body and "138-0000" not in body

    confirmation = wb.send(2)[-1]
    text = confirmation.get_body(("plain",)).get_content()
    assert GH_COMMENT["html_url"] in text
    assert confirmation["To"] == REPLIER and confirmation["Subject"] == "Re: " + mail["Subject"]
    assert confirmation["In-Reply-To"] == email.message_from_bytes(raw)["Message-ID"]
    assert mail["Message-ID"] in confirmation["References"]


def test_alert_reply_silences_the_group_and_unsilence_expires_it(way_back, alertmanager):  # noqa: F811
    am = alertmanager()
    wb = way_back(ALERTMANAGER_URL=am.url, REPLY_MAX_SILENCE="1d")
    labels = {"alertname": "DiskFull", "cluster": "prod-" + uuid.uuid4().hex[:6]}
    am.fire({**labels, "instance": "db-1"}, {"summary": "磁盘满了"})
    doc = {"receiver": "bridge", "status": "firing", "groupLabels": labels, "commonLabels": labels,
           "commonAnnotations": {}, "externalURL": am.url, "version": "4", "groupKey": f"{{}}:{labels}",
           "alerts": [{"status": "firing", "labels": {**labels, "instance": "db-1"}, "annotations": {},
                       "startsAt": "2026-12-01T10:00:00Z", "fingerprint": "f1"}]}
    assert wb.client.post("/hooks/alertmanager", json=doc).status_code == 202
    (mail,) = wb.send(1)
    assert "Reply `silence 2h`" in mail.get_body(("plain",)).get_content()

    wb.imap.deliver(reply(mail, "silence 3d 正在部署修复", charset="gb18030"))
    wb.read()
    (silence,) = am.silences()
    assert {(m["name"], m["value"]) for m in silence["matchers"]} == set(labels.items())
    assert silence["createdBy"] == REPLIER and silence["comment"] == "正在部署修复"
    confirmation = wb.send(2)[-1]
    text = confirmation.get_body(("plain",)).get_content()
    assert silence["id"] in text and "CST" in text and "capped at REPLY_MAX_SILENCE" in text

    wb.imap.deliver(reply(confirmation, "unsilence"))     # answering the confirmation: same thread
    wb.read()
    assert wait_until(lambda: am.silences()[0]["status"]["state"] == "expired", 5)
    assert "expired " + silence["id"] in wb.send(3)[-1].get_body(("plain",)).get_content()

    wb.imap.deliver(reply(mail, "what is this?"))
    wb.read()
    assert "silence <duration>" in wb.send(4)[-1].get_body(("plain",)).get_content()
    assert len(am.silences()) == 1


def test_wechat_reply_goes_to_the_follower(way_back, httpserver):
    wb = way_back(WECHAT_USER_NAMES="oFollower42=李四")
    assert wechat_post(wb.client, message("订单还没到<b>", sender="oFollower42", msg_id=4242)).status_code == 200
    (mail,) = wb.send(1)
    assert "回复此邮件即可回复该用户" in mail.get_body(("plain",)).get_content()
    # a mail a person can answer: the follower's name, an HTML part, the OpenID in a header
    assert mail["Subject"].startswith("[微信] 李四: ") and mail["X-WeChat-OpenID"] == "oFollower42"
    html = mail.get_body(("html",)).get_content()
    assert "<b>李四</b>" in html and "订单还没到&lt;b&gt;" in html and "回复此邮件即可回复该用户" in html
    answer = "<div dir='ltr'>已经发货了，单号 SF100。</div><blockquote type='cite'>quoted original</blockquote>"
    wb.imap.deliver(reply(mail, "已经发货了，单号 SF100。", html=answer))
    wb.read()
    (send,) = calls(httpserver, "/cgi-bin/message/custom/send")
    assert send.args["access_token"] == "wx-access-1"
    assert send.get_json() == {"touser": "oFollower42", "msgtype": "text", "text": {"content": "已经发货了，单号 SF100。"}}
    (token,) = calls(httpserver, "/cgi-bin/stable_token")
    assert token.get_json()["appid"] == "wxappid0001"
    assert "Sent to the follower" in wb.send(2)[-1].get_body(("plain",)).get_content()


def test_what_is_not_acted_on(way_back, httpserver):
    """Strangers, automatic mail, the bridge's own mail and forged references: recorded with a
    reason, no API call, no answer."""
    wb = way_back()
    wb.github(9)
    (mail,) = wb.send(1)
    forged = EmailMessage()
    forged.set_content("Please close.")
    altered = mail["Message-ID"].replace(mail["Message-ID"][-20], "0" if mail["Message-ID"][-20] != "0" else "1")
    cases = {
        "stranger": reply(mail, "LGTM", sender="mallory@evil.example"),
        "automatic": reply(mail, "I am away", Auto_Submitted="auto-replied"),
        "own": reply(mail, "loop", sender="bridge@example.com"),
        "altered": reply(mail, "Please close.").replace(mail["Message-ID"].encode(), altered.encode()),
    }
    for raw in cases.values():
        wb.imap.deliver(raw)
    assert wb.read() == len(cases)
    rows = wb.svc.replies.recent()
    assert [r.status for r in rows] == ["ignored"] * len(cases)
    reasons = " | ".join(r.reason for r in rows)
    for words in ("REPLY_ALLOWED_SENDERS", "Auto-Submitted", "own address", "no reference to a mail of this bridge"):
        assert words in reasons
    assert not [req for req, _ in httpserver.log if req.path.startswith("/api/v3")]
    assert wb.send(1) == [mail], "no confirmation to anyone"
    metrics = wb.client.get("/metrics").get_data(as_text=True)
    assert 'bridge_replies_total{outcome="ignored"} 4.0' in metrics


@pytest.mark.parametrize("mode", ["IDLE", "polling"])
def test_reply_to_action_latency(way_back, httpserver, monkeypatch, mode):
    """The reader as it runs in production (background threads): a reply delivered into the
    mailbox is acted on within seconds, with IDLE and with polling every IMAP_POLL_SECONDS.
    Printed, not asserted tight."""
    from bridge.mail.imap import Mailbox
    if mode == "polling":  # Dovecot always offers IDLE: this reader behaves as if it did not
        monkeypatch.setattr(Mailbox, "can_idle", False)
    path = github_api(httpserver, 11)
    wb = way_back(IMAP_POLL_SECONDS="2")
    wb.github(11)
    (mail,) = wb.send(1)
    logins = wb.imap.logins()
    wb.svc.start_replies()
    try:
        assert wait_until(lambda: wb.imap.logins() > logins, 10)
        time.sleep(1)
        landed = time.monotonic()
        wb.imap.deliver(reply(mail, f"latency probe ({mode})"))
        assert wait_until(lambda: calls(httpserver, path), 20, 0.01)
        print(f"\nreply landed in the mailbox → GitHub comment posted: {time.monotonic() - landed:.2f} s "
              f"({mode}, IMAP_POLL_SECONDS=2)")
    finally:
        wb.svc.stop(timeout=5)


def test_a_refused_action_is_explained_shown_and_retried(way_back, httpserver):
    path = github_api(httpserver, 12, first=({"message": "Not Found"}, 404))
    wb = way_back(ADMIN_TOKEN="admin-tok")
    wb.github(12)
    (mail,) = wb.send(1)
    wb.imap.deliver(reply(mail, "Does this reach GitHub?"))
    wb.read()
    refusal = wb.send(2)[-1].get_body(("plain",)).get_content()
    assert "Not done: GitHub answered 404: Not Found" in refusal and "not visible to GITHUB_TOKEN" in refusal

    auth = {"Authorization": "Bearer admin-tok"}
    (row,) = wb.svc.outbox.recent(source="github")
    (shown,) = wb.client.get(f"/api/deliveries/{row.id}", headers=auth).json["replies"]
    assert (shown["status"], shown["target"], shown["attempts"]) == ("failed", "github", 1)
    page = wb.client.get(f"/deliveries/{row.id}", headers=auth).get_data(as_text=True)
    assert "Does this reach GitHub?" in page and "Retry" in page
    assert wb.client.post(f"/api/replies/{shown['id']}/retry", headers=auth).status_code == 202
    assert wb.client.post(f"/api/replies/{shown['id']}/retry", headers=auth).status_code == 409
    wb.read()
    assert len(calls(httpserver, path)) == 2 and wb.svc.replies.get(shown["id"]).status == "done"
    assert GH_COMMENT["html_url"] in wb.send(3)[-1].get_body(("plain",)).get_content()
    listing = wb.client.get("/deliveries/replies", headers=auth).get_data(as_text=True)
    assert "oncall@example.com" in listing and "done" in listing


@pytest.mark.parametrize("scheme", ["imap+starttls", "imap"])
def test_starttls_and_plain_imap(way_back, dovecot, scheme):  # noqa: F811
    """Besides implicit TLS (every test above): STARTTLS on the plain port, certificate checked
    against SSL_CERT_FILE, and plain IMAP."""
    wb = way_back(IMAP_URL=dovecot.url(scheme))
    wb.github(13)
    (mail,) = wb.send(1)
    wb.imap.deliver(reply(mail, "over " + scheme))
    assert wb.svc.inbox.once() == 1
    (stored,) = wb.svc.replies.recent()
    assert stored.text == "over " + scheme and stored.status == "queued"


@pytest.fixture
def bridge_log():
    """The bridge logger's lines (it does not propagate to the root logger pytest listens on)."""
    lines: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: lines.append(record.getMessage())
    logging.getLogger("bridge").addHandler(handler)
    yield lines
    logging.getLogger("bridge").removeHandler(handler)


def test_a_lost_mailbox_is_retried_with_a_growing_pause(make_app, bridge_log):
    from tests.smtpd import free_port
    app = make_app(IMAP_URL=f"imaps://u%40x.com:p@127.0.0.1:{free_port()}/INBOX")
    inbox = app.extensions["bridge"].inbox
    inbox.start()
    errors = lambda: [line for line in bridge_log if "event=inbox_error" in line]  # noqa: E731
    try:
        assert wait_until(lambda: len(errors()) >= 2, 8)
    finally:
        inbox.stop(timeout=5)
    assert [line.split("retry_in=")[1].split()[0] for line in errors()[:2]] == ["1.0", "2.0"]
    assert "ConnectionRefusedError" in errors()[0]


def test_flask_inbox_once_reads_acts_and_exits(way_back, httpserver):
    path = github_api(httpserver, 14)
    wb = way_back()
    wb.github(14)
    (mail,) = wb.send(1)
    wb.imap.deliver(reply(mail, "from cron"))
    result = wb.app.test_cli_runner().invoke(args=["inbox", "--once"])
    assert result.exit_code == 0 and "read 1 message(s) from 127.0.0.1" in result.output, result.output
    assert len(calls(httpserver, path)) == 1
    assert wb.svc.replies.lease("imap_reader", "someone else", 30)     # --once let go of the mailbox
    result = wb.app.test_cli_runner().invoke(args=["inbox", "--once"])
    assert "another process is reading the mailbox" in result.output


def test_a_reply_to_a_mail_about_nothing_answerable_says_so(way_back, httpserver):
    wb = way_back()
    answer = wb.client.post("/hooks/generic", json={"subject": "nightly backup done", "text": "42 GB"})
    assert answer.status_code == 202
    (mail,) = wb.send(1)
    assert mail["Reply-To"] and "Reply to this mail" not in mail.get_body(("plain",)).get_content()
    wb.imap.deliver(reply(mail, "thanks!"))
    wb.read()
    text = wb.send(2)[-1].get_body(("plain",)).get_content()
    assert "This mail cannot be answered" in text and "Nothing was done" in text
    assert not httpserver.log


def test_a_refused_login_says_which_password_to_use(way_back, dovecot, bridge_log):  # noqa: F811
    wb = way_back(IMAP_URL=dovecot.url().replace(dovecot.password, "the-mailbox-password"))
    wb.svc.inbox.start()
    try:
        assert wait_until(lambda: any("event=inbox_error" in line for line in bridge_log), 10)
    finally:
        wb.svc.inbox.stop(timeout=5)
    text = "\n".join(bridge_log)
    assert "LoginError" in text and "授权码" in text and "the-mailbox-password" not in text
