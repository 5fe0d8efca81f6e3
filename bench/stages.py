"""Intake's cost, stage by stage: the bridge with every stage, then again with rendering,
storing and parsing taken out in turn (answered from a cache, bench/ablation.py), beside the
hand-written durable route (bench/durable_app.py).

    python -m bench.stages [--requests 2000]          # in-process CPU per request
    python -m bench.stages --server [--seconds 8]     # req/s and CPU under gunicorn, with wrk

In-process, the WSGI app is called in this process (no server, no network, one request at a
time): what a stage costs is the difference between two lines. Storing includes handing the
mail to the commit thread and back and, there, one transaction per request (under load a group
of requests shares one). CPU is the process's (time.process_time: every thread, system time
too). With --server, each line is a gunicorn of the Procfile's settings (bench.ablated_wsgi:app)
under the same wrk load as bench/intake.py, in alternating rounds with the durable route: what
the bridge would take if a stage cost nothing at all, an upper bound for moving it elsewhere.
"""
from __future__ import annotations

import argparse
import io
import itertools
import os
import sys
import time

from bench.ablation import take_out
from bench.common import bridge_env, result, workdir
from bench.intake import rounds, serving
from bench.payloads import SECRET, github_payload_headers

BODY, HEADERS = github_payload_headers()
# Each line takes out what the one before it did, and one stage more.
LINES = (("bridge, every stage", ()), ("… without rendering", ("render",)),
         ("… nor storing", ("render", "store")),
         ("… nor parsing (Flask + the web layer)", ("render", "store", "parse")))


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


def in_process(tmp, requests: int) -> None:
    os.environ["DURABLE_DB"] = str(tmp / "durable.db")
    from bench.durable_app import app as durable
    from bridge import create_app

    app = create_app(bridge_env(tmp, SEND_IN_WEB="false", GITHUB_WEBHOOK_SECRET=SECRET, LOG_LEVEL="warning"))
    ids = (f"stages-{n}" for n in itertools.count())
    for label, stages in LINES:
        take_out(app.extensions["bridge"], stages)
        print(f"{label:45s} {cpu_per_request(app.wsgi_app, requests, ids):7.0f} µs CPU per request")
    print(f"{'hand-written durable route':45s} {cpu_per_request(durable.wsgi_app, requests, ids):7.0f} µs CPU per request")


def under_gunicorn(tmp, seconds: int, connections: int, count: int) -> None:
    # bench/intake.py's settings (its log line per request included)
    env = bridge_env(tmp, SEND_IN_WEB="false", GITHUB_WEBHOOK_SECRET=SECRET, DURABLE_DB=str(tmp / "durable.db"))
    apps = {label: ("bench.ablated_wsgi:app", {**env, "BENCH_TAKE_OUT": ",".join(stages),
                                                "DATABASE_URL": f"sqlite:///{tmp / f'bridge-{n}.db'}"}, 202)
            for n, (label, stages) in enumerate(LINES)}
    apps["hand-written durable route"] = ("bench.durable_app:app", env, 202)
    with serving(apps, "github", tmp) as targets:
        measured = rounds(targets, seconds, connections, count)
    durable = measured["hand-written durable route"]
    for label, _ in LINES:
        line = measured[label]
        result("stages", f"{label} (req/s vs durable route)", line["rps"], "req/s", durable["rps"],
               note=f"p99 {line['p99']:.1f} ms, {line['cpu_ms']:.2f} ms CPU/request; "
                    f"route {durable['cpu_ms']:.2f} ms; {line['bad']} non-202")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="in-process, per line")
    parser.add_argument("--server", action="store_true", help="under gunicorn and wrk instead")
    parser.add_argument("--seconds", type=int, default=8, help="--server: per round")
    parser.add_argument("--connections", type=int, default=8, help="--server")
    parser.add_argument("--rounds", type=int, default=3, help="--server")
    args = parser.parse_args()
    tmp = workdir("stages")
    if args.server:
        under_gunicorn(tmp, args.seconds, args.connections, args.rounds)
    else:
        in_process(tmp, args.requests)


if __name__ == "__main__":
    main()
