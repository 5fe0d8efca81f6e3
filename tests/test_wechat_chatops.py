"""Chat commands over /wechat: parsing, the outbox status, and the Alertmanager API v2 —
pytest-httpserver standing in for it, and once the real Alertmanager."""
import json
import threading
import time
from datetime import datetime

import pytest
from werkzeug import Response

from bridge import commands
from tests.amserver import alertmanager  # noqa: F401
from tests.smtpd import free_port
from tests.wechat_kit import WECHAT_ENV, message, post, reply_text

BOSS = "oBoss"


@pytest.fixture
def chat(make_app):
    """make(**env) → say(text, mode) → the passive reply's text."""
    def make(**env):
        app = make_app(**{**WECHAT_ENV, "WECHAT_ALLOWED_USERS": BOSS, "WECHAT_USER_NAMES": f"{BOSS}=王老板",
                          **env})
        client = app.test_client()
        ids = iter(range(1, 10 ** 6))

        def say(text, mode="plain", sender=BOSS):
            return reply_text(post(client, message(text, sender=sender, msg_id=next(ids)), mode), mode)
        say.app = app
        return say
    return make


# -- syntax

@pytest.mark.parametrize("text, expected", [
    ("/help", ("help", ())), ("/STATUS", ("status", ())), ("  /alerts  ", ("alerts", ())),
    ("/silence DiskFull 2h disk swap", ("silence", ("DiskFull", "2h", "disk", "swap"))),
    ("/unsilence abc", ("unsilence", ("abc",))),
])
def test_commands(text, expected):
    command = commands.parse_command(text)
    assert (command.name, command.args) == expected


@pytest.mark.parametrize("text", ["help", "status please", "/::)", "/::) /help", "/etc/hosts is wrong",
                                  "please /help", "/helpme", "", "／help"])
def test_ordinary_text_is_never_a_command(text):
    assert commands.parse_command(text) is None


def test_silence_syntax():
    s = commands.parse_silence(("DiskFull", "instance=~web-.*", "job!=node", "1h30m", "noisy", "disk"))
    assert s.seconds == 5400 and s.comment == "noisy disk"
    assert s.matchers == (
        {"name": "alertname", "value": "DiskFull", "isRegex": False, "isEqual": True},
        {"name": "instance", "value": "web-.*", "isRegex": True, "isEqual": True},
        {"name": "job", "value": "node", "isRegex": False, "isEqual": False},
    )
    for bad in ((), ("DiskFull",), ("2h",), ("DiskFull", "soon"), ("DiskFull", "31d")):
        with pytest.raises(commands.CommandError):
            commands.parse_silence(bad)


# -- through the endpoint

def test_help_and_a_command_is_not_mailed(chat):
    say = chat()
    text = say("/help", "aes")
    assert "/silence" in text and "/unsilence" in text and "/status" in text
    rows = say.app.extensions["bridge"].outbox.recent()
    assert [(r.status, r.kind) for r in rows] == [("ignored", "wechat:command.help")]


def test_ordinary_text_starting_with_a_slash_is_forwarded(chat):
    say = chat()
    assert say("/::) 好的") == "已转发到邮箱 ✓"
    assert say("/etc/hosts 改好了") == "已转发到邮箱 ✓"


def test_strangers_cannot_run_commands(chat, httpserver):
    say = chat(ALERTMANAGER_URL=httpserver.url_for(""))
    assert "没有转发" in say("/alerts", sender="oStranger")
    assert httpserver.log == []


def test_status_counts_the_outbox(chat, smtp_server, cafile):
    smtp_server.failures = ["550 5.1.1 mailbox unavailable"]      # the first mail dies
    say = chat(**smtp_server.env(cafile))
    services = say.app.extensions["bridge"]
    say("first message")
    say("second message")
    services.start_sender()
    deadline = time.monotonic() + 10
    while services.outbox.counts().get("sent", 0) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    services.sender.stop(timeout=5)
    text = say("/status")
    assert "pending: 0" in text and "sent today: 1" in text and "dead: 1" in text
    assert "mailbox unavailable" in text
    say("third")
    assert "pending: 1" in say("/status")


def test_a_retried_command_runs_once(chat, httpserver):
    httpserver.expect_request("/api/v2/silences", method="POST").respond_with_json({"silenceID": "sil-1"})
    say = chat(ALERTMANAGER_URL=httpserver.url_for("").rstrip("/"))
    client = say.app.test_client()
    body = message("/silence DiskFull 2h", sender=BOSS, msg_id=99)
    first, again = (reply_text(post(client, body)) for _ in range(2))
    assert "sil-1" in first and "已经执行过" in again
    assert len(httpserver.log) == 1


def test_alerts(chat, httpserver):
    firing = [{"labels": {"alertname": f"A{n}", "severity": "critical", "instance": f"web-{n}"}} for n in range(10)]
    httpserver.expect_request("/api/v2/alerts", query_string="active=true&silenced=false&inhibited=false") \
        .respond_with_json(firing)
    say = chat(ALERTMANAGER_URL=httpserver.url_for(""))
    text = say("/alerts")
    assert "10" in text and "A0 [critical] web-0" in text and "A7" in text and "A8" not in text
    assert "还有 2 条" in text and len(text) < 600


