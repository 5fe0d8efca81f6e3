"""Intake's CPU per request, stage by stage: the WSGI app called in this process (no server, no
network, one request at a time), then again with rendering, storing and parsing taken out in
turn, and the hand-written durable route (bench/durable_app.py) called the same way.

    python -m bench.stages [--requests 2000]

What a stage costs is the difference between two lines. Storing includes handing the mail to
the commit thread and back and, here, one transaction per request (under load a group of
requests shares one). CPU is the process's (time.process_time: every thread, system time too).
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import itertools
import os
import sys
import time

from bench.common import bridge_env, workdir
from bench.payloads import SECRET, github_payload_headers

BODY, HEADERS = github_payload_headers()


def environ(delivery: str) -> dict:
    """A WSGI environ as gunicorn builds it for one signed push."""
    env = {"REQUEST_METHOD": "POST", "PATH_INFO": "/hooks/github", "QUERY_STRING": "",
           "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
           "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(BODY), "wsgi.errors": sys.stderr,
           "wsgi.multithread": True, "wsgi.multiprocess": True, "wsgi.run_once": False,
           "CONTENT_LENGTH": str(len(BODY)), "CONTENT_TYPE": "application/json",
           "REMOTE_ADDR": "127.0.0.1", "HTTP_X_GITHUB_DELIVERY": delivery}
    for name, value in HEADERS.items():
        if name.lower() != "content-type":
            env["HTTP_" + name.upper().replace("-", "_")] = value
    return env


def cpu_per_request(app, count: int, ids) -> float:
    """Microseconds of CPU per accepted request, after a warm-up."""
    def call():
        status = []
        for _ in app(environ(next(ids)), lambda s, h, exc=None: status.append(s)):
            pass
        assert status[0].startswith("202"), status
    for _ in range(200):
        call()
    started = time.process_time()
    for _ in range(count):
        call()
    return (time.process_time() - started) * 1e6 / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    tmp = workdir("stages")
    os.environ["DURABLE_DB"] = str(tmp / "durable.db")
    from bench.durable_app import app as durable
    from bridge import create_app
    from bridge.outbox import Stored

    app = create_app(bridge_env(tmp, SEND_IN_WEB="false", GITHUB_WEBHOOK_SECRET=SECRET, LOG_LEVEL="warning"))
    svc = app.extensions["bridge"]
    ids = (f"stages-{n}" for n in itertools.count())
    github = svc.hooks["github"]
    event = github.parse(dict(HEADERS, **{"X-GitHub-Delivery": "x"}), BODY, svc.settings.sources["github"])[0]
    rendered = svc.renderer.render(event)

    class Parsed:  # the GitHub source with its parse answered from a cache
        NAME, MAX_BODY, secret_headers, body_check = github.NAME, github.MAX_BODY, (), github.body_check

        @staticmethod
        def parse(headers, body, config, route=None):
            return [dataclasses.replace(event, delivery_id=headers.get("X-Github-Delivery"))]

    rows = [("bridge, every stage", None)]
    rows.append(("… without rendering", lambda: setattr(svc.renderer, "render", lambda e: rendered)))
    rows.append(("… nor storing", lambda: setattr(svc.outbox, "enqueue", lambda m: Stored(1, "accepted"))))
    rows.append(("… nor parsing (Flask + the web layer)", lambda: svc.hooks.__setitem__("github", Parsed)))
    for label, take_out in rows:
        if take_out:
            take_out()
        print(f"{label:45s} {cpu_per_request(app.wsgi_app, args.requests, ids):7.0f} µs CPU per request")
    print(f"{'hand-written durable route':45s} {cpu_per_request(durable.wsgi_app, args.requests, ids):7.0f} µs CPU per request")


if __name__ == "__main__":
    main()
