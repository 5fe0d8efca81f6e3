"""Storms against provider limits, on a real SMTP server that limits the account
(tests/limited_smtpd.py): the bridge learns the limit from the answers, pauses, paces, digests,
and delivers every event without a dead row."""
import json
import re
import threading

import pytest

from bridge.outbox import DEAD, DIGESTED, SENDING, SENT, WAITING
from tests.limited_smtpd import LimitedServer
from tests.procs import start_worker
from tests.util import wait_until

FAST = {"SMTP_COOLDOWN": "3,6,12", "DIGEST_AFTER": "3", "SENDER_POLL_SECONDS": "0.05", "MAIL_TO": "ops@example.com"}


def markers(msg) -> set[str]:
    text = msg["Subject"] + "\n" + msg.get_body(("plain",)).get_content()
    return set(re.findall(r"ev\d{4}", text))


def post_storm(client, n, prefix="ev"):
    for i in range(n):
        r = client.post("/hooks/generic", json={"subject": f"job {prefix}{i:04d} failed",
                                                "text": f"{prefix}{i:04d}\nbuild {i} failed\nhttps://ci.example.com/{i}"})
        assert r.status_code == 202


@pytest.fixture
def limited(ca):
    servers = []

    def make(**kwargs):
        server = LimitedServer(ca, **kwargs).start()
        servers.append(server)
        return server
    yield make
    for server in servers:
        if server.hold is not None:
            server.hold.set()
        server.stop()


def test_storm_learns_the_limit_pauses_and_digests(live_bridge, limited):
    server = limited(rate=(20, 3.0))
    base, app = live_bridge(**server.env(), **FAST)
    svc = app.extensions["bridge"]
    post_storm(app.test_client(), 200)

    def delivered():
        return set().union(*(markers(m) for m in server.messages)) if server.messages else set()
    assert wait_until(lambda: len(delivered()) == 200, 40, step=0.2), (len(delivered()), svc.outbox.counts())
    counts = svc.outbox.counts()
    assert not counts.get(DEAD)
    assert counts.get(DIGESTED, 0) >= 100                    # most of the storm went in digests
    assert len(server.messages) < 80
    assert server.refused_rate <= 4                          # it stopped knocking at once
    digests = [m for m in server.messages if len(markers(m)) >= 2]
    for msg in digests:
        assert f"[bridge] {len(markers(msg))} events from generic: message ×{len(markers(msg))}" == msg["Subject"]
    metrics = app.test_client().get("/metrics").text
    sent_digests = float(re.search(r"^bridge_digests_sent_total (\S+)$", metrics, re.M).group(1))
    assert sent_digests >= len(digests) and "bridge_digest_events_bucket" in metrics
    assert re.search(r'^bridge_smtp_tokens_left\{budget="\d+/3s"\} \d', metrics, re.M)
    state = svc.pacer.state()
    learned = int(state.learned.split("/")[0])
    assert state.learned.endswith("/3s") and 10 <= learned < 20      # under what the server allows
    assert state.refusals == server.refused_rate


def test_a_daily_quota_pauses_until_the_next_day_and_says_so(live_bridge, limited):
    server = limited(quota=5)
    base, app = live_bridge(**server.env(), **FAST, ADMIN_TOKEN="t0ken", BRIDGE_TIMEZONE="Asia/Shanghai")
    svc = app.extensions["bridge"]
    client = app.test_client()
    post_storm(client, 12)
    assert wait_until(lambda: server.refused_quota >= 1, 10)
    wait_until(lambda: False, 2)                               # time to knock again, if it would
    assert len(server.messages) == 5 and server.refused_quota <= 2
    counts = svc.outbox.counts()
    assert sum(counts.get(s, 0) for s in WAITING) == 7 and not counts.get(DEAD), counts
    state = svc.pacer.state()
    assert state.paused and state.kind == "quota" and state.remaining > 3
    metrics = client.get("/metrics").text
    assert 'bridge_smtp_paused{answer="550 5.4.5 Daily user sending quota exceeded",reason="quota"} 1.0' in metrics
    page = client.get("/deliveries", headers={"Authorization": "Bearer t0ken"}).text
    assert re.search(r"The SMTP server 127.0.0.1 limited this account: <code>550 5.4.5 Daily user sending quota "
                     r"exceeded</code>;\s+paused until \d{4}-\d\d-\d\d 00:00 Asia/Shanghai, 7 mails waiting", page) \
        or re.search(r"paused until 00:00 Asia/Shanghai, 7 mails waiting", page), page
    assert re.search(r"events in 12</span>.*mails out 5</span>.*digests 0</span>.*provider refusals [12]</span>",
                     page, re.S)



