"""The intake baseline that counts: a careful hand-written durable webhook route.

It does what any durable intake must and nothing more: HMAC-SHA256 over the raw body compared
with `hmac.compare_digest`, `json.loads`, then one INSERT and commit per request on SQLite in
WAL mode with `synchronous=FULL` (each 202 survives a power cut), one connection per thread.
Served by the same gunicorn configuration as the bridge (`bench.durable_app:app`).
"""
import hashlib
import hmac
import json
import os
import sqlite3
import threading

from flask import Flask, request

from bench.payloads import SECRET

app = Flask(__name__)
DB_PATH = os.environ.get("DURABLE_DB", "var/bench/durable.db")
_local = threading.local()


def connection() -> sqlite3.Connection:
    db = getattr(_local, "db", None)
    if db is None:
        db = sqlite3.connect(DB_PATH, timeout=30, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, delivery TEXT UNIQUE,"
                   " event TEXT, body TEXT)")
        _local.db = db
    return db


@app.post("/hooks/<name>")
def hook(name: str):
    body = request.get_data()
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(request.headers.get("X-Hub-Signature-256", ""), expected):
        return {"status": "error", "reason": "bad signature"}, 401
    try:
        json.loads(body)
    except ValueError:
        return {"status": "error", "reason": "not JSON"}, 400
    db = connection()
    db.execute("INSERT OR IGNORE INTO events (delivery, event, body) VALUES (?, ?, ?)",
               (request.headers.get("X-GitHub-Delivery"), request.headers.get("X-GitHub-Event"),
                body.decode("utf-8", "replace")))
    return {"status": "accepted"}, 202


@app.get("/healthz")
def healthz():
    return "ok"
