"""The pieces of the way back, each against a real HTTP server (pytest-httpserver) or as plain
functions: signed ids, what a mail invites, settings, the mail commands, and the WeChat and
GitHub actions' answers to each kind of API reply."""
from __future__ import annotations

import pytest
import requests

from bridge import commands
from bridge.actions import Context, Done, Later, Refused, github, http_session, wechat
from bridge.actions.store import ReplyStore
from bridge.mail.tokens import signed, verified
from bridge.outbox import Outbox, make_engine
from bridge.settings import SettingsError, load_settings

SECRET = b"k" * 32


def test_signed_ids_verify_and_altered_ones_do_not():
    mid = signed("<0123456789abcdef0123456789abcdef@example.com>", SECRET)
    assert verified(mid, SECRET) and verified(mid.upper().replace("@EXAMPLE.COM", "@example.com"), SECRET)
    local = mid[1:].split("@")[0]
    for i in (0, len(local) - 1):                     # one character changed in the hash or the signature
        changed = local[:i] + ("0" if local[i] != "0" else "1") + local[i + 1:]
        assert not verified(f"<{changed}@example.com>", SECRET)
    assert not verified(mid, b"another secret")
    assert not verified("<0123456789abcdef0123456789abcdef@example.com>", SECRET)
    assert signed(mid, SECRET) == mid and signed(None, SECRET) is None


@pytest.mark.parametrize("text, want", [
    ("silence 2h deploying\n\nmore", ("silence", ("2h", "deploying"))),
    ("  /SILENCE 1d12h", ("silence", ("1d12h",))),
    ("\nunsilence please", ("unsilence", ("please",))),
    ("silence", None), ("silence forever", None), ("please silence 2h", None), ("", None),
])
def test_mail_commands_read_the_first_line(text, want):
    command = commands.parse_mail_command(text)
    assert (command and (command.name, command.args)) == want


def test_a_silence_is_capped_at_reply_max_silence():
    action = commands.plan_alert_reply("silence 30d", {"target": "alertmanager", "labels": {"a": "b"}}, 7 * 86400)
    assert action["seconds"] == 7 * 86400 and action["asked_seconds"] == 30 * 86400


def test_settings_of_the_way_back(tmp_path):
    env = {"IMAP_URL": "imap+starttls://me%40163.com:code@imap.163.com/Replies", "MAIL_TO": "a@x.com",
           "MAIL_TO_OPS": "b@x.com,a@x.com", "MAIL_FROM": "bot@x.com"}
    replies = load_settings(env, root=tmp_path).replies
    assert (replies.imap.user, replies.imap.port, replies.imap.security, replies.imap.mailbox) == \
        ("me@163.com", 143, "starttls", "Replies")
    assert replies.allowed_senders == ("a@x.com", "b@x.com") and replies.reply_to == "bot@x.com"
    assert load_settings({}, root=tmp_path).replies is None
    with pytest.raises(SettingsError, match="IMAP_URL"):
        load_settings({"IMAP_URL": "https://example.com"}, root=tmp_path)
    with pytest.raises(SettingsError, match="REPLY_MAX_SILENCE"):
        load_settings({**env, "REPLY_MAX_SILENCE": "a week"}, root=tmp_path)


def test_without_imap_url_mails_are_as_before(make_app):
    doc = {"repository": {"full_name": "acme/w"}, "issue": {"number": 3, "title": "t"}, "action": "opened"}
    for env, invites in (({}, False), ({"IMAP_URL": "imaps://u%40x.com:p@127.0.0.1/INBOX"}, True)):
        app = make_app(GITHUB_EVENTS="*", **env)
        answer = app.test_client().post("/hooks/github", json=doc, headers={"X-GitHub-Event": "issues"})
        row = app.extensions["bridge"].outbox.get(answer.json["id"])
        assert ("Reply-To" in row.headers) is invites and ("comment on GitHub" in row.text) is invites
        assert (row.message_id.count(".") == 2) is invites       # <hash.sig@example.com>
        assert '"number": 3' in row.reply_target


@pytest.fixture
def ctx(tmp_path, httpserver):
    settings = load_settings({"IMAP_URL": "imaps://u%40x.com:p@127.0.0.1/INBOX", "WECHAT_APPID": "wxapp",
                              "WECHAT_APPSECRET": "s3cret", "WECHAT_API_URL": httpserver.url_for("/").rstrip("/"),
                              "GITHUB_TOKEN": "tok", "GITHUB_API_URL": httpserver.url_for("/api/v3")}, root=tmp_path)
    outbox = Outbox(make_engine(f"sqlite:///{tmp_path / 'b.db'}"))
    outbox.create_schema()
    yield Context(settings=settings, store=ReplyStore(outbox), sender="me@x.com", thread=None, http=http_session())
    outbox.engine.dispose()


