"""Faults: the mail server gone for a minute, the database gone at intake, the web process
killed right after a 202, a full or read-only disk, a flood of requests."""
import logging
import os
import signal
import subprocess
import sys
import socket
import threading
import time
import json

import pytest
import requests
import sqlalchemy as sa

from bridge.outbox import RETRYING, SENT, Outbox, make_engine
from tests.procs import ROOT, start_web
from tests.smtpd import SmtpServer
from tests.util import wait_until

OUTAGE_SECONDS = float(os.environ.get("FAULT_OUTAGE_SECONDS", "60"))



def test_smtp_down_for_a_minute_mid_stream(live_bridge, ca, cafile):
    smtp = SmtpServer(ca, tls="implicit").start()
    base, app = live_bridge(**smtp.env(cafile), RETRY_BASE_SECONDS="1", RETRY_MAX_SECONDS="8")
    outbox = app.extensions["bridge"].outbox
    posted = 0

    def post():
        nonlocal posted
        r = requests.post(f"{base}/hooks/generic", json={"subject": f"stream {posted}", "text": "t"}, timeout=5)
        assert r.status_code == 202
        posted += 1

    try:
        for _ in range(5):
            post()
        assert wait_until(lambda: len(smtp.messages) == 5, 10)
        smtp.stop()
        outage_end = time.monotonic() + OUTAGE_SECONDS
        while time.monotonic() < outage_end:          # the stream goes on while the server is away
            post()
            time.sleep(1)
        during = outbox.counts()
        smtp.start()
        assert wait_until(lambda: outbox.counts() == {SENT: posted}, 30), outbox.counts()
    finally:
        smtp.stop()
    assert during.get(RETRYING, 0) > 0 and during.get(SENT) == 5
    assert sorted(m["Subject"] for m in smtp.messages) == sorted(f"stream {i}" for i in range(posted))
    # Backoff is visible: the first row of the outage was tried with growing gaps.
    first_failed = next(r for r in outbox.recent(limit=posted) if r.subject == "stream 5")
    times = [a.at for a in outbox.attempts_of(first_failed.id)]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert len(times) >= 4 and gaps[2] > gaps[0]


class Proxy:
    """A TCP proxy to PostgreSQL that can cut every connection: the database 'goes away'."""

    def __init__(self, target_port: int):
        self.target = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.up = True
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            client, _ = self.listener.accept()
            if not self.up:
                client.close()
                continue
            server = socket.create_connection(("127.0.0.1", self.target))
            self.conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src, dst):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self):
        self.up = False
        for s in self.conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.conns = []

    def restore(self):
        self.up = True


def test_database_unreachable_at_intake_is_503_and_nothing_half_stored(make_app, postgres_url):
    pg_port = int(postgres_url.rsplit(":", 1)[1].split("/")[0])
    proxy = Proxy(pg_port)
    url = postgres_url.replace(f":{pg_port}/", f":{proxy.port}/")
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE IF EXISTS outbox, attempts"))
    app = make_app(DATABASE_URL=url)
    client = app.test_client()
    assert client.post("/hooks/generic", json={"subject": "before", "text": "t"}).status_code == 202
    proxy.cut()
    r = client.post("/hooks/generic", json={"subject": "during", "text": "t"})
    assert r.status_code == 503 and r.json["status"] == "error"
    assert client.get("/readyz").status_code == 503
    proxy.restore()
    assert client.get("/readyz").status_code == 200
    assert [row.subject for row in app.extensions["bridge"].outbox.recent()] == ["before"]
    assert client.post("/hooks/generic", json={"subject": "after", "text": "t"}).status_code == 202
    engine.dispose()


def test_a_connection_pool_that_stays_full_is_503_not_400(make_app):
    """Every pooled connection busy for longer than the pool waits (a stuck transaction, a
    flood): the request is an outage to retry (503), not a payload to give up on (400)."""
    app = make_app()
    outbox = app.extensions["bridge"].outbox
    outbox.engine = sa.create_engine(outbox.engine.url, pool_size=1, max_overflow=0, pool_timeout=0.2)
    with outbox.engine.connect():  # the pool's one connection, held
        r = app.test_client().post("/hooks/generic", json={"subject": "s", "text": "t"})
    assert r.status_code == 503 and r.json["status"] == "error"
    outbox.engine.dispose()


