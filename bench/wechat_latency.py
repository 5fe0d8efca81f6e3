"""WeChat reply latency under gunicorn, SMTP stalled vs. SMTP answering (same run, same machine).

    .venv/bin/python bench/wechat_latency.py [N] [CONCURRENCY]

Starts the Procfile's web process (gunicorn, SQLite outbox, sender threads) against a real
TLS+AUTH SMTP server (tests/smtpd.py), POSTs N signed messages (half plain, half safe mode)
from CONCURRENCY threads, once while the SMTP server stalls every DATA for 120 s and once while
it answers, and prints p50/p99/max of each and the stalled/answering ratio. WeChat's limit is 5 s.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
import trustme

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.smtpd import SmtpServer, free_port  # noqa: E402
from tests.wechat_kit import WECHAT_ENV, message, seal_request, signed_query  # noqa: E402


def start_bridge(env: dict[str, str], log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py",
                             "--bind", f"127.0.0.1:{port}", "bridge.wsgi:app"],
                            cwd=ROOT, env={**os.environ, **env}, stderr=log.open("w"))
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{base}/healthz", timeout=2).ok:
                return proc, base
        except requests.RequestException:
            time.sleep(0.1)
    proc.terminate()
    raise SystemExit(f"the bridge did not start; see {log}")


def one(base: str, i: int, offset: int) -> float:
    xml = message(f"latency #{i}", sender=f"o{i % 20}", msg_id=offset + i)
    query, body = (signed_query(), xml) if i % 2 else seal_request(xml)
    started = time.perf_counter()
    r = requests.post(f"{base}/wechat", params=query, data=body, timeout=10)
    elapsed = time.perf_counter() - started
    if r.status_code != 200 or r.content == b"success":
        raise SystemExit(f"unexpected answer {r.status_code} {r.content[:100]!r}")
    return elapsed


def run(ca, cafile: str, tmp: Path, stall: float, n: int, concurrency: int, offset: int) -> list[float]:
    smtp = SmtpServer(ca).start()
    smtp.stall_seconds = stall
    env = {**smtp.env(cafile), **WECHAT_ENV, "DATABASE_URL": f"sqlite:///{tmp}/stall{stall:g}.db",
           "MAIL_TO": "team@example.com", "WECHAT_RATE_LIMIT": "0/1", "SMTP_TIMEOUT": "60",
           "LOG_LEVEL": "warning"}
    proc, base = start_bridge(env, tmp / f"gunicorn-{stall:g}.log")
    try:
        with ThreadPoolExecutor(concurrency) as pool:
            return sorted(pool.map(lambda i: one(base, i, offset), range(n)))
    finally:
        proc.terminate()
        proc.wait(40)
        smtp.stop()


def summary(label: str, lat: list[float]) -> float:
    p50, p99 = statistics.median(lat), lat[int(0.99 * (len(lat) - 1))]
    print(f"{label:>15}: n={len(lat)} p50={p50 * 1000:.1f} ms p99={p99 * 1000:.1f} ms "
          f"max={lat[-1] * 1000:.1f} ms")
    return p99


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    concurrency = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    ca = trustme.CA()
    tmp = Path(tempfile.mkdtemp(prefix="bench-wechat-"))
    cafile = str(tmp / "ca.pem")
    ca.cert_pem.write_to_path(cafile)
    stalled = run(ca, cafile, tmp, 120.0, n, concurrency, 10 ** 9)
    answering = run(ca, cafile, tmp, 0.0, n, concurrency, 2 * 10 ** 9)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    stalled_p99 = summary("SMTP stalled", stalled)
    answering_p99 = summary("SMTP answering", answering)
    print(f"p99 ratio stalled/answering: {stalled_p99 / answering_p99:.2f}; "
          f"max {stalled[-1]:.2f} s of WeChat's 5 s")


if __name__ == "__main__":
    main()