def token_answer(token):
    return {"access_token": token, "expires_in": 7200}


def test_wechat_token_is_cached_and_refreshed_once_when_refused(ctx, httpserver):
    httpserver.expect_oneshot_request("/cgi-bin/stable_token").respond_with_json(token_answer("old"))
    httpserver.expect_oneshot_request("/cgi-bin/message/custom/send", query_string="access_token=old") \
        .respond_with_json({"errcode": 40001, "errmsg": "invalid credential"})
    httpserver.expect_request("/cgi-bin/stable_token").respond_with_json(token_answer("new"))
    httpserver.expect_request("/cgi-bin/message/custom/send").respond_with_json({"errcode": 0})
    action = wechat.plan("你好", wechat.target("oUser"))
    assert isinstance(wechat.perform(action, ctx), Done)
    tokens = [r.get_json() for r, _ in httpserver.log if r.path == "/cgi-bin/stable_token"]
    assert [t["force_refresh"] for t in tokens] == [False, True]
    # another process (another store on the same database) uses the cached token
    other = Context(ctx.settings, ReplyStore(ctx.store.outbox), "me@x.com", None, http_session())
    assert isinstance(wechat.perform(action, other), Done)
    assert len([r for r, _ in httpserver.log if r.path == "/cgi-bin/stable_token"]) == 2


@pytest.mark.parametrize("code, words", [(45015, "48 hours"), (45047, "quota"), (48001, "verified"),
                                         (40164, "IP whitelist")])
def test_wechat_permanent_errors_explain_themselves(ctx, httpserver, code, words):
    httpserver.expect_request("/cgi-bin/stable_token").respond_with_json(token_answer("t"))
    httpserver.expect_request("/cgi-bin/message/custom/send").respond_with_json({"errcode": code, "errmsg": "x"})
    outcome = wechat.perform(wechat.plan("hi", wechat.target("oUser")), ctx)
    assert isinstance(outcome, Refused) and words in outcome.hint and str(code) in outcome.error


def test_long_wechat_text_is_split_at_the_limit():
    text = "\n".join(["这是一行很长的中文回复。" * 10] * 12)
    parts = wechat.split_text(text)
    assert len(parts) > 1 and all(len(p.encode()) <= wechat.TEXT_LIMIT for p in parts)
    assert "\n".join(parts).replace("\n", "") == text.replace("\n", "")


def test_github_answers(ctx, httpserver):
    issue = {"target": "github", "op": "comment", "repo": "o/r", "number": 5}
    path = "/api/v3/repos/o/r/issues/5/comments"
    httpserver.expect_oneshot_request(path).respond_with_json(
        {"message": "You have exceeded a secondary rate limit"}, status=403, headers={"Retry-After": "42"})
    httpserver.expect_oneshot_request(path).respond_with_json({"message": "Not Found"}, status=404)
    action = github.plan("ok", issue, "me@x.com")
    first, second = github.perform(action, ctx), github.perform(action, ctx)
    assert isinstance(first, Later) and first.after == 42
    assert isinstance(second, Refused) and "Not Found" in second.error and "not visible" in second.hint

    review = github.target("pull_request_review_comment", {
        "repository": {"full_name": "o/r"}, "pull_request": {"number": 8},
        "comment": {"id": 300, "in_reply_to_id": 200}})
    httpserver.expect_request("/api/v3/repos/o/r/pulls/8/comments/200/replies", method="POST") \
        .respond_with_json({"id": 301, "html_url": "https://github.com/o/r/pull/8#discussion_r301"}, status=201)
    done = github.perform(github.plan("agreed", review, "me@x.com"), ctx)
    assert isinstance(done, Done) and done.result["html_url"].endswith("r301")

    discussion = github.target("discussion_comment", {"repository": {"full_name": "o/r"},
                                                      "discussion": {"number": 4, "node_id": "D_kw1"}})
    httpserver.expect_request("/api/graphql", method="POST").respond_with_json(
        {"data": {"addDiscussionComment": {"comment": {"id": "DC_1", "url": "https://github.com/o/r/discussions/4#c1"}}}})
    done = github.perform(github.plan("thanks", discussion, "me@x.com"), ctx)
    assert isinstance(done, Done) and done.result["html_url"].endswith("#c1")
    (graphql,) = [r for r, _ in httpserver.log if r.path == "/api/graphql"]
    assert graphql.get_json()["variables"] == {"id": "D_kw1", "body": "_Reply by email from me@x.com:_\n\nthanks"}
    assert github.target("push", {"repository": {"full_name": "o/r"}}) is None


