"""Retention: old finished rows go with their attempts and requests, dead ones later, the dedup
keys a redelivery needs stay for their window, the SQLite file gives the space back; the sender
prunes on its own and `flask --app bridge outbox prune` at once."""
import time

import pytest
import sqlalchemy as sa

from bridge.outbox import DEAD, QUEUED, SENT, Failure, attempts, kept_keys, outbox
from bridge.retention import DAY, Retention, parse_age
from bridge.sender import Sender
from tests.test_outbox import db_url, mail, new_outbox  # noqa: F401  (db_url is a fixture)


def age(box, ids, days):
    """Move rows `days` into the past, as time would."""
    with box.engine.begin() as conn:
        conn.execute(outbox.update().where(outbox.c.id.in_(ids))
                     .values(created_at=outbox.c.created_at - days * DAY))


def finish(box, status, n, prefix, **kw):
    ids = []
    for i in range(n):
        ids.append(box.enqueue(mail(f"{prefix}-{i}", request={"body": "x" * 2000}, **kw)).id)
    token, rows = box.claim(1000, 60)
    for row in rows:
        if row.id in ids:
            if status == SENT:
                box.mark_sent(row.id, token, "250 ok", 0.1)
            else:
                box.mark_failed(row, token, Failure("550 no", permanent=True), 0.1)
    return ids


def count(box, table, where=None):
    with box.engine.connect() as conn:
        q = sa.select(sa.func.count()).select_from(table)
        return conn.execute(q if where is None else q.where(where)).scalar()


def test_prune_deletes_old_finished_rows_and_keeps_the_rest(db_url):
    box = new_outbox(db_url)
    sent_old = finish(box, SENT, 5, "sent-old")
    dead_old = finish(box, DEAD, 3, "dead-old")
    sent_new = finish(box, SENT, 2, "sent-new")
    ignored_old = [box.enqueue(mail(f"ign-{i}", ignored=True)).id for i in range(2)]
    queued_old = [box.enqueue(mail("still-queued")).id]
    age(box, sent_old + ignored_old + queued_old, 31)
    age(box, dead_old, 31)
    pruned = Retention(30, 90).prune(box)
    assert (pruned.rows, pruned.attempts) == (7, 5)
    assert box.counts() == {SENT: 2, DEAD: 3, QUEUED: 1}
    assert count(box, attempts, attempts.c.outbox_id.in_(sent_old)) == 0
    age(box, dead_old, 60)                                 # 91 days old now
    assert Retention(30, 90).prune(box).rows == 3
    assert box.counts() == {SENT: 2, QUEUED: 1}
    assert {box.get(i).status for i in sent_new} == {SENT}
    assert Retention(0.5, 90).prune(box, older_than=0).rows == 2   # --older-than 0s: all finished


def test_a_pruned_key_stays_a_duplicate_for_its_redelivery_window(db_url):
    box = new_outbox(db_url)
    (kept,) = finish(box, SENT, 1, "gh")
    (other,) = finish(box, SENT, 1, "other")
    with box.engine.begin() as conn:
        conn.execute(outbox.update().where(outbox.c.id == kept).values(source="github"))
    retention = Retention(30, 90, keep_keys={"github": 3 * DAY})
    pruned = retention.prune(box, older_than=0)
    assert (pruned.rows, pruned.kept_keys) == (2, 1)
    again = box.enqueue(mail("gh-0"))
    assert (again.status, again.id) == ("duplicate", kept)
    assert box.enqueue(mail("other-0")).status == "accepted"      # no window: a new mail
    with box.engine.begin() as conn:                             # four days later ...
        conn.execute(kept_keys.update().values(created_at=kept_keys.c.created_at - 4 * DAY,
                                               until=kept_keys.c.until - 4 * DAY))
    assert retention.prune(box, older_than=3600).expired_keys == 1
    assert box.enqueue(mail("gh-0")).status == "accepted"


