"""POST /hooks/alertmanager: parse (sans-I/O, synthetic payloads), credentials, answers over
the Flask test client, and the rendered mail."""
import base64
import datetime as dt
import json
import re
import time

import pytest
import sqlalchemy as sa

from bridge.render import Renderer
from bridge.settings import EnvReader, SettingsError
from bridge.sources import alertmanager as am
from bridge.events import Rejected

TOKEN = "am-Secret-t0ken"
NOW = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.timezone.utc)
JSON = {"Content-Type": "application/json"}


# -- synthetic payloads, shaped like Alertmanager 0.25's (see ../shared/corpus/alertmanager/README.md)

def make_alert(name="HighCPUUsage", instance="node-1:9100", status="firing", severity="warning",
               starts="2026-03-01T11:30:00Z", ends=None, fingerprint=None, **annotations):
    labels = {"alertname": name, "instance": instance, "job": "node", "env": "prod"}
    if severity:
        labels["severity"] = severity
    annotations = annotations or {"summary": f"{name} on {instance}", "description": "details"}
    return {"status": status, "labels": labels, "annotations": annotations, "startsAt": starts,
            "endsAt": ends or ("2026-03-01T11:45:00Z" if status == "resolved" else "0001-01-01T00:00:00Z"),
            "generatorURL": "http://prom:9090/graph?g0.expr=up",
            "fingerprint": fingerprint or f"{abs(hash((name, instance))) % 16**16:016x}"}


def common_of(label_sets):
    first, *rest = label_sets
    return {k: v for k, v in first.items() if all(other.get(k) == v for other in rest)}


def notification(alerts, group_by=("alertname",), receiver="bridge", **extra):
    common = common_of([a["labels"] for a in alerts])
    group = {k: common[k] for k in group_by if k in common}
    doc = {"receiver": receiver,
           "status": "firing" if any(a["status"] == "firing" for a in alerts) else "resolved",
           "alerts": alerts, "groupLabels": group, "commonLabels": common,
           "commonAnnotations": common_of([a["annotations"] for a in alerts]),
           "externalURL": "http://am.example.com:9093", "version": "4",
           "groupKey": "{}:{" + ",".join(f'{k}="{v}"' for k, v in group.items()) + "}",
           "truncatedAlerts": 0}
    doc.update(extra)
    return doc


def body_of(doc):
    return json.dumps(doc, ensure_ascii=False).encode("utf-8") + b"\n"


def config(**env):
    return am.load_config(EnvReader(env))


def parse(doc, **env):
    (event,) = am.parse(JSON, body_of(doc), config(**env), now=NOW)
    return event


def render(doc, **env):
    return Renderer().render(parse(doc, **env))


# -- subject: Alertmanager's default __subject

def test_subject_is_alertmanagers_default():
    doc = notification([make_alert(instance="a:1"), make_alert(instance="b:1")])
    assert render(doc).subject == "[FIRING:2] HighCPUUsage (prod node warning)"
    resolved = notification([make_alert(instance="a:1", status="resolved")])
    assert render(resolved).subject == "[RESOLVED] HighCPUUsage (prod a:1 node warning)"


def test_subject_counts_firing_alerts_only_and_copes_without_group_labels():
    doc = notification([make_alert(instance="a:1"), make_alert(instance="b:1", status="resolved")],
                       group_by=())
    assert render(doc).subject == "[FIRING:1] (HighCPUUsage prod node warning)"


# -- body

def test_body_summary_first_then_each_alert_with_local_times_and_links():
    doc = notification([make_alert(summary="CPU 过高", description="第一行\n第二行",
                                   runbook_url="https://runbooks.example.com/cpu", team_url="x")])
    rendered = render(doc, BRIDGE_TIMEZONE="Asia/Shanghai")
    lines = rendered.text.splitlines()
    assert lines[0] == "CPU 过高"
    assert lines[1] == "FIRING: 1 alert firing for HighCPUUsage (warning)"
    text = rendered.text
    assert "   第一行\n   第二行" in text
    assert "Started 2026-03-01 19:30:00 CST, firing for 30m" in text
    assert "As of:    2026-03-01 20:00:00 CST (Asia/Shanghai)" in text
    assert "Runbook:  https://runbooks.example.com/cpu" in text
    assert "Source:   http://prom:9090/graph?g0.expr=up" in text
    assert "team_url: x" in text
    assert "View in Alertmanager: http://am.example.com:9093/#/alerts?receiver=bridge" in text
    silence = re.search(r"Silence:  (\S+)", text).group(1)
    assert silence.startswith("http://am.example.com:9093/#/silences/new?filter=")
    assert "%7Balertname%3D%22HighCPUUsage%22%2Cenv%3D%22prod%22%2Cinstance%3D%22node-1%3A9100%22" in silence
    for part in ("CPU 过高", "第二行", "19:30:00", "firing for 30m", "https://runbooks.example.com/cpu"):
        assert part in rendered.html