def _reply(mid: str, status: str = "ignored"):
    from bridge.actions.store import NewReply
    return NewReply(message_id=mid, imap_uid=None, sender="a@x.com", subject="Re: x", text="hi",
                    references=(), status=status, reason="test" if status == "ignored" else None,
                    target="none", action={"op": "nothing"})


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_reply_store_acts_once_leases_and_prunes(database, tmp_path, request):
    from bridge.retention import Retention
    url = request.getfixturevalue("postgres_url") if database == "postgresql" else f"sqlite:///{tmp_path / 'r.db'}"
    outbox = Outbox(make_engine(url.replace("postgresql://", "postgresql+psycopg://")))
    outbox.create_schema()
    store = ReplyStore(outbox)
    mid = f"<{tmp_path.name}@x.com>"
    try:
        first = store.record(_reply(mid, status="queued"))
        assert first and store.record(_reply(mid, status="queued")) is None        # same Message-ID
        # one reader at a time: a second holder waits until the first lets go (or its lease ends)
        assert store.lease("test_lease", "a", 30) and not store.lease("test_lease", "b", 30)
        store.release_lease("test_lease", "a")
        assert store.lease("test_lease", "b", 30) and store.lease("test_lease", "b", 30)
        token, rows = store.claim(10, 60)
        assert first in [r.id for r in rows] and first not in [r.id for r in store.claim(10, 60)[1]]
        assert store.finish(first, token, "done", {"template": "nothing"})
        store.confirmed(first, token, 1)
        store.record(_reply(f"<ignored-{tmp_path.name}@x.com>"))
        assert store.secret() == ReplyStore(outbox).secret()                          # shared by processes
        pruned = Retention(30, 90).prune(outbox, older_than=0.0, replies=store)
        assert pruned.rows >= 2 and store.get(first) is None
    finally:
        outbox.engine.dispose()


def test_a_network_error_never_shows_the_access_token():
    from bridge.actions import call
    from tests.smtpd import free_port
    outcome = call(requests, "POST", f"http://127.0.0.1:{free_port()}/cgi-bin/message/custom/send", 2.0,
                   params={"access_token": "SECRET_TOKEN_123"}, json={})
    assert isinstance(outcome, Later) and "ConnectionError" in outcome.error
    assert "SECRET_TOKEN_123" not in outcome.error and "access_token" not in outcome.error


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_strangers_overlong_message_id_is_stored_and_never_blocks_the_mailbox(database, make_app, tmp_path, request):
    from bridge.inbox import Inbox
    url = request.getfixturevalue("postgres_url") if database == "postgresql" else f"sqlite:///{tmp_path / 'r.db'}"
    app = make_app(DATABASE_URL=url, IMAP_URL="imaps://bridge%40example.com:pw@127.0.0.1:1/INBOX",
                   SEND_IN_WEB="false")
    inbox = Inbox(app.extensions["bridge"])
    long_id = "<" + "a" * 400 + "@spam.example>"
    raw = (f"From: stranger@spam.example\r\nTo: bridge@example.com\r\nSubject: Re: hi\r\n"
           f"Message-ID: {long_id}\r\nIn-Reply-To: <x@example.com>\r\n\r\nhello\r\n").encode()
    assert inbox.take(raw, "1:7") == "ignored"                  # PostgreSQL refused it before
    assert inbox.take(raw, "1:8") == "duplicate"                # still acts once, by its hashed id


def test_an_action_whose_lease_ran_out_is_left_to_the_process_that_took_it(tmp_path):
    import time
    outbox = Outbox(make_engine(f"sqlite:///{tmp_path / 'h.db'}"))
    outbox.create_schema()
    store = ReplyStore(outbox)
    row_id = store.record(_reply("<slow@x.com>", status="queued"))
    first, rows = store.claim(10, 0.2)
    assert [r.id for r in rows] == [row_id] and store.hold(row_id, first, 0.2)   # in time: renewed
    time.sleep(0.3)                                          # a slow API call used the lease up
    second, rows = store.claim(10, 60)
    assert [r.id for r in rows] == [row_id]
    assert not store.hold(row_id, first, 60)                 # the first runner must not act now
    assert store.hold(row_id, second, 60)
    outbox.engine.dispose()


def test_a_reference_whose_case_a_relay_changed_still_finds_its_mail(make_app):
    from bridge.inbox import Inbox
    app = make_app(MAIL_FROM="Bridge@Example.COM", MAIL_TO="oncall@example.com", SEND_IN_WEB="false",
                   IMAP_URL="imaps://bridge%40example.com:pw@127.0.0.1:1/INBOX")
    r = app.test_client().post("/hooks/generic", json={"subject": "disk", "text": "full"})
    row = app.extensions["bridge"].outbox.get(r.json["id"])
    inbox = Inbox(app.extensions["bridge"])
    for ref in (row.message_id, row.message_id.upper()):
        assert inbox.answered([ref]).id == row.id, ref
