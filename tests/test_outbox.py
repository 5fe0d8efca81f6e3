"""The outbox on SQLite and on real PostgreSQL: idempotent intake, leases, exactly-once
claims across senders, and a sender that dies holding a claim."""
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import sqlalchemy as sa

from bridge.outbox import DEAD, QUEUED, RETRYING, SENDING, SENT, Failure, NewMail, Outbox, make_engine, metadata
from bridge.sender import Sender
from bridge.mail.smtp import SmtpTransport
from bridge.settings import SmtpSettings
from tests.smtpd import SmtpServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'outbox.db'}"
    url = request.getfixturevalue("postgres_url").replace("postgresql://", "postgresql+psycopg://", 1)
    engine = make_engine(url)
    metadata.drop_all(engine)
    engine.dispose()
    return url


def new_outbox(url, **kw):
    box = Outbox(make_engine(url), **kw)
    box.create_schema()
    return box


def mail(key, **kw):
    return NewMail(dedup_key=key, source="test", kind="test:mail", subject=f"subject {key}", text="t",
                   html=None, mail_from="bridge@example.com", mail_to=("team@example.com",),
                   message_id=f"<{key}@example.com>", **kw)


def test_enqueue_is_idempotent(db_url):
    box = new_outbox(db_url)
    first = box.enqueue(mail("a"))
    again = box.enqueue(mail("a"))
    assert (first.status, again.status, again.id) == ("accepted", "duplicate", first.id)
    assert box.get(first.id).duplicates == 1
    assert box.counts() == {QUEUED: 1}


def test_dedup_window_lets_a_late_repeat_through(db_url):
    box = new_outbox(db_url)
    assert box.enqueue(mail("w", dedup_window=0.3)).status == "accepted"
    assert box.enqueue(mail("w", dedup_window=0.3)).status == "duplicate"
    time.sleep(0.35)
    late = box.enqueue(mail("w", dedup_window=0.3))
    assert late.status == "accepted"
    assert box.counts() == {QUEUED: 2}


def test_claim_lease_and_fencing(db_url):
    box = new_outbox(db_url)
    row_id = box.enqueue(mail("lease")).id
    token, rows = box.claim(10, lease=0.3)
    assert [r.id for r in rows] == [row_id] and rows[0].status == SENDING
    assert box.claim(10, lease=0.3)[1] == []          # leased: nobody else gets it
    time.sleep(0.35)
    token2, rows2 = box.claim(10, lease=30)           # the lease ran out: due again
    assert [r.id for r in rows2] == [row_id]
    assert box.mark_sent(row_id, token, "late", 0.1) is False   # the old claim cannot mark it
    assert box.mark_sent(row_id, token2, "ok", 0.1) is True
    assert box.get(row_id).status == SENT


def test_backoff_grows_with_jitter_and_cap(db_url):
    box = new_outbox(db_url, retry_base=10, retry_max=100)
    for attempts, nominal in [(1, 10), (2, 20), (3, 40), (4, 80), (5, 100), (9, 100), (5000, 100)]:
        delays = [box.backoff(attempts) for _ in range(50)]
        assert all(0.75 * nominal <= d <= 1.25 * nominal for d in delays)
        assert len(set(delays)) > 1


def test_failures_retry_then_die(db_url):
    box = new_outbox(db_url, retry_base=0, max_attempts=2)
    row_id = box.enqueue(mail("f")).id
    token, (row,) = box.claim(1, 30)
    assert box.mark_failed(row, token, Failure("451 later"), 0.1) == RETRYING
    token, (row,) = box.claim(1, 30)
    assert box.mark_failed(row, token, Failure("451 later"), 0.1) == DEAD
    assert box.claim(1, 30)[1] == []
    assert box.requeue(status=DEAD) == 1 and box.get(row_id).status == QUEUED


def test_release_gives_back_unsent_rows(db_url):
    box = new_outbox(db_url)
    box.enqueue(mail("r1"))
    box.enqueue(mail("r2"))
    token, rows = box.claim(10, 300)
    assert box.release(token) == 2
    assert box.counts() == {QUEUED: 2}


@pytest.fixture
def plain_smtp(ca):
    server = SmtpServer(ca, tls="none", user=None).start()
    yield server
    server.stop()


def plain_transport(server):
    return SmtpTransport(SmtpSettings(host="127.0.0.1", port=server.port, security="none", user="",
                                      password="", timeout=10, cert_file="", connections=1))


def test_two_senders_send_each_of_500_rows_once(db_url, plain_smtp):
    seed = new_outbox(db_url)
    for i in range(500):
        seed.enqueue(mail(f"row-{i}"))
    senders = [Sender(new_outbox(db_url), lambda: plain_transport(plain_smtp), batch_size=10,
                      lease_seconds=60, poll_seconds=0.02) for _ in range(2)]
    for sender in senders:
        sender.start(threads=1)
    deadline = time.monotonic() + 60
    while seed.counts().get(SENT, 0) < 500 and time.monotonic() < deadline:
        time.sleep(0.1)
    for sender in senders:
        sender.stop()
    ids = [m["Message-ID"] for m in plain_smtp.messages]
    assert len(ids) == 500 and len(set(ids)) == 500
    assert seed.counts() == {SENT: 500}