def test_mixed_group_says_which_alerts_fire_and_which_resolved():
    doc = notification([make_alert(instance="a:1", status="resolved", starts="2026-03-01T10:00:00Z",
                                   ends="2026-03-01T11:15:30Z"),
                        make_alert(instance="b:1")])
    text = render(doc).text
    firing, resolved = text.index("== Firing (1) =="), text.index("== Resolved (1) ==")
    assert firing < text.index("] HighCPUUsage on b:1") < resolved < text.index("] HighCPUUsage on a:1")
    assert "[RESOLVED, warning] HighCPUUsage on a:1" in text
    assert "resolved 2026-03-01 11:15:30 UTC, lasted 1h 15m" in text
    assert "FIRING: 1 alert firing, 1 resolved for HighCPUUsage" in text
    # a resolved alert needs no silence link
    assert text.count("Silence:") == 1


def test_common_labels_once_per_alert_only_its_own_and_hidden_globs_left_out():
    alerts = [make_alert(instance=f"n{i}:1") for i in range(2)]
    for a in alerts:
        a["labels"].update(pod="web-1", __meta="x", prometheus_replica="r1")
    text = render(notification(alerts), ALERTMANAGER_HIDE_LABELS="prometheus_*, pod,__*").text
    assert "Common:   env=prod job=node severity=warning" in text
    assert "Labels:   instance=n0:1\n" in text
    for hidden in ("pod=", "__meta", "prometheus_replica=r1"):
        assert hidden not in text.split("Silence:")[0]
    # a silence must still match the alert exactly, hidden labels included
    assert "prometheus_replica%3D%22r1%22" in text


def test_long_group_lists_the_most_severe_and_says_how_many_more():
    alerts = [make_alert(instance=f"n{i:03}:1", severity="info") for i in range(200)]
    alerts[150]["labels"]["severity"] = "critical"
    text = render(notification(alerts), ALERTMANAGER_MAX_ALERTS="5").text
    assert text.count("[FIRING, ") == 5
    assert text.index("[FIRING, critical] HighCPUUsage on n150:1") < text.index("[FIRING, info]")
    assert "… and 195 more firing alerts not listed here (ALERTMANAGER_MAX_ALERTS=5)" in text


def test_truncated_alerts_are_reported():
    doc = notification([make_alert()], truncatedAlerts=7)
    rendered = render(doc)
    assert "Alertmanager left 7 more alerts of this group out of the notification" in rendered.text
    assert "left 7 more alerts" in rendered.html


def test_hostile_text_is_escaped_in_html_and_unsafe_links_are_not_links():
    a = make_alert(summary="<script>alert(1)</script>", runbook_url="javascript:alert(1)")
    a["labels"]["team"] = '<b onmouseover="x">'
    a["generatorURL"] = "javascript:alert(2)"
    html = render(notification([a])).html
    assert "<script>" not in html and "<b onmouseover" not in html
    assert "&lt;script&gt;" in html and "&lt;b onmouseover=" in html
    assert 'href="javascript:' not in html
    assert "Runbook: javascript:alert(1)" in html  # shown as text, not as a link


def test_missing_optional_fields_still_render():
    a = {"status": "firing", "labels": {"alertname": "Watchdog"}}
    doc = {"status": "firing", "alerts": [a], "version": "4"}
    rendered = render(doc)
    assert rendered.subject == "[FIRING:1] (Watchdog)"
    assert "Started (unknown)" in rendered.text and "Silence" not in rendered.text


@pytest.mark.parametrize("seconds, text", [
    (0, "0s"), (42, "42s"), (60, "1m"), (303, "5m 3s"), (3600, "1h"), (11040, "3h 4m"),
    (183600, "2d 3h"), (86400 * 3 + 5, "3d"), (-5, "0s"),
])
def test_duration_text(seconds, text):
    assert am.duration_text(seconds) == text


# -- identity

def test_dedup_key_is_the_notification_not_its_wrapping():
    doc = notification([make_alert()])
    same = dict(doc, notification_reason="repeat interval elapsed", routeLabels={"x": "y"})
    assert parse(doc).dedup_key == parse(same).dedup_key
    resolved = notification([make_alert(status="resolved")])
    more = notification([make_alert(), make_alert(instance="n2:1")])
    restarted = notification([make_alert(starts="2026-03-01T11:50:00Z")])
    keys = {parse(d).dedup_key for d in (doc, resolved, more, restarted)}
    assert len(keys) == 4


