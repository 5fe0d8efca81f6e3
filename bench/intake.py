"""Intake: requests/s, p50/p99 and CPU per request of signed 5 KB deliveries acked (202) and
stored, against two baselines under the same gunicorn settings: a careful hand-written durable
route (bench/durable_app.py: HMAC, json.loads, one fsync'd SQLite INSERT per request) — the one
the target is set against — and a bare Flask route answering 204 (a ceiling, for reference).

    python -m bench.intake [--endpoint github|generic] [--seconds 8] [--rounds 3] [--connections 8]

Load comes from wrk (keep-alive connections, each delivery with its own delivery id so none is
a duplicate). The bridge runs as the Procfile's web process with SEND_IN_WEB=false (a worker
process sends), its outbox on SQLite; afterwards the rows in the outbox are counted against
the 202s wrk saw.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sqlite3
import statistics
import subprocess
from pathlib import Path

from bench.common import bridge_env, children, free_port, gunicorn, result, wait_http, workdir
from bench.payloads import SECRET, generic_message, github_payload_headers

# wrk: every request gets a fresh delivery id; statuses are counted per thread and summed.
LUA = """
local body = io.open("%(body)s", "rb"):read("*a")
local headers = %(headers)s
local threads = {}
function setup(thread) thread:set("tid", #threads); table.insert(threads, thread) end
function init(args) n = 0; ok = 0; shed = 0; bad = 0; math.randomseed(os.time() + tid) end
function request()
  n = n + 1
  headers["%(id_header)s"] = string.format("bench-%%d-%%d-%%d", tid, n, math.random(1e9))
  return wrk.format("POST", "%(path)s", headers, body)
end
function response(status)
  if status == %(expect)d then ok = ok + 1 elseif status == 429 then shed = shed + 1 else bad = bad + 1 end
end
function done(summary, latency, requests)
  local o, s, b = 0, 0, 0
  for _, t in ipairs(threads) do o = o + t:get("ok"); s = s + t:get("shed"); b = b + t:get("bad") end
  io.write(string.format('STATUS {"ok": %%d, "shed": %%d, "bad": %%d}\\n', o, s, b))
end
"""

UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def lua_table(headers: dict[str, str]) -> str:
    return "{" + ", ".join(f'["{k}"] = "{v}"' for k, v in headers.items()) + "}"


def default_endpoint() -> str:
    """/hooks/github when this checkout has the GitHub source, else /hooks/generic (same path)."""
    from bridge.sources import HOOKS
    return "github" if "github" in HOOKS else "generic"


def request_for(endpoint: str, tmp: Path) -> tuple[str, dict[str, str], str, Path]:
    """(path, headers, per-request id header, body file) for one kind of delivery."""
    body_file = tmp / "body.json"
    if endpoint == "github":
        body, headers = github_payload_headers()
        id_header = "X-GitHub-Delivery"
    else:
        body = generic_message()
        headers = {"Content-Type": "application/json"}
        id_header = "Idempotency-Key"
    body_file.write_bytes(body)
    return f"/hooks/{endpoint}", headers, id_header, body_file


def wrk_script(endpoint: str, tmp: Path, name: str, expect: int) -> Path:
    path, headers, id_header, body_file = request_for(endpoint, tmp)
    script = tmp / f"{name}.lua"
    script.write_text(LUA % {"body": body_file, "headers": lua_table(headers),
                             "id_header": id_header, "path": path, "expect": expect})
    return script


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a gunicorn master and its live workers."""
    total = 0.0
    for proc in (pid, *children(pid)):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{proc}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def wrk(url: str, script: Path, seconds: int, connections: int, pid: int) -> dict:
    cpu = cpu_seconds(pid)
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s",
                          str(script), url], capture_output=True, text=True, check=True).stdout
    percent = {p: float(v) * UNITS[u] for p, v, u in
               re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)}
    status = json.loads(re.search(r"^STATUS (.*)$", out, re.M).group(1))
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50": percent["50"], "p99": percent["99"],
            "cpu_ms": (cpu_seconds(pid) - cpu) * 1000 / max(1, status["ok"]), **status, "raw": out}