def test_no_alerts(chat, httpserver):
    httpserver.expect_request("/api/v2/alerts").respond_with_json([])
    assert "no firing alerts" in chat(ALERTMANAGER_URL=httpserver.url_for(""))("/alerts")


def test_silence_posts_what_alertmanager_wants(chat, httpserver):
    httpserver.expect_request("/api/v2/silences", method="POST").respond_with_json({"silenceID": "4f2c-1"})
    say = chat(ALERTMANAGER_URL=httpserver.url_for(""))
    text = say("/silence DiskFull instance=web-1 90m 换盘中", "aes")
    assert "4f2c-1" in text and "/unsilence 4f2c-1" in text and "instance=web-1" in text
    (request, _), = httpserver.log
    doc = json.loads(request.data)
    assert doc["createdBy"] == "王老板" and doc["comment"] == "换盘中"
    assert doc["matchers"][0] == {"name": "alertname", "value": "DiskFull", "isRegex": False, "isEqual": True}
    span = datetime.fromisoformat(doc["endsAt"]) - datetime.fromisoformat(doc["startsAt"])
    assert span.total_seconds() == 90 * 60


def test_silence_refused_and_misspelt(chat, httpserver):
    httpserver.expect_request("/api/v2/silences", method="POST").respond_with_data(
        "bad matcher", status=400)
    say = chat(ALERTMANAGER_URL=httpserver.url_for(""))
    assert "refused" in say("/silence x=~( 1h") and "bad matcher" in say("/silence x=~( 2h")
    assert "usage" in say("/silence DiskFull")
    assert "usage" in say("/unsilence")


def test_unsilence(chat, httpserver):
    httpserver.expect_request("/api/v2/silence/0a1b2c3d-0000-4000-8000-000000000000", method="DELETE") \
        .respond_with_data("")
    # what the real Alertmanager answers for an unknown id
    httpserver.expect_request("/api/v2/silence/0a1b2c3d-ffff-4000-8000-000000000000", method="DELETE") \
        .respond_with_data('"silence not found"', status=500)
    say = chat(ALERTMANAGER_URL=httpserver.url_for(""))
    assert "0a1b2c3d" in say("/unsilence 0a1b2c3d-0000-4000-8000-000000000000")
    assert "no silence" in say("/unsilence 0a1b2c3d-ffff-4000-8000-000000000000")


def test_alertmanager_not_configured(chat):
    assert "ALERTMANAGER_URL" in chat()("/alerts")


def test_alertmanager_down_is_a_clear_answer(chat):
    say = chat(ALERTMANAGER_URL=f"http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    text = say("/alerts")
    assert "not reachable" in text and time.monotonic() - started < 2


def test_alertmanager_that_hangs_still_gets_a_reply_within_5_s(chat, httpserver):
    release = threading.Event()

    def hang(request):
        release.wait(10)
        return Response("[]", content_type="application/json")

    httpserver.expect_request("/api/v2/alerts").respond_with_handler(hang)
    say = chat(ALERTMANAGER_URL=httpserver.url_for(""), ALERTMANAGER_TIMEOUT="10")
    started = time.monotonic()
    try:
        text = say("/alerts")
    finally:
        release.set()       # free the (shared, one-request-at-a-time) test server
    elapsed = time.monotonic() - started
    assert "not reachable" in text and 3.0 < elapsed < 4.5


def test_alertmanager_error_page(chat, httpserver):
    httpserver.expect_request("/api/v2/alerts").respond_with_data("oops", status=502)
    assert "HTTP 502" in chat(ALERTMANAGER_URL=httpserver.url_for(""))("/alerts")


@pytest.mark.slow
def test_against_the_real_alertmanager(chat, alertmanager):  # noqa: F811
    am = alertmanager()
    am.fire({"alertname": "DiskFull", "severity": "critical", "instance": "db-1"})
    am.fire({"alertname": "HighLoad", "severity": "warning", "instance": "web-2"})
    say = chat(ALERTMANAGER_URL=am.url)
    listed = say("/alerts")
    assert "DiskFull [critical] db-1" in listed and "HighLoad" in listed
    text = say("/silence DiskFull instance=db-1 2h 换盘")
    silence_id = text.split("id: ")[1].split()[0]
    (silence,) = am.silences()
    assert silence["id"] == silence_id and silence["createdBy"] == "王老板"
    assert silence["status"]["state"] == "active" and silence["comment"] == "换盘"
    deadline = time.monotonic() + 5
    while "DiskFull" in say("/alerts") and time.monotonic() < deadline:
        time.sleep(0.2)
    after = say("/alerts")
    assert "DiskFull" not in after and "HighLoad" in after
    assert "silence expired" in say(f"/unsilence {silence_id}")
    assert am.silences()[0]["status"]["state"] == "expired"
    assert "no silence" in say("/unsilence 0a1b2c3d-ffff-4000-8000-000000000000")