def test_killed_sender_claim_is_picked_up_after_the_lease(tmp_path, plain_smtp):
    url = f"sqlite:///{tmp_path / 'killed.db'}"
    box = new_outbox(url)
    row_id = box.enqueue(mail("killed")).id
    plain_smtp.stall_seconds = 30                        # the first sender hangs in DATA
    env = {**os.environ, "DATABASE_URL": url, "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(plain_smtp.port),
           "SMTP_SECURITY": "none", "SENDER_LEASE_SECONDS": "2", "SENDER_POLL_SECONDS": "0.05",
           "MAIL_FROM": "bridge@example.com", "PYTHONPATH": ROOT}
    worker = subprocess.Popen([sys.executable, "-m", "flask", "--app", "bridge", "worker"], env=env,
                              cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while box.get(row_id).status != SENDING and time.monotonic() < deadline:
            time.sleep(0.05)
        assert box.get(row_id).status == SENDING
        worker.send_signal(signal.SIGKILL)
    finally:
        worker.kill()
        worker.wait()
    plain_smtp.stall_seconds = 0
    sender = Sender(box, lambda: plain_transport(plain_smtp), lease_seconds=30, poll_seconds=0.05)
    transport = plain_transport(plain_smtp)
    assert sender.work_once(transport) == 0              # still leased to the dead worker
    time.sleep(2.1)
    assert sender.work_once(transport) == 1
    transport.close()
    assert box.get(row_id).status == SENT
    assert [m["Subject"] for m in plain_smtp.messages] == ["subject killed"]


def test_sigterm_finishes_the_message_in_hand(tmp_path, plain_smtp):
    url = f"sqlite:///{tmp_path / 'term.db'}"
    box = new_outbox(url)
    ids = [box.enqueue(mail(f"t{i}")).id for i in range(5)]
    plain_smtp.delay_seconds = 0.5
    env = {**os.environ, "DATABASE_URL": url, "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(plain_smtp.port),
           "SMTP_SECURITY": "none", "SMTP_CONNECTIONS": "1", "SENDER_POLL_SECONDS": "0.05",
           "MAIL_FROM": "bridge@example.com", "PYTHONPATH": ROOT}
    worker = subprocess.Popen([sys.executable, "-m", "flask", "--app", "bridge", "worker"], env=env,
                              cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while not plain_smtp.messages and time.monotonic() < deadline:
        time.sleep(0.02)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(15) == 0
    statuses = [box.get(i).status for i in ids]
    assert SENDING not in statuses                       # nothing left claimed
    sent = statuses.count(SENT)
    assert 1 <= sent < 5 and len(plain_smtp.messages) == sent
    assert all(s in (SENT, QUEUED) for s in statuses)


def test_a_row_whose_lease_lapsed_and_was_taken_is_not_sent_again(tmp_path, plain_smtp):
    """The first sender's send outlives its whole lease; a second sender takes the claim over
    meanwhile. The mail in flight goes twice (unavoidable), the next one only once."""
    url = f"sqlite:///{tmp_path / 'lapse.db'}"
    box = new_outbox(url)
    for key in ("slow", "next"):
        box.enqueue(mail(key))
    plain_smtp.delay_seconds = 1.2
    first = Sender(box, lambda: plain_transport(plain_smtp), batch_size=2, lease_seconds=1.0)
    thief = Sender(new_outbox(url), lambda: plain_transport(plain_smtp), batch_size=2, lease_seconds=30)

    def steal():
        time.sleep(1.05)                                  # the first claim has lapsed by now
        transport = plain_transport(plain_smtp)
        thief.work_once(transport)
        transport.close()

    other = threading.Thread(target=steal)
    other.start()
    transport = plain_transport(plain_smtp)
    first.work_once(transport)
    transport.close()
    other.join()
    subjects = [m["Subject"] for m in plain_smtp.messages]
    assert subjects.count("subject next") == 1, subjects
    assert subjects.count("subject slow") == 2, subjects
    assert box.counts() == {SENT: 2}


def test_a_database_from_an_earlier_release_gets_the_new_columns(db_url):
    box = new_outbox(db_url)
    box.enqueue(mail("old-row"))
    with box.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE outbox DROP COLUMN hint")
    new_outbox(db_url)
    columns = {c["name"] for c in sa.inspect(box.engine).get_columns("outbox")}
    assert "hint" in columns
    assert box.get(1).subject == "subject old-row"


def test_an_error_sqlite_reports_while_reading_rows_is_sqlalchemy_s(tmp_path):
    """SQLite reports some errors only as it steps to the row that causes them: those must come
    out as SQLAlchemy's too, or intake would answer 400 (payload refused, not retried) where
    the database failed."""
    from bridge.outbox import Prepared

    box = new_outbox(f"sqlite:///{tmp_path / 'outbox.db'}")
    with box.engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE numbers (v INTEGER)"))
        conn.execute(sa.text("INSERT INTO numbers VALUES (1), (-9223372036854775808)"))
    with pytest.raises(sa.exc.OperationalError, match="overflow"):
        with box._writing_fast() as conn:
            Prepared(sa.text("SELECT abs(v) FROM numbers")).rows(conn, {})  # the second row overflows
    assert box.enqueue(mail("after")).status == "accepted"


def test_a_postgres_connection_that_dies_in_a_write_is_dropped_and_the_next_store_works(postgres_url):
    """The backend killed in the middle of a write: that write fails as an outage (intake: 503),
    the dead connection leaves the pool instead of going back to it, and the next store works."""
    from bridge.outbox import Prepared

    box = new_outbox(postgres_url.replace("postgresql://", "postgresql+psycopg://", 1))
    with pytest.raises(sa.exc.OperationalError) as failed:
        with box._writing_fast() as conn:
            pid = Prepared(sa.text("SELECT pg_backend_pid()")).scalar(conn, {})
            with box.engine.connect() as admin:
                admin.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            Prepared(sa.text("SELECT 1")).rows(conn, {})
    assert failed.value.connection_invalidated
    assert box.enqueue(mail("after")).status == "accepted"