def test_the_sqlite_file_does_not_keep_growing(tmp_path):
    path = tmp_path / "grow.db"
    box = new_outbox(f"sqlite:///{path}")
    sizes = []
    for cycle in range(3):
        finish(box, SENT, 300, f"c{cycle}")
        ids = [box.enqueue(mail(f"c{cycle}-body-{i}", request={"body": "y" * 8000})).id for i in range(300)]
        token, rows = box.claim(1000, 60)
        for row in rows:
            box.mark_sent(row.id, token, "250", 0.1)
        assert Retention(30, 90).prune(box, older_than=0).rows == 600 and ids
        with box.engine.connect() as conn:
            conn.connection.dbapi_connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        sizes.append(path.stat().st_size)
    assert sizes[2] <= sizes[1] * 1.1 and sizes[1] < 300_000, sizes


def test_an_old_database_is_converted_to_give_space_back_by_the_cli_prune(tmp_path):
    import sqlite3
    path = tmp_path / "old.db"
    sqlite3.connect(path).execute("CREATE TABLE unrelated (x)").connection.close()  # no auto_vacuum
    box = new_outbox(f"sqlite:///{path}")
    assert "auto_vacuum is off" in box.reclaim()
    assert "rebuilt" in box.reclaim(convert=True)
    assert box.reclaim() == ""


def test_the_sender_prunes_on_its_own_in_small_batches(tmp_path):
    box = new_outbox(f"sqlite:///{tmp_path / 's.db'}")
    ids = finish(box, SENT, 450, "auto")
    age(box, ids, 2)
    calls = []

    def prune():
        calls.append(time.monotonic())
        return Retention(1, 90).prune(box)
    sender = Sender(box, lambda: None, prune=prune, prune_every=3600)
    sender.housekeeping()
    sender.housekeeping()                                    # not due again yet
    assert len(calls) == 1 and box.counts() == {}


@pytest.mark.parametrize("text,seconds", [("30d", 30 * DAY), ("12h", 43200), ("0s", 0), ("1.5d", 1.5 * DAY),
                                          ("90m", 5400)])
def test_ages(text, seconds):
    assert parse_age(text) == seconds


def test_a_bad_age_is_refused():
    with pytest.raises(ValueError):
        parse_age("30 days")


def test_cli_prune_prints_what_it_removed(make_app):
    app = make_app()
    client = app.test_client()
    for i in range(3):
        assert client.post("/hooks/generic", json={"subject": f"s{i}", "text": "t"}).status_code == 202
    svc = app.extensions["bridge"]
    token, rows = svc.outbox.claim(10, 60)
    for row in rows:
        svc.outbox.mark_sent(row.id, token, "250", 0.1)
    runner = app.test_cli_runner()
    kept = runner.invoke(args=["outbox", "prune"])
    assert kept.exit_code == 0 and kept.output.startswith("pruned: 0 rows"), kept.output
    gone = runner.invoke(args=["outbox", "prune", "--older-than", "0s"])
    assert gone.exit_code == 0 and gone.output.startswith("pruned: 3 rows, 3 attempts"), gone.output
    assert svc.outbox.counts() == {}
    bad = runner.invoke(args=["outbox", "prune", "--older-than", "soon"])
    assert bad.exit_code == 2 and "not an age" in bad.output


def test_retention_settings():
    from bridge.settings import SettingsError, load_settings
    env = {"RETAIN_DAYS": "0.5", "RETAIN_DEAD_DAYS": "7"}
    settings = load_settings(env)
    assert (settings.retain_days, settings.retain_dead_days) == (0.5, 7.0)
    assert load_settings({}).retain_days == 30.0 and load_settings({}).retain_dead_days == 90.0
    with pytest.raises(SettingsError):
        load_settings({"RETAIN_DAYS": "a month"})


def test_the_deliveries_page_says_how_long_history_is_kept(make_app):
    app = make_app(ADMIN_TOKEN="admin-token-for-tests", RETAIN_DAYS="7.5", RETAIN_DEAD_DAYS="1")
    client = app.test_client()
    client.post("/deliveries/login", data={"token": "admin-token-for-tests", "next": "/deliveries"})
    page = client.get("/deliveries").get_data(as_text=True)
    assert "History is kept 7.5 days for" in page and "1 day\nfor dead ones" in page