def test_one_thread_per_group_across_firing_and_resolved():
    firing, resolved = parse(notification([make_alert()])), parse(notification([make_alert(status="resolved")]))
    other = parse(notification([make_alert(name="DiskFull")]))
    assert firing.thread_key == resolved.thread_key != other.thread_key
    assert not firing.thread_root and not resolved.thread_root
    assert firing.dedup_window == 600.0


# -- malformed input: 400 with a one-line reason

@pytest.mark.parametrize("body, reason", [
    (b"not json", "not valid JSON"),
    (b"[1]", "JSON object"),
    (b'{"status": "firing", "alerts": []}', 'payload version'),
    (b'{"version": 4, "status": "firing", "alerts": [{}]}', "version '4' is not \"4\""),
    (b'{"version": "3", "status": "firing", "alerts": [{}]}', "version '3'"),
    (b'{"version": "4", "status": "burning", "alerts": [{}]}', "status must be"),
    (b'{"version": "4", "status": "firing", "alerts": []}', "non-empty list"),
    (b'{"version": "4", "status": "firing", "alerts": {"a": 1}}', "non-empty list"),
    (b'{"version": "4", "status": "firing", "alerts": ["x"]}', "alerts[0] must be an object"),
    (b'{"version": "4", "status": "firing", "alerts": [{"status": "x"}]}', "alerts[0].status"),
    (b'{"version": "4", "status": "firing", "alerts": [{"status": "firing", "labels": {"a\\nb": 1}}]}',
     "alerts[0].labels['a\\nb'] must be a string"),
    (b'{"version": "4", "status": "firing", "alerts": [{"status": "firing", "startsAt": "yesterday"}]}',
     "startsAt is not an RFC 3339 time"),
    (b'{"version": "4", "status": "firing", "alerts": [{"status": "firing", "generatorURL": 5}]}',
     "generatorURL must be a string"),
    (b'{"version": "4", "status": "firing", "alerts": [{"status": "firing"}], "commonLabels": []}',
     "commonLabels must be an object"),
    (b'{"version": "4", "status": "firing", "alerts": [{"status": "firing"}], "truncatedAlerts": -1}',
     "truncatedAlerts"),
    (b'\xff\xfe', "not valid JSON"),
])
def test_malformed_is_rejected_with_a_reason(body, reason):
    with pytest.raises(Rejected) as exc:
        am.parse(JSON, body, config(), now=NOW)
    assert exc.value.status == 400
    assert reason in exc.value.reason and "\n" not in exc.value.reason


def test_wrong_content_type_is_415():
    with pytest.raises(Rejected) as exc:
        am.parse({"Content-Type": "text/plain"}, body_of(notification([make_alert()])), config())
    assert exc.value.status == 415


# -- settings

def test_settings_defaults_and_errors():
    cfg = config()
    assert (cfg.token, cfg.hide_labels, cfg.dedup_window, cfg.max_alerts, cfg.timezone.key) == \
        ("", (), 600.0, 20, "UTC")
    assert TOKEN not in repr(config(ALERTMANAGER_TOKEN=TOKEN))
    for env, name in [({"ALERTMANAGER_MAX_ALERTS": "0"}, "ALERTMANAGER_MAX_ALERTS"),
                      ({"ALERTMANAGER_DEDUP_WINDOW": "soon"}, "ALERTMANAGER_DEDUP_WINDOW"),
                      ({"BRIDGE_TIMEZONE": "Mars/Olympus"}, "BRIDGE_TIMEZONE")]:
        with pytest.raises(SettingsError, match=name):
            config(**env)


# -- credentials

def basic(user, password):
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize("authorization, ok", [
    (f"Bearer {TOKEN}", True),
    (f"bearer {TOKEN}", True),
    (basic("alertmanager", TOKEN), True),
    (basic("anyone", TOKEN), True),
    (f"Bearer {TOKEN}x", False),
    (f"Bearer {TOKEN[:-1]}", False),
    (basic("alertmanager", "wrong"), False),
    (basic(TOKEN, ""), False),
    ("Basic !!!not-base64", False),
    (f"Token {TOKEN}", False),
    ("", False),
])
def test_verify_bearer_or_basic_password(authorization, ok):
    headers = {"Authorization": authorization} if authorization else {}
    if ok:
        am.verify(headers, b"", config(ALERTMANAGER_TOKEN=TOKEN))
    else:
        with pytest.raises(Rejected) as exc:
            am.verify(headers, b"", config(ALERTMANAGER_TOKEN=TOKEN))
        assert exc.value.status == 401 and TOKEN not in exc.value.reason


