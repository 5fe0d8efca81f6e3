"""Memory: RSS of each web worker (gunicorn, the Procfile's web process) and of the `worker`
process while events stream through them: posted by wrk (keep-alive connections), stored,
and sent over implicit TLS + AUTH to bench/smtp_server.py. Target < 80 MB each, flat.

    python -m bench.memory [--events 100000] [--seconds 90] [--endpoint github|generic]

Stops at --events stored or after --seconds of load, whichever comes first, and prints the
curve (one sample per load segment) so a slow machine still shows the trend.
"""
from __future__ import annotations

import argparse
import sqlite3
import time

from bench.common import (SmtpProcess, bridge_env, children, free_port, gunicorn, result, rss_mb,
                          running, wait_http, worker, workdir)
from bench.intake import default_endpoint, wrk, wrk_script
from bench.payloads import SECRET

SEGMENT_SECONDS = 5
CATCH_UP_SECONDS = 30  # after the load, the worker's time to send the backlog
TARGET_MB = 80.0


def stored(tmp) -> int:
    with sqlite3.connect(tmp / "bridge.db", timeout=30) as db:
        return db.execute("SELECT count(*) FROM outbox").fetchone()[0]


def sample(web_pids: list[int], worker_pid: int, events: int, sent: int) -> dict:
    row = {"events": events, "sent": sent, "web": [round(rss_mb(p), 1) for p in web_pids],
           "worker": round(rss_mb(worker_pid), 1)}
    print(f"memory   events {events:>7}  sent {sent:>7}  web workers {row['web']} MB  "
          f"worker {row['worker']} MB", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--seconds", type=int, default=90)
    parser.add_argument("--endpoint", choices=("github", "generic"), default=default_endpoint())
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()
    tmp = workdir("memory")
    script = wrk_script(args.endpoint, tmp, "memory", 202)
    port = free_port()
    with running(SmtpProcess(tmp / "smtp.log")) as server:
        env = bridge_env(tmp, SEND_IN_WEB="false", GITHUB_WEBHOOK_SECRET=SECRET, **server.env())
        with running(gunicorn("bridge.wsgi:app", port, tmp / "web.log", env)) as web, \
                running(worker(tmp / "worker.log", env)) as sender:
            wait_http(f"http://127.0.0.1:{port}/healthz")
            time.sleep(1)  # the workers finish booting
            web_pids = children(web.pid)
            curve = [sample(web_pids, sender.pid, 0, 0)]
            started = time.monotonic()
            while curve[-1]["events"] < args.events and time.monotonic() - started < args.seconds:
                load = wrk(f"http://127.0.0.1:{port}", script, SEGMENT_SECONDS, args.connections, web.pid)
                if load["bad"]:  # 429 (load shed) is an answer the bridge may give; others not
                    raise RuntimeError(f"{load['bad']} answers were not 202 or 429; see {tmp}/web.log")
                curve.append(sample(web_pids, sender.pid, stored(tmp), server.stats()["count"]))
            server.wait_for(curve[-1]["events"], timeout=CATCH_UP_SECONDS)
            curve.append(sample(web_pids, sender.pid, stored(tmp), server.stats()["count"]))
    report(curve, args.events)


def report(curve: list[dict], wanted: int) -> None:
    first, warm, last = curve[0], curve[1], curve[-1]
    events = last["events"]
    note = f"{events} of {wanted} events in the time allowed; {last['sent']} mails sent"
    for name, before, after, warmed in (
            ("web worker (largest)", max(first["web"]), max(last["web"]), max(warm["web"])),
            ("worker process", first["worker"], last["worker"], warm["worker"])):
        result("memory", f"RSS {name} after {events} events", after, "MB", target=f"< {TARGET_MB:.0f} MB",
               ok=after < TARGET_MB, note=f"{before} MB at start; {note}")
        result("memory", f"RSS growth {name}, first segment -> end", after - warmed, "MB",
               note=f"{warmed} MB after {warm['events']} events")


if __name__ == "__main__":
    main()