def test_with_replies_on_a_digest_can_be_answered_like_any_mail(make_app, limited):
    from bridge.inbox import Inbox
    server = limited()
    app = make_app(**server.env(), **FAST, SMTP_RATE="2/min", MAIL_FROM="bridge@example.com",
                   IMAP_URL="imaps://bridge%40example.com:pw@127.0.0.1:1/INBOX", REPLY_TO="replies@example.com")
    svc = app.extensions["bridge"]
    post_storm(app.test_client(), 6)
    assert svc.sender.digester.maybe_combine() == 1
    digest = next(r for r in svc.outbox.recent() if r.digest_of)
    assert json.loads(digest.headers)["Reply-To"] == "replies@example.com"
    assert Inbox(svc).answered([digest.message_id]).id == digest.id     # signed: a reply finds it

def test_digested_event_resends_alone_and_digest_lists_its_events(make_app, limited):
    server = limited()
    app = make_app(**server.env(), **FAST, SMTP_RATE="2/min", ADMIN_TOKEN="t0ken")
    svc = app.extensions["bridge"]
    client = app.test_client()
    post_storm(client, 6)
    assert svc.sender.digester.maybe_combine() == 1
    rows = svc.outbox.recent()
    digest = next(r for r in rows if r.digest_of)
    carried = svc.outbox.carried(digest.id)
    assert [r.status for r in carried] == [DIGESTED] * 6 and all(r.digest_id == digest.id for r in carried)
    auth = {"Authorization": "Bearer t0ken"}
    item = client.get(f"/api/deliveries/{digest.id}", headers=auth).json
    assert item["digest_of"] == [r.id for r in carried] and "6 events from generic" in item["subject"]
    detail = client.get(f"/deliveries/{digest.id}", headers=auth).text
    assert "Events in this digest (6)" in detail and "job ev0005 failed" in detail
    assert client.get("/deliveries?status=digested", headers=auth).text.count("in digest #") == 6
    assert client.post(f"/api/deliveries/{carried[2].id}/resend", headers=auth).status_code == 202
    assert svc.sender.digester.maybe_combine() == 0            # a resent event is never digested again
    svc.sender.work_once(svc.make_transport())
    subjects = sorted(m["Subject"] for m in server.messages)
    assert subjects == ["[bridge] 6 events from generic: message ×6", "job ev0002 failed"]
    text = server.messages[0].get_body(("plain",)).get_content() if server.messages[0]["Subject"].startswith(
        "[bridge]") else server.messages[1].get_body(("plain",)).get_content()
    assert text.index("job ev0000 failed") < text.index("job ev0005 failed")
    assert "https://ci.example.com/3" in text and "build 4 failed" in text


def test_too_many_connections_lowers_the_connections(make_app, limited):
    server = limited()
    app = make_app(**server.env(), **FAST, SMTP_CONNECTIONS="3")
    svc = app.extensions["bridge"]
    post_storm(app.test_client(), 2)
    server.failures = ["421 4.7.0 Too many concurrent connections"]
    svc.sender.work_once(svc.make_transport())
    assert svc.pacer.state().connections == 2 and not svc.pacer.state().paused
    assert svc.pacer.ready(2)[1] == 0 and svc.pacer.ready(1)[0] == 0
    svc.sender.work_once(svc.make_transport())
    assert [r.status for r in svc.outbox.recent()] == [SENT, SENT]