def test_web_killed_right_after_202_delivers_after_restart(tmp_path, ca, cafile):
    smtp = SmtpServer(ca, tls="implicit")              # not started: nothing can be sent yet
    # web1 may be killed while it holds the row's claim, or just after its first try failed:
    # a short lease and retry base keep either wait well inside the test's 15 s.
    env = {**smtp.env(cafile), "DATABASE_URL": f"sqlite:///{tmp_path / 'k.db'}", "MAIL_TO": "a@example.com",
           "MAIL_FROM": "bridge@example.com", "SENDER_LEASE_SECONDS": "3", "RETRY_BASE_SECONDS": "2"}
    web = start_web(tmp_path, "web1", **env)
    r = requests.post(web.base + "/hooks/generic", json={"subject": "survivor", "text": "t"}, timeout=5)
    web.signal(signal.SIGKILL)
    assert r.status_code == 202
    web.kill()
    smtp.start()
    try:
        web2 = start_web(tmp_path, "web2", **env)
        try:
            messages = smtp.wait_for(1, 15)
        finally:
            web2.stop()
        assert [m["Subject"] for m in messages] == ["survivor"]
    finally:
        smtp.stop()


@pytest.mark.parametrize("pragma, message", [
    ("PRAGMA max_page_count = 1", "database or disk is full"),
    ("PRAGMA query_only = 1", "readonly database"),
])
def test_full_or_read_only_sqlite_is_503_with_a_log_line(app, client, caplog, pragma, message):
    engine = app.extensions["bridge"].outbox.engine
    assert client.post("/hooks/generic", json={"subject": "fits", "text": "t"}).status_code == 202
    sa.event.listen(engine, "connect", lambda dbapi_conn, _: dbapi_conn.execute(pragma))
    engine.dispose()
    with caplog.at_level(logging.ERROR, logger="bridge"):
        r = client.post("/hooks/generic", json={"subject": "does not fit", "text": "x" * 100_000})
    assert r.status_code == 503
    assert any("event=store_failed" in rec.message and message in rec.message for rec in caplog.records)


def test_flood_keeps_the_bridge_responsive(tmp_path):
    """10 000 requests offered over 10 s on 16 connections: /healthz stays under 100 ms, and
    every request is either stored (202) or shed at once (429), never half of one."""
    db = tmp_path / "f.db"
    web = start_web(tmp_path, DATABASE_URL=f"sqlite:///{db}", MAIL_DIR=str(tmp_path / "mail"),
                    LOG_LEVEL="warning")
    health = []
    stop = threading.Event()

    def probe():
        session = requests.Session()
        while not stop.is_set():
            t0 = time.monotonic()
            assert session.get(web.base + "/healthz", timeout=5).status_code == 200
            health.append(time.monotonic() - t0)
            time.sleep(0.05)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        run = subprocess.run([sys.executable, "-m", "tests.flood", str(web.port), "/hooks/generic",
                              "10000", "16", "10"], cwd=ROOT, capture_output=True, text=True, timeout=60)
        codes = {int(k): v for k, v in json.loads(run.stdout)["codes"].items()}
    finally:
        stop.set()
        prober.join()
    web.stop()
    health.sort()
    p95, p99 = (health[int(len(health) * q) - 1] for q in (0.95, 0.99))
    stored = Outbox(make_engine(f"sqlite:///{db}")).counts()
    print(f"\nflood: {sum(codes.values())} requests in 10 s: {dict(codes)}; "
          f"/healthz p50 {health[len(health) // 2] * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, "
          f"p99 {p99 * 1000:.0f} ms, max {health[-1] * 1000:.0f} ms")
    assert set(codes) <= {202, 429}
    assert sum(stored.values()) == codes.get(202, 0)
    # p95 under 100 ms; the p99 bound is looser because on 2 shared cores a single scheduling
    # hiccup among ~150 probes is the p99.
    assert p95 < 0.1 and p99 < 0.25
