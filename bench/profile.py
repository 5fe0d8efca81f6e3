"""Where the time goes: py-spy samples every thread of the bridge's processes under load and
prints the top functions by own time and by total time (docs/benchmarks.md keeps the tables).

    python -m bench.profile intake   [--seconds 10] [--take-out render,...]  # web process under wrk
    python -m bench.profile delivery [--mails 3000]   # the worker draining a pre-filled outbox

Intake: the Procfile's web process (SEND_IN_WEB=false), signed 5 KB GitHub pushes from wrk on
8 connections; --take-out answers those stages from a cache (bench/ablation.py), so
the profile shows what is left. Delivery: `flask --app bridge worker` sending to bench/smtp_server.py over
implicit TLS + AUTH. Only threads holding the GIL are sampled (`--gil`), so the shares are of Python's CPU time
(an fsync or a socket wait is not in them).
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.common import (BIN, SmtpProcess, bridge_env, free_port, gunicorn, wait_http, worker,
                          workdir)
from bench.payloads import SECRET

def record(pid: int, seconds: int, out: Path) -> None:
    # PROFILE_IDLE=1: wall time (every thread, waiting too) instead of the GIL holders only
    subprocess.run([str(BIN / "py-spy"), "record", "--pid", str(pid), "--subprocesses",
                    "--duration", str(seconds), "--rate", "200", "--format", "raw", "--output", str(out),
                    "--nonblocking", *(["--idle"] if os.environ.get("PROFILE_IDLE") else ["--gil"])],
                   check=True, capture_output=True)


def top(raw: Path, count: int = 15) -> str:
    """Own and total share per function over the busy samples of py-spy's collapsed stacks."""
    own, total, busy = collections.Counter(), collections.Counter(), 0
    for line in raw.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if not samples.isdigit():
            continue
        # "name (file.py:line)" → "name (file.py)": one row per function, not per line
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")
                  if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        n = int(samples)
        busy += n
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    lines = [f"{busy} busy samples", "| own % | total % | function (file:line) |", "|---:|---:|---|"]
    for frame, n in own.most_common(count):
        lines.append(f"| {100 * n / busy:.1f} | {100 * total[frame] / busy:.1f} | `{frame}` |")
    lines += ["", "| total % | function (file:line) |", "|---:|---|"]
    for frame, n in total.most_common(count * 3):
        lines.append(f"| {100 * n / busy:.1f} | `{frame}` |")
    return "\n".join(lines)


def intake(tmp: Path, seconds: int, take_out: str) -> Path:
    from bench.intake import wrk_script
    port = free_port()
    env = bridge_env(tmp, SEND_IN_WEB="false", GITHUB_WEBHOOK_SECRET=SECRET, WEB_CONCURRENCY="2",
                     BENCH_TAKE_OUT=take_out)
    server = gunicorn("bench.ablated_wsgi:app" if take_out else "bridge.wsgi:app", port, tmp / "web.log", env)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        script = wrk_script("github", tmp, "profile", 202)
        load = threading.Thread(target=subprocess.run, args=(
            ["wrk", "-t2", "-c8", f"-d{seconds + 4}s", "-s", str(script), f"http://127.0.0.1:{port}"],),
            kwargs={"capture_output": True})
        load.start()
        time.sleep(2)
        record(server.pid, seconds, tmp / "intake.raw")
        load.join()
    finally:
        server.stop()
    return tmp / "intake.raw"


def delivery(tmp: Path, mails: int) -> Path:
    from bench.delivery import prefill
    smtp = SmtpProcess(tmp / "smtp.log")
    env = bridge_env(tmp, **smtp.env(), SMTP_CONNECTIONS="1", SENDER_BATCH="50")
    try:
        prefill(env, mails)
        sender = worker(tmp / "worker.log", env)
        try:
            time.sleep(1.5)
            record(sender.pid, 8, tmp / "delivery.raw")
        finally:
            sender.stop()
    finally:
        smtp.stop()
    return tmp / "delivery.raw"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=("intake", "delivery"))
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--mails", type=int, default=3000)
    parser.add_argument("--take-out", default="", help="intake: stages answered from a cache (render,store,parse)")
    args = parser.parse_args()
    tmp = workdir(f"profile-{args.what}")
    raw = intake(tmp, args.seconds, args.take_out) if args.what == "intake" else delivery(tmp, args.mails)
    print(f"profile {args.what}: {raw}", file=sys.stderr)
    print(top(raw))


if __name__ == "__main__":
    main()