@contextlib.contextmanager
def serving(apps: dict[str, tuple[str, dict[str, str], int]], endpoint: str, tmp: Path):
    """Each of `apps` (name → (gunicorn app, env, the status a delivery gets)) under gunicorn on
    a port of its own, answering /healthz; yields name → (url, wrk script, pid) for rounds(),
    and stops the servers after. Logs and scripts are tmp/target-<n>.*."""
    ports = {name: free_port() for name in apps}
    servers = {}
    try:
        for n, (name, (app, env, _)) in enumerate(apps.items()):
            servers[name] = gunicorn(app, ports[name], tmp / f"target-{n}.log", env)
        for port in ports.values():
            wait_http(f"http://127.0.0.1:{port}/healthz")
        yield {name: (f"http://127.0.0.1:{ports[name]}", wrk_script(endpoint, tmp, f"target-{n}", expect),
                      servers[name].pid) for n, (name, (_, _, expect)) in enumerate(apps.items())}
    finally:
        for server in servers.values():
            server.stop()


def rounds(targets: dict[str, tuple[str, Path, int]], seconds: int, connections: int, count: int) -> dict:
    """Alternate wrk runs over the targets (a load spike from elsewhere on the machine then hits
    both sides alike); per target the median round, and every 2xx seen including warm-up."""
    runs = {name: [] for name in targets}
    # warm-up (imports, connections, caches): its answers count as acked, not in the medians
    acked = {name: wrk(url, script, 3, connections, pid)["ok"] for name, (url, script, pid) in targets.items()}
    for _ in range(count):
        for name, (url, script, pid) in targets.items():
            runs[name].append(wrk(url, script, seconds, connections, pid))
    for name in targets:
        acked[name] += sum(r["ok"] for r in runs[name])
    return {name: {"rps": statistics.median(r["rps"] for r in runs[name]),
                   "p50": statistics.median(r["p50"] for r in runs[name]),
                   "p99": statistics.median(r["p99"] for r in runs[name]),
                   "cpu_ms": statistics.median(r["cpu_ms"] for r in runs[name]),
                   "bad": sum(r["bad"] for r in runs[name]), "shed": sum(r["shed"] for r in runs[name]),
                   "acked": acked[name]}
            for name in targets}


def stored_rows(tmp: Path) -> int:
    with sqlite3.connect(tmp / "bridge.db") as db:
        return db.execute("SELECT count(*) FROM outbox WHERE status = 'queued'").fetchone()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--endpoint", choices=("github", "generic"), default=default_endpoint(),
                        help="the durable baseline checks GitHub's signature, so it runs with github only")
    parser.add_argument("--seconds", type=int, default=8, help="per round")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    tmp = workdir("intake")
    env = bridge_env(tmp, SEND_IN_WEB="false", GITHUB_WEBHOOK_SECRET=SECRET,
                     DURABLE_DB=str(tmp / "durable.db"))
    apps = {"bridge": ("bridge.wsgi:app", env, 202), "durable": ("bench.durable_app:app", env, 202),
            "bare": ("bench.bare_app:app", env, 204)}
    if args.endpoint != "github":
        del apps["durable"]
    with serving(apps, args.endpoint, tmp) as targets:
        load = os.getloadavg()[0]
        measured = rounds(targets, args.seconds, args.connections, args.rounds)
    bridge, bare = measured["bridge"], measured["bare"]
    durable = measured.get("durable")
    rows = stored_rows(tmp)
    label = f"/hooks/{args.endpoint} {(tmp / 'body.json').stat().st_size // 1024} KB, {args.connections} conns"
    context = f"median of {args.rounds} alternating {args.seconds} s rounds; load avg {load:.1f} at start"
    if durable:
        result("intake", f"req/s {label} vs durable route", bridge["rps"], "req/s", durable["rps"],
               ">= 1.0", bridge["rps"] >= durable["rps"], note=context)
        result("intake", "p99 latency (bridge; baseline = durable)", bridge["p99"], "ms", durable["p99"],
               "< 25 ms", bridge["p99"] < 25)
        result("intake", "CPU per request (bridge; baseline = durable)", bridge["cpu_ms"], "ms",
               durable["cpu_ms"])
    result("intake", f"req/s {label} vs bare route", bridge["rps"], "req/s", bare["rps"], note=context)
    result("intake", "p50 latency (bridge; baseline = bare)", bridge["p50"], "ms", bare["p50"])
    # wrk stops with requests in flight: those may be stored without their 202 being counted.
    result("intake", "rows stored per 202 seen", rows / max(1, bridge["acked"]) * 100, "%",
           target=">= 100 %", ok=rows >= bridge["acked"] > 0 and bridge["bad"] == 0,
           note=f"{bridge['acked']} x 202 incl. warm-up, {bridge['shed']} x 429 (load shed), "
                f"{bridge['bad']} other answers, {rows} rows "
                f"queued; bare: {bare['bad']} non-204")


if __name__ == "__main__":
    main()
