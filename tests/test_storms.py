"""Storms against provider limits, on a real SMTP server that limits the account
(tests/limited_smtpd.py): the bridge learns the limit from the answers, pauses, paces, digests,
and delivers every event without a dead row."""
import email.policy
import re

import pytest

from bridge.outbox import DEAD, DIGESTED, SENT, WAITING
from tests.limited_smtpd import LimitedServer
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
    state = svc.pacer.state()
    assert state.learned == "15/3s" and state.refusals == server.refused_rate
