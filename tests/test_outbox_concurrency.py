"""Concurrent intake on SQLite: requests that arrive together share one commit (group commit),
a bad item fails only itself, and a writer waits for the write lock without SQLite's long
sleeps, then gives up with a database error (a 503 at intake) after its timeout."""
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa

from bridge.outbox import GroupCommit, _begin_immediate
from tests.test_outbox import mail, new_outbox


def test_concurrent_enqueues_are_each_stored_once(tmp_path):
    box = new_outbox(f"sqlite:///{tmp_path / 'outbox.db'}")
    groups = []
    store_all = box._group.store_all
    box._group.store_all = lambda mails: groups.append(len(mails)) or store_all(mails)
    keys = [f"k{n % 150}" for n in range(300)]            # every key twice
    with ThreadPoolExecutor(8) as pool:
        stored = list(pool.map(lambda key: box.enqueue(mail(key)), keys))
    assert sorted(s.status for s in stored).count("accepted") == 150
    assert sorted(s.status for s in stored).count("duplicate") == 150
    by_key = {}
    for key, s in zip(keys, stored):
        by_key.setdefault(key, set()).add(s.id)
    assert all(len(ids) == 1 for ids in by_key.values())  # a repeat names the stored row
    assert len({next(iter(ids)) for ids in by_key.values()}) == 150
    assert box.counts() == {"queued": 150}
    assert sum(groups) == 300 and max(groups) > 1          # some requests shared a commit


def test_one_bad_item_fails_only_itself():
    calls = []
    gate = threading.Event()

    def store_all(items):
        calls.append(list(items))
        gate.wait(5)
        if "bad" in items:
            raise ValueError("bad item")
        return [item.upper() for item in items]

    group = GroupCommit(store_all)
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(group.submit, item) for item in ("a", "b", "bad", "c")]
        time.sleep(0.2)
        gate.set()
        outcomes = [f.exception() or f.result() for f in futures]
    assert outcomes[:2] == ["A", "B"] and outcomes[3] == "C"
    assert isinstance(outcomes[2], ValueError)
    assert any(len(items) > 1 for items in calls)


def test_database_errors_are_not_retried_item_by_item():
    calls = []
    gate = threading.Event()

    def store_all(items):
        calls.append(len(items))
        gate.wait(5)
        raise sa.exc.OperationalError("INSERT", None, sqlite3.OperationalError("disk I/O error"))

    group = GroupCommit(store_all)
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(group.submit, "a")
        time.sleep(0.1)                                     # "a" holds the lock; b, c wait
        others = [pool.submit(group.submit, item) for item in "bc"]
        time.sleep(0.1)
        gate.set()
        errors = [f.exception() for f in [first, *others]]
    assert all(isinstance(e, sa.exc.OperationalError) for e in errors)
    assert calls == [1, 2]                                  # b and c failed together, once


def test_a_writer_waits_for_the_lock_then_times_out_as_a_database_error(tmp_path):
    path = tmp_path / "lock.db"
    holder, waiter = (sqlite3.connect(path, isolation_level=None, check_same_thread=False) for _ in "hw")
    holder.execute("BEGIN IMMEDIATE")
    threading.Timer(0.2, holder.rollback).start()
    started = time.monotonic()
    _begin_immediate(waiter, timeout=5)                      # got it soon after the release
    assert time.monotonic() - started < 1.0
    waiter.rollback()
    holder.execute("BEGIN IMMEDIATE")
    with pytest.raises(sa.exc.OperationalError):
        _begin_immediate(waiter, timeout=0.2)
    holder.rollback()
    assert waiter.execute("PRAGMA busy_timeout").fetchone()[0] == 30000
