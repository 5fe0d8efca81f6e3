"""A real Alertmanager → a live bridge over HTTP (bearer token) → a real TLS+AUTH SMTP server.

Alerts are fired and resolved through Alertmanager's API v2; the firing and resolved mails of
each group must arrive, and each resolved mail must be in its group's thread and no other.
"""
import time

import pytest

from tests.amserver import alertmanager  # noqa: F401  (fixture)
from tests.util import wait_until

TOKEN = "e2e-bearer-Tok3n"



def alert(name: str, instance: str, severity: str, summary: str) -> dict:
    return {"labels": {"alertname": name, "instance": instance, "severity": severity, "env": "prod"},
            "annotations": {"summary": summary, "description": f"{summary}（描述）",
                            "runbook_url": f"https://runbooks.example.com/{name.lower()}"},
            "generatorURL": "http://prometheus.example.com/graph?g0.expr=up"}


@pytest.mark.slow
def test_real_alertmanager_fires_and_resolves_threaded(alertmanager, live_bridge, smtp_server, cafile):  # noqa: F811
    started = time.monotonic()
    base, _ = live_bridge(**smtp_server.env(cafile), ALERTMANAGER_TOKEN=TOKEN, BRIDGE_TIMEZONE="Asia/Shanghai")
    am = alertmanager(webhook_url=f"{base}/hooks/alertmanager", bearer=TOKEN)
    cpu = [alert("HighCPUUsage", f"node-{i}:9100", "warning", f"CPU 使用率过高 node-{i}") for i in (1, 2)]
    down = [alert("InstanceDown", "node-3:9100", "critical", "Instance node-3 down")]

    posted = []
    for a in cpu + down:
        posted.append(am.fire(a["labels"], a["annotations"], a["generatorURL"]))
    firing = smtp_server.wait_for(2, timeout=20)
    assert len(firing) == 2, am.log_tail()

    am.resolve(posted)
    mails = smtp_server.wait_for(4, timeout=20)
    assert len(mails) == 4, am.log_tail()
    elapsed = time.monotonic() - started
    print(f"\nreal Alertmanager end-to-end: {elapsed:.1f} s")

    assert wait_until(lambda: am.delivered()[0] >= 4, 5)
    assert am.delivered()[1] == 0, "every webhook attempt should have been answered 2xx"
    by_subject = {m["Subject"]: m for m in mails}
    assert set(by_subject) == {
        "[FIRING:2] HighCPUUsage (prod warning)",
        "[FIRING:1] InstanceDown (prod node-3:9100 critical)",
        "[RESOLVED] HighCPUUsage (prod warning)",
        "[RESOLVED] InstanceDown (prod node-3:9100 critical)",
    }
    for group in ("HighCPUUsage", "InstanceDown"):
        fired = next(m for s, m in by_subject.items() if s.startswith("[FIRING") and group in s)
        resolved = next(m for s, m in by_subject.items() if s.startswith("[RESOLVED") and group in s)
        assert fired["In-Reply-To"] and resolved["In-Reply-To"] == fired["In-Reply-To"]
        assert resolved["References"] == fired["References"]
        assert resolved["Message-ID"] != fired["Message-ID"]
    roots = {m["In-Reply-To"] for m in mails}
    assert len(roots) == 2, "each group has its own thread"

    cpu_text = by_subject["[FIRING:2] HighCPUUsage (prod warning)"].get_body(("plain",)).get_content()
    assert "CPU 使用率过高 node-1" in cpu_text and "CPU 使用率过高 node-2（描述）" in cpu_text
    assert "(Asia/Shanghai)" in cpu_text and "CST" in cpu_text
    assert f"{am.url}/#/silences/new?filter=" in cpu_text
    resolved_text = by_subject["[RESOLVED] InstanceDown (prod node-3:9100 critical)"].get_body(("plain",)).get_content()
    assert "RESOLVED: 1 alert resolved for InstanceDown" in resolved_text and "lasted" in resolved_text


@pytest.mark.slow
def test_helper_without_receiver_serves_the_api(alertmanager):  # noqa: F811
    """The chat-command tests use the helper this way: an Alertmanager to query, no webhook."""
    am = alertmanager()
    assert am.alerts() == [] and am.silences() == []
    sent = am.fire({"alertname": "DiskFull", "instance": "db-1"}, {"summary": "磁盘满了"})
    (listed,) = am.alerts()
    assert listed["labels"] == sent["labels"] and listed["annotations"]["summary"] == "磁盘满了"
    am.resolve([sent])
    assert wait_until(lambda: am.alerts(active="true") == [], 5)
