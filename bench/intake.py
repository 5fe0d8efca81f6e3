"""Intake: requests/s and p50/p99 of signed 5 KB deliveries acked (202) and stored, against a
bare Flask route answering 204 under the same gunicorn settings (workers, gthread, threads).

    python bench/intake.py [--endpoint github|generic] [--seconds 20] [--connections 8]

Load comes from wrk (keep-alive connections, each delivery with its own delivery id so none is
a duplicate). The bridge runs as the Procfile's web process with SEND_IN_WEB=false (a worker
process sends), its outbox on SQLite; afterwards the rows in the outbox are counted against
the 202s wrk saw.
"""
from __future__ import annotations

import argparse
import json
import re
import sqlite3
import subprocess
from pathlib import Path

from bench.common import bridge_env, free_port, gunicorn, result, running, wait_http, workdir
from bench.payloads import SECRET, generic_message, github_payload_headers

# wrk: every request gets a fresh delivery id; statuses are counted per thread and summed.
LUA = """
local body = io.open("%(body)s", "rb"):read("*a")
local headers = %(headers)s
local threads = {}
function setup(thread) thread:set("tid", #threads); table.insert(threads, thread) end
function init(args) n = 0; ok = 0; bad = 0; math.randomseed(os.time() + tid) end
function request()
  n = n + 1
  headers["%(id_header)s"] = string.format("bench-%%d-%%d-%%d", tid, n, math.random(1e9))
  return wrk.format("POST", "%(path)s", headers, body)
end
function response(status) if status == %(expect)d then ok = ok + 1 else bad = bad + 1 end end
function done(summary, latency, requests)
  local o, b = 0, 0
  for _, t in ipairs(threads) do o = o + t:get("ok"); b = b + t:get("bad") end
  io.write(string.format('STATUS {"ok": %%d, "bad": %%d}\\n', o, b))
end
"""

UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def lua_table(headers: dict[str, str]) -> str:
    return "{" + ", ".join(f'["{k}"] = "{v}"' for k, v in headers.items()) + "}"


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


def wrk(url: str, script: Path, seconds: int, connections: int) -> dict:
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s",
                          str(script), url], capture_output=True, text=True, check=True).stdout
    percent = {p: float(v) * UNITS[u] for p, v, u in
               re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)}
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50": percent["50"], "p99": percent["99"],
            **json.loads(re.search(r"^STATUS (.*)$", out, re.M).group(1)), "raw": out}


def measure(app: str, env: dict, script: Path, tmp: Path, name: str, seconds: int,
            connections: int) -> dict:
    port = free_port()
    with running(gunicorn(app, port, tmp / f"{name}.log", env)):
        wait_http(f"http://127.0.0.1:{port}/healthz")
        warm = wrk(f"http://127.0.0.1:{port}", script, 3, connections)  # imports, connections
        measured = wrk(f"http://127.0.0.1:{port}", script, seconds, connections)
        return {**measured, "acked": warm["ok"] + measured["ok"]}


def stored_rows(tmp: Path) -> int:
    with sqlite3.connect(tmp / "bridge.db") as db:
        return db.execute("SELECT count(*) FROM outbox WHERE status = 'queued'").fetchone()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--endpoint", choices=("github", "generic"), default="github")
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()
    tmp = workdir("intake")
    path, headers, id_header, body_file = request_for(args.endpoint, tmp)
    scripts = {}
    for name, expect in (("bridge", 202), ("bare", 204)):
        scripts[name] = tmp / f"{name}.lua"
        scripts[name].write_text(LUA % {"body": body_file, "headers": lua_table(headers),
                                        "id_header": id_header, "path": path, "expect": expect})
    env = bridge_env(tmp, SEND_IN_WEB="false", GITHUB_WEBHOOK_SECRET=SECRET)
    bare = measure("bench.bare_app:app", env, scripts["bare"], tmp, "bare", args.seconds, args.connections)
    bridge = measure("bridge.wsgi:app", env, scripts["bridge"], tmp, "bridge", args.seconds,
                     args.connections)
    rows = stored_rows(tmp)
    label = f"/hooks/{args.endpoint} {body_file.stat().st_size // 1024} KB, {args.connections} conns"
    result("intake", f"req/s {label}", bridge["rps"], "req/s", bare["rps"], ">= 0.8",
           bridge["rps"] >= 0.8 * bare["rps"])
    result("intake", "p50 latency (bridge; baseline = bare)", bridge["p50"], "ms", bare["p50"])
    result("intake", "p99 latency (bridge; baseline = bare)", bridge["p99"], "ms", bare["p99"],
           "< 50 ms", bridge["p99"] < 50)
    # wrk stops with requests in flight: those may be stored without their 202 being counted.
    result("intake", "rows stored per 202 seen", rows / max(1, bridge["acked"]) * 100, "%",
           target=">= 100 %", ok=rows >= bridge["acked"] > 0 and bridge["bad"] == 0,
           note=f"{bridge['acked']} x 202 incl. warm-up, {bridge['bad']} other answers, {rows} rows "
                f"queued; bare: {bare['bad']} non-204")


if __name__ == "__main__":
    main()
