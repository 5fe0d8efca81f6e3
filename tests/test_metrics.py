"""GET /metrics: request and mail counters, the send histogram, outbox gauges read at scrape
time; and the sums under gunicorn with two workers plus a separate worker process."""
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from bridge import metrics
from tests.smtpd import free_port
from tests.test_ops import deliver, post

ROOT = Path(__file__).resolve().parent.parent


def samples(text: str) -> dict[tuple, float]:
    """{(sample name, sorted labels): value} from the exposition text."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def scrape(client) -> dict[tuple, float]:
    r = client.get("/metrics")
    assert r.status_code == 200 and r.mimetype == "text/plain"
    return samples(r.get_data(as_text=True))


def value(seen, name, **labels) -> float:
    return seen.get((name, tuple(sorted(labels.items()))), 0.0)


def grew(before, after, name, **labels) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def test_requests_by_source_and_outcome(client):
    before = scrape(client)
    post(client, "one", key="m-1")
    post(client, "one again", key="m-1")
    client.post("/hooks/generic", data=b"{", headers={"Content-Type": "application/json"})
    client.post("/hooks/generic", data=b"x", headers={"Content-Type": "text/plain"})
    client.post("/hooks/no-such-source", json={})
    after = scrape(client)
    total = "bridge_requests_total"
    assert grew(before, after, total, source="generic", outcome="accepted", code="202") == 1
    assert grew(before, after, total, source="generic", outcome="duplicate", code="200") == 1
    assert grew(before, after, total, source="generic", outcome="rejected", code="400") == 1
    assert grew(before, after, total, source="generic", outcome="rejected", code="415") == 1
    # A made-up source name never becomes a label: it would let anyone grow the series.
    assert not any("no-such-source" in str(key) for key in after)


def test_sent_and_send_duration(app, client):
    before = scrape(client)
    post(client, "goes out")
    deliver(app)
    after = scrape(client)
    assert grew(before, after, "bridge_mails_sent_total") == 1
    assert grew(before, after, "bridge_send_duration_seconds_count", outcome="sent") == 1
    assert grew(before, after, "bridge_send_duration_seconds_bucket", outcome="sent", le="+Inf") == 1


def test_failures_by_reason(make_app, smtp_server, cafile):
    app = make_app(**{**smtp_server.env(cafile), "SMTP_PASSWORD": "wrong"})
    client = app.test_client()
    before = scrape(client)
    post(client, "refused login")
    deliver(app)
    after = scrape(client)
    assert grew(before, after, "bridge_mails_failed_total", reason="smtp_535", status="retrying") == 1
    assert grew(before, after, "bridge_send_duration_seconds_count", outcome="failed") == 1

    rejecting = make_app(**smtp_server.env(cafile))
    smtp_server.failures.append("550 5.1.1 mailbox unavailable")
    post(rejecting.test_client(), "bounced")
    deliver(rejecting)
    last = scrape(client)
    assert grew(after, last, "bridge_mails_failed_total", reason="smtp_550", status="dead") == 1


def test_outbox_depth_and_oldest_age_come_from_the_database(app, client):
    post(client, "waiting 1")
    post(client, "waiting 2")
    time.sleep(0.2)
    seen = scrape(client)
    assert value(seen, "bridge_database_up") == 1
    assert value(seen, "bridge_outbox_rows", status="queued") == 2
    assert value(seen, "bridge_outbox_rows", status="dead") == 0
    assert value(seen, "bridge_outbox_oldest_queued_age_seconds") >= 0.2
    deliver(app)
    seen = scrape(client)
    assert value(seen, "bridge_outbox_rows", status="sent") == 2
    assert value(seen, "bridge_outbox_oldest_queued_age_seconds") == 0


def test_database_away_is_a_gauge_not_an_error(app, client):
    outbox = app.extensions["bridge"].outbox
    outbox.engine = sa.create_engine(f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/none",
                                     connect_args={"connect_timeout": 2})
    seen = scrape(client)
    assert value(seen, "bridge_database_up") == 0
    assert not any(name == "bridge_outbox_rows" for name, _ in seen)


def test_failure_reason_labels_stay_few():
    import smtplib
    from bridge.mail.smtp import ConnectFailed
    assert metrics.failure_reason(ConnectFailed(smtplib.SMTPAuthenticationError(535, b"no"))) == "smtp_535"
    assert metrics.failure_reason(smtplib.SMTPRecipientsRefused({})) == "SMTPRecipientsRefused"
    assert metrics.failure_reason(ConnectFailed(ConnectionRefusedError(111, "refused"))) == \
        "ConnectionRefusedError"


# -- several processes
def procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if ": " in line)


def start(command: str, env: dict) -> subprocess.Popen:
    """A Procfile command the way Heroku runs it: bash -c, from the app's root."""
    return subprocess.Popen(["bash", "-c", command], cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_until(check, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return True
        except requests.RequestException:
            pass
        time.sleep(0.1)
    return False


@pytest.mark.slow
def test_counts_add_up_across_gunicorn_workers_and_the_worker_process(tmp_path):
    port = free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "PORT": str(port), "WEB_CONCURRENCY": "2", "SEND_IN_WEB": "false",
           "DATABASE_URL": f"sqlite:///{tmp_path / 'bridge.db'}", "MAIL_DIR": str(tmp_path / "mail"),
           "MAIL_TO": "team@example.com", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
           "SENDER_POLL_SECONDS": "0.1"}
    env.pop("ADMIN_TOKEN", None)
    processes = [start(procfile()["web"], env), start(procfile()["worker"], env)]
    base = f"http://127.0.0.1:{port}"
    try:
        assert wait_until(lambda: requests.get(f"{base}/healthz", timeout=2).ok), "web did not start"
        n, codes = 20, []

        def send(i):
            r = requests.post(f"{base}/hooks/generic", json={"subject": f"m{i}", "text": "t"}, timeout=10)
            codes.append(r.status_code)
        threads = [threading.Thread(target=send, args=(i,)) for i in range(n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        accepted = codes.count(202)
        assert accepted >= 1 and len(codes) == n

        def seen():
            return samples(requests.get(f"{base}/metrics", timeout=5).text)
        assert wait_until(lambda: value(seen(), "bridge_outbox_rows", status="sent") == accepted)
        # Whichever gunicorn worker answers, it reports everyone's counts, the worker's too.
        for _ in range(6):
            scraped = seen()
            assert sum(v for (name, _), v in scraped.items() if name == "bridge_requests_total") == n
            assert value(scraped, "bridge_requests_total", source="generic", outcome="accepted",
                         code="202") == accepted
            assert value(scraped, "bridge_mails_sent_total") == accepted
        writers = {path.name.rsplit("_", 1)[1] for path in (tmp_path / "metrics").glob("*.db")}
        assert len(writers) >= 2   # the worker process and at least one gunicorn worker
    finally:
        for process in processes:
            os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            process.wait(timeout=30)


def test_alert_rules_use_metrics_that_exist(client):
    import re

    import yaml
    rules = yaml.safe_load((ROOT / "docs" / "alerts.yml").read_text())["groups"][0]["rules"]
    assert {"BridgeMailStuck", "BridgeSmtpFailing"} <= {rule["alert"] for rule in rules}
    exposed = {family.name for family in text_string_to_metric_families(
        client.get("/metrics").get_data(as_text=True))}
    for rule in rules:
        for name in re.findall(r"\bbridge_[a-z_]+", rule["expr"]):
            assert name.removesuffix("_total") in exposed, (rule["alert"], name)
    stuck = next(rule for rule in rules if rule["alert"] == "BridgeMailStuck")
    assert "bridge_outbox_oldest_queued_age_seconds) > 600" in stuck["expr"]


def test_gunicorn_start_forgets_only_processes_that_are_gone(tmp_path, monkeypatch):
    import runpy
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    config = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale, live = tmp_path / f"counter_{gone.pid}.db", tmp_path / f"counter_{os.getpid()}.db"
    stale.write_bytes(b"x")
    live.write_bytes(b"x")
    config["on_starting"](None)
    assert not stale.exists() and live.exists()