def test_two_workers_on_postgres_keep_one_budget(tmp_path, pg_url, limited, make_app):
    server = limited()
    env = {"DATABASE_URL": pg_url, "MAIL_TO": "ops@example.com", "MAIL_FROM": "bridge@example.com",
           "SEND_IN_WEB": "false", "SMTP_RATE": "4/s", "DIGEST_MAX": "1", "SMTP_CONNECTIONS": "2",
           "SENDER_POLL_SECONDS": "0.05", "LOG_LEVEL": "warning", **server.env()}
    post_storm(make_app(**env).test_client(), 24)
    workers = [start_worker(tmp_path, f"worker{i}", **env) for i in range(2)]
    try:
        assert wait_until(lambda: len(server.messages) == 24, 30, step=0.1), len(server.messages)
    finally:
        for worker in workers:
            worker.kill()
    times = sorted(server.accepted_at)
    # 4 a second between them: any 5 mails in a row span a second (less the time on the wire)
    assert min(b - a for a, b in zip(times, times[4:])) > 0.85, times
    assert times[-1] - times[0] > 4.5 and server.refused_rate == 0


def test_a_digest_survives_a_kill_between_building_and_sending(tmp_path, limited, make_app):
    server = limited()
    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'b.db'}", "MAIL_TO": "ops@example.com",
           "MAIL_FROM": "bridge@example.com", "SEND_IN_WEB": "false", "SMTP_RATE": "3/min",
           "SENDER_LEASE_SECONDS": "2", "SENDER_POLL_SECONDS": "0.05", "SMTP_TIMEOUT": "5", **server.env()}
    app = make_app(**env)
    outbox = app.extensions["bridge"].outbox
    post_storm(app.test_client(), 12)
    server.hold = threading.Event()                            # the digest's DATA never finishes
    worker = start_worker(tmp_path, "doomed", **env)

    def digest_on_the_wire():
        return [r for r in outbox.recent() if r.digest_of and r.status == SENDING]
    assert wait_until(digest_on_the_wire, 20), outbox.counts()
    worker.kill()                                              # SIGKILL: built, stored, not sent
    server.hold.set()
    server.hold = None
    assert outbox.counts() == {DIGESTED: 12, SENDING: 1}
    worker = start_worker(tmp_path, "next", **env)
    try:
        assert wait_until(lambda: outbox.counts() == {DIGESTED: 12, SENT: 1}, 20), outbox.counts()
    finally:
        worker.kill()
    (msg,) = server.messages
    assert markers(msg) == {f"ev{i:04d}" for i in range(12)} and msg["Subject"].startswith("[bridge] 12 events")


def test_a_push_storm_is_digested_into_its_thread(make_app, limited):
    from tests import github_payloads as gh
    server = limited()
    app = make_app(**server.env(), **FAST, SMTP_RATE="2/min", GITHUB_WEBHOOK_SECRET=gh.SECRET)
    svc = app.extensions["bridge"]
    client = app.test_client()
    for n in range(8):
        assert gh.post(client, "push", gh.push(commits=n + 1)).status_code == 202
    for number in (7, 8, 9):
        assert gh.post(client, "issues", gh.issue(number=number, title=f"Widgets wobble #{number}")).status_code == 202
    pushes = [r for r in svc.outbox.recent() if r.kind == "github:push"]
    assert svc.sender.digester.maybe_combine() == 2
    for _ in range(3):
        svc.sender.work_once(svc.make_transport())
    by_subject = {m["Subject"]: m for m in server.messages}
    assert set(by_subject) == {"[bridge] 8 events from github: acme/widgets push ×8",
                               "[bridge] 3 events from github: acme/widgets issues ×3"}
    thread = by_subject["[bridge] 8 events from github: acme/widgets push ×8"]
    assert thread["In-Reply-To"] == pushes[0].in_reply_to and thread["List-Id"].startswith("acme/widgets")
    text = by_subject["[bridge] 3 events from github: acme/widgets issues ×3"].get_body(("plain",)).get_content()
    assert [text.index(f"Widgets wobble #{n}") for n in (7, 8, 9)] == sorted(text.index(f"Widgets wobble #{n}")
                                                                            for n in (7, 8, 9))
    print("\n" + thread["Subject"] + "\n" + thread.get_body(("plain",)).get_content())
