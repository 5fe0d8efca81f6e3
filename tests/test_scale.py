"""Scale-out on real PostgreSQL: two web processes take 2 000 events while two workers send;
one worker is SIGKILLed and replaced and the SMTP server goes away for a while. Every
event arrives; duplicates stay within the killed worker's claim batch."""
import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import requests

from bridge.outbox import SENT, Outbox, make_engine
from tests.procs import start_web, start_worker
from tests.smtpd import SmtpServer
from tests.util import wait_until

EVENTS = 2000
BATCH = 10


def test_two_webs_two_workers_kill_and_outage(tmp_path, pg_url, ca):
    smtp = SmtpServer(ca, tls="none", user=None).start()
    common = {"DATABASE_URL": pg_url, "SEND_IN_WEB": "false", "MAIL_TO": "ops@example.com",
              "MAIL_FROM": "bridge@example.com", "LOG_LEVEL": "warning"}
    senders = {**common, "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(smtp.port), "SMTP_SECURITY": "none",
               "SMTP_CONNECTIONS": "1", "SENDER_BATCH": str(BATCH), "SENDER_LEASE_SECONDS": "3",
               "SENDER_POLL_SECONDS": "0.1", "RETRY_BASE_SECONDS": "0.5", "RETRY_MAX_SECONDS": "2",
               "SMTP_TIMEOUT": "5"}
    webs = [start_web(tmp_path, f"web{i}", WEB_CONCURRENCY="1", **common) for i in range(2)]
    workers = [start_worker(tmp_path, f"worker{i}", **senders) for i in range(2)]
    outbox = Outbox(make_engine(pg_url.replace("postgresql://", "postgresql+psycopg://", 1)))
    codes = Counter()
    try:
        session = requests.Session()

        def post(i):
            r = session.post(f"{webs[i % 2].base}/hooks/generic", timeout=30,
                             json={"subject": f"event {i}", "text": f"body {i}"},
                             headers={"Idempotency-Key": f"scale-{i}"})
            codes[r.status_code] += 1

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(post, range(EVENTS // 2)))
            workers[0].signal(signal.SIGKILL)                      # mid-stream, mid-claim
            workers.append(start_worker(tmp_path, "worker-new", **senders))
            smtp.stop()                                            # the mail server goes away…
            list(pool.map(post, range(EVENTS // 2, EVENTS * 3 // 4)))
            time.sleep(3)
            smtp.start()                                           # …and comes back
            list(pool.map(post, range(EVENTS * 3 // 4, EVENTS)))
        assert codes == {202: EVENTS}

        def all_sent():
            return outbox.counts() == {SENT: EVENTS}
        assert wait_until(all_sent, 120), outbox.counts()
        ids = Counter(m["Message-ID"] for m in smtp.messages)
        subjects = {m["Subject"] for m in smtp.messages}
        duplicates = sum(ids.values()) - len(ids)
        print(f"\nscale: {EVENTS} events, {len(ids)} distinct Message-IDs, {duplicates} duplicates")
        assert len(ids) == EVENTS and subjects == {f"event {i}" for i in range(EVENTS)}
        assert duplicates <= BATCH
    finally:
        for proc in webs + workers:
            proc.kill()
        smtp.stop()
        outbox.engine.dispose()
