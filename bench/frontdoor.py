"""The front door: the chosen gunicorn worker class (gunicorn.conf.py, gevent) against gthread
(GUNICORN_WORKER_CLASS=gthread, 16 threads) on the intake benchmark (req/s, p99 of signed
deliveries acked and stored), /healthz while slow clients hold connections, and the memory one
idle connection costs.

    python -m bench.frontdoor [--seconds 8] [--rounds 3] [--connections 8] [--idle 1000]

Both run as the Procfile's web process (2 workers, SQLite, SEND_IN_WEB=false) side by side, and
the wrk rounds alternate between them, so load from elsewhere hits both alike.
"""
from __future__ import annotations

import argparse
import os
import resource
import socket
import time
import urllib.request
from urllib.parse import urlsplit

from bench.common import bridge_env, children, result, rss_mb, workdir
from bench.intake import default_endpoint, rounds, serving
from bench.payloads import SECRET

CLASSES = ("gevent", "gthread")


def web_rss(pid: int) -> float:
    return sum(rss_mb(p) for p in [pid, *children(pid)])


def healthz_ms(port: int) -> float:
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5):
            return (time.monotonic() - t0) * 1000
    except OSError:
        return float("inf")


def hold_slow(port: int, n: int) -> list[socket.socket]:
    """n connections that sent half a request line and then nothing more."""
    held = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"POST /hooks/generic HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        held.append(s)
    return held


def idle_cost(port: int, pid: int, n: int) -> tuple[float, float]:
    """(MB per idle connection, worst /healthz ms) with n half-sent requests held open."""
    time.sleep(1)
    before = web_rss(pid)
    held = hold_slow(port, n)
    time.sleep(2)
    after = web_rss(pid)
    worst = max(healthz_ms(port) for _ in range(5))
    for s in held:
        s.close()
    return (after - before) / n, worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=8, help="per round")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--idle", type=int, default=1000, help="slow connections held open")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * args.idle + 256)), hard))
    endpoint = default_endpoint()
    apps = {}
    for name in CLASSES:
        tmp = workdir(f"frontdoor-{name}")
        apps[name] = ("bridge.wsgi:app", bridge_env(
            tmp, SEND_IN_WEB="false", GITHUB_WEBHOOK_SECRET=SECRET, GUNICORN_WORKER_CLASS=name,
            LOG_LEVEL="warning", PROMETHEUS_MULTIPROC_DIR=str(tmp / "metrics")), 202)
    with serving(apps, endpoint, workdir("frontdoor")) as targets:
        load = os.getloadavg()[0]
        measured = rounds(targets, args.seconds, args.connections, args.rounds)
        idle = {name: idle_cost(urlsplit(url).port, pid, args.idle) for name, (url, _, pid) in targets.items()}
    new, old = measured["gevent"], measured["gthread"]
    note = f"/hooks/{endpoint}, {args.connections} conns, median of {args.rounds} rounds; load avg {load:.1f}"
    result("frontdoor", "intake req/s (gevent; baseline = gthread)", new["rps"], "req/s", old["rps"],
           ">= 0.8", new["rps"] >= 0.8 * old["rps"], note=note)
    result("frontdoor", "intake p99 (gevent; baseline = gthread)", new["p99"], "ms", old["p99"],
           "< 50 ms", new["p99"] < 50)
    result("frontdoor", "CPU per stored request (gevent; baseline = gthread)", new["cpu_ms"], "ms", old["cpu_ms"])
    for name in CLASSES:
        per_conn, worst = idle[name]
        result("frontdoor", f"/healthz with {args.idle} slow clients ({name})", worst, "ms",
               target="< 1000 ms", ok=worst < 1000)
        result("frontdoor", f"RSS per slow connection ({name})", per_conn * 1024, "KB",
               target="< 50 KB", ok=per_conn * 1024 < 50)


if __name__ == "__main__":
    main()
