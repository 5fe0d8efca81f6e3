"""A writer waiting for SQLite's write lock held by another process: it gets the lock soon
after the release (not after SQLite's ever longer busy sleeps), and past its timeout it fails
with a database error, which intake answers with 503."""
import sqlite3
import threading
import time

import pytest
import sqlalchemy as sa

from bridge.outbox import _begin_immediate


def connect(path):
    return sqlite3.connect(path, isolation_level=None, check_same_thread=False)


def test_a_waiting_writer_gets_the_lock_soon_after_its_release(tmp_path):
    holder, waiter = connect(tmp_path / "lock.db"), connect(tmp_path / "lock.db")
    for conn in (holder, waiter):
        conn.execute("PRAGMA journal_mode=WAL")
    holder.execute("BEGIN IMMEDIATE")
    released = []
    timer = threading.Timer(0.3, lambda: (holder.rollback(), released.append(time.monotonic())))
    timer.start()
    _begin_immediate(waiter, timeout=5)
    got = time.monotonic()
    timer.join()
    assert got - released[0] < 0.05                # SQLite's own handler may sleep 100 ms
    waiter.rollback()
    assert waiter.execute("PRAGMA busy_timeout").fetchone()[0] == 30000


def test_a_writer_gives_up_after_its_timeout_with_a_database_error(tmp_path):
    holder, waiter = connect(tmp_path / "lock.db"), connect(tmp_path / "lock.db")
    holder.execute("BEGIN IMMEDIATE")
    started = time.monotonic()
    with pytest.raises(sa.exc.OperationalError, match="locked"):
        _begin_immediate(waiter, timeout=0.3)
    assert 0.3 <= time.monotonic() - started < 2
    holder.rollback()
    assert waiter.execute("PRAGMA busy_timeout").fetchone()[0] == 30000
