"""flask --app bridge send-test | check-smtp | outbox, through Flask's CLI runner."""
from bridge.mail.smtp import AUTH_HINT
from bridge.outbox import DEAD


def run(app, *args):
    return app.test_cli_runner().invoke(args=list(args))


def test_send_test_delivers_over_tls(make_app, smtp_server, cafile):
    app = make_app(**smtp_server.env(cafile))
    result = run(app, "send-test")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("sent: outbox #1 to team@example.com")
    (msg,) = smtp_server.messages
    assert msg["Subject"].startswith("bridge test mail ✓ ")


def test_send_test_explains_a_refused_login(make_app, smtp_server, cafile):
    app = make_app(**{**smtp_server.env(cafile), "SMTP_PASSWORD": "mailbox-password"})
    result = run(app, "send-test", "--timeout", "5")
    assert result.exit_code == 1
    assert "535" in result.output and AUTH_HINT in result.output
    assert "mailbox-password" not in result.output


def test_check_smtp(make_app, smtp_server, cafile):
    good = run(make_app(**smtp_server.env(cafile)), "check-smtp")
    assert good.exit_code == 0 and good.output.startswith("OK SMTP 127.0.0.1")
    bad = run(make_app(**{**smtp_server.env(cafile), "SMTP_PASSWORD": "nope"}), "check-smtp")
    assert bad.exit_code == 1 and bad.output.startswith("FAIL") and "授权码" in bad.output
    assert smtp_server.messages == []


def test_outbox_list_and_retry_dead(make_app, smtp_server, cafile):
    app = make_app(**smtp_server.env(cafile))
    smtp_server.failures = ["550 no such user"]
    app.test_client().post("/hooks/generic", json={"subject": "bounced once", "text": "t"})
    svc = app.extensions["bridge"]
    transport = svc.make_transport()
    svc.sender.work_once(transport)
    assert svc.outbox.get(1).status == DEAD
    listing = run(app, "outbox", "list")
    assert "dead" in listing.output and "bounced once" in listing.output and "550 no such user" in listing.output
    assert run(app, "outbox", "retry").exit_code != 0          # says what to name
    assert run(app, "outbox", "retry", "--all-dead").output.strip() == "queued again: 1"
    svc.sender.work_once(transport)
    transport.close()
    assert [m["Subject"] for m in smtp_server.messages] == ["bounced once"]