def test_no_token_configured_takes_anyone():
    am.verify({}, b"", config())


# -- over HTTP (Flask test client)

def post(client, doc, token=TOKEN, path="/hooks/alertmanager", data=None):
    headers = dict(JSON, Authorization=f"Bearer {token}") if token else dict(JSON)
    return client.post(path, data=data if data is not None else body_of(doc), headers=headers)


def rows(app):
    return app.extensions["bridge"].outbox.recent(limit=500)


@pytest.fixture
def am_app(make_app):
    return make_app(ALERTMANAGER_TOKEN=TOKEN)


def test_accepted_then_duplicate_within_the_window(am_app):
    client = am_app.test_client()
    doc = notification([make_alert()])
    first, again = post(client, doc), post(client, doc)
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json["status"] == "duplicate" and again.json["id"] == first.json["id"]
    assert len(rows(am_app)) == 1


def test_repeat_after_the_window_is_mailed_with_its_own_message_id(make_app):
    app = make_app(ALERTMANAGER_TOKEN=TOKEN, ALERTMANAGER_DEDUP_WINDOW="0.2")
    client = app.test_client()
    doc = notification([make_alert()])
    assert post(client, doc).status_code == 202
    time.sleep(0.3)
    assert post(client, doc).status_code == 202
    reminder, original = rows(app)
    assert reminder.message_id != original.message_id
    assert reminder.in_reply_to == original.in_reply_to


def test_firing_and_resolved_mails_share_the_group_thread(am_app):
    client = am_app.test_client()
    post(client, notification([make_alert()]))
    post(client, notification([make_alert(status="resolved")]))
    post(client, notification([make_alert(name="Other")]))
    other, resolved, firing = rows(am_app)
    assert firing.subject.startswith("[FIRING:1]") and resolved.subject.startswith("[RESOLVED]")
    assert firing.in_reply_to and resolved.in_reply_to == firing.in_reply_to != other.in_reply_to
    assert len({firing.message_id, resolved.message_id, other.message_id, firing.in_reply_to}) == 4


def test_wrong_or_missing_token_is_401_and_no_mail(am_app):
    client = am_app.test_client()
    doc = notification([make_alert()])
    assert post(client, doc, token="nope").status_code == 401
    assert post(client, doc, token=None).status_code == 401
    r = client.post("/hooks/alertmanager", data=body_of(doc),
                    headers=dict(JSON, Authorization=basic("alertmanager", TOKEN)))
    assert r.status_code == 202
    assert len(rows(am_app)) == 1


def test_route_and_bad_input_answers(make_app):
    app = make_app(ALERTMANAGER_TOKEN=TOKEN, MAIL_TO_OPS="ops@example.com")
    client = app.test_client()
    assert post(client, notification([make_alert()]), path="/hooks/alertmanager/Ops").status_code == 202
    assert rows(app)[0].mail_to == "ops@example.com"
    assert post(client, notification([make_alert()]), path="/hooks/alertmanager/nobody").status_code == 404
    r = post(client, None, data=b'{"version": "2", "status": "firing", "alerts": [{}]}')
    assert r.status_code == 400 and "version" in r.json["reason"]
    assert post(client, None, data=b"x" * (am.MAX_BODY + 1)).status_code == 413
    assert len(rows(app)) == 1


def test_database_away_is_503(am_app):
    am_app.extensions["bridge"].outbox.engine.dispose()
    am_app.extensions["bridge"].outbox.engine = sa.create_engine("sqlite:////nonexistent/dir/x.db")
    r = post(am_app.test_client(), notification([make_alert()]))
    assert r.status_code == 503


def test_a_kilobyte_label_value_does_not_make_a_kilobyte_subject():
    a = make_alert()
    a["labels"]["query"] = "x" * 5000
    subject = render(notification([a])).subject
    assert len(subject) == 300 and subject.startswith("[FIRING:1] HighCPUUsage (") and subject.endswith("…")


def test_without_a_common_summary_the_most_severe_alert_leads():
    doc = notification([make_alert(instance="a:1", severity="info", summary="minor thing"),
                        make_alert(instance="b:1", severity="critical", summary="big thing")])
    rendered = render(doc)
    assert rendered.text.splitlines()[:2] == ["big thing (and 1 more)", "FIRING: 2 alerts firing for HighCPUUsage"]
    assert "big thing (and 1 more)" in rendered.html
