"""The pause and the budget in the database (bridge/pacing.py), seen by two bridges on one
database as two processes would see them."""
import time

import pytest

from bridge.mail.limits import QUOTA, RATE, next_day
from bridge.pacing import Ticket

SMTP = {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": "2525", "SMTP_SECURITY": "none", "SMTP_COOLDOWN": "0.3,0.6,1.2"}


def test_a_pause_stops_every_process_then_one_probe_goes_first(make_app):
    one, other = (make_app(**{**SMTP, "SMTP_COOLDOWN": "1,2"}).extensions["bridge"].pacer for _ in range(2))
    assert one.reserve() == Ticket(None) and one.ready() == (0.0, None)
    assert one.refused(Ticket(None), RATE, "550 Sender frequency limited") == pytest.approx(1.0, abs=0.01)
    wait, limit = other.ready()
    assert 0 < wait <= 1.0 and limit == 0 and isinstance(other.reserve(), float)
    time.sleep(1.05)
    assert other.ready() == (0.0, 1)
    probe = other.reserve()
    assert isinstance(probe, Ticket) and probe.probe
    assert isinstance(one.reserve(), float) and one.ready()[1] == 0   # nobody else while the probe is out
    other.done(probe)
    # full pace again, which is now the pace the refusal taught: 1 per first cool-down step
    assert one.state().learned == "1/s" and not one.state().probing and one.state().refusals == 1
    assert 0 < one.ready()[0] <= 1.0
    time.sleep(1.01)
    assert one.ready() == (0.0, 1) and isinstance(one.reserve(), Ticket)


def test_the_cool_down_grows_while_the_limit_persists(make_app):
    pacer = make_app(**SMTP).extensions["bridge"].pacer
    waits = []
    for _ in range(4):
        waits.append(pacer.refused(Ticket(None), RATE, "550 Sender frequency limited"))
        time.sleep(waits[-1] + 0.02)
    assert [round(w, 1) for w in waits] == [0.3, 0.6, 1.2, 1.2]


def test_a_budget_is_one_budget_for_every_process(make_app):
    one, other = (make_app(**SMTP, SMTP_RATE="3/min").extensions["bridge"].pacer for _ in range(2))
    tickets = [one.reserve(), other.reserve(), one.reserve()]
    assert all(isinstance(t, Ticket) and t.send_id for t in tickets)
    assert 59 < other.reserve() <= 60 and other.ready()[0] > 59
    one.done(tickets[0], went_out=False)                   # never reached the server: token back
    assert isinstance(other.reserve(), Ticket)
    assert other.state().tokens_left == {"3/min": 0} and one.capacity(60) == 3 and one.capacity(30) == 0


def test_a_daily_quota_waits_for_the_providers_midnight(make_app):
    pacer = make_app(SMTP_HOST="smtp.gmail.com", SMTP_USER="me@gmail.com", SMTP_PASSWORD="app-password",
                     SMTP_COOLDOWN="1").extensions["bridge"].pacer
    assert pacer.provider == "Gmail" and pacer.day_zone.key == "America/Los_Angeles"
    wait = pacer.refused(Ticket(None), QUOTA, "550 5.4.5 Daily user sending quota exceeded")
    state = pacer.state()
    assert state.paused and state.kind == "quota"
    assert abs(state.until - max(time.time() + 1, next_day(time.time(), pacer.day_zone))) < 2 and wait > 0
