"""The front door, with the Procfile's real gunicorn: fresh boots with many workers, slow and
idle clients (flooded from a separate process, on 127.0.0.1 only), big unsigned bodies."""
import json
import mailbox
import os
import resource
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import requests

from tests.github_payloads import headers_for, push
from tests.procs import ROOT, Proc, start_web

BOOTS, BOOT_WORKERS = 4, 4


def fresh_boot(tmp_path, i):
    d = tmp_path / f"boot{i}"
    d.mkdir()
    proc = Proc("web", {"WEB_CONCURRENCY": str(BOOT_WORKERS), "DATABASE_URL": f"sqlite:///{d / 'fresh.db'}",
                        "MAIL_DIR": str(d / "mail"), "PROMETHEUS_MULTIPROC_DIR": str(d / "metrics")},
                d / "web.log")
    try:
        proc.wait_healthy(30)
        time.sleep(1.5)                              # a worker that died at boot takes the master with it
        alive = proc.popen.poll() is None
    finally:
        proc.kill()
    return alive, proc.log.read_text()


def test_many_workers_boot_on_a_fresh_database_without_a_race(tmp_path):
    with ThreadPoolExecutor(BOOTS) as pool:
        results = list(pool.map(lambda i: fresh_boot(tmp_path, i), range(BOOTS)))
    for alive, log in results:
        assert alive and "database is locked" not in log and "Worker failed to boot" not in log, log[-2000:]


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def clients(port, mode, n, amount):
    return subprocess.Popen([sys.executable, "-m", "tests.slow_clients", str(port), mode, str(n), str(amount)],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)


def probe_rounds(web, seconds):
    """Every 0.25 s /healthz and a generic POST from a client of our own: (slowest s, answers)."""
    slowest, answers, k = 0.0, Counter(), 0
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        k += 1
        for method, path, kw in (("GET", "/healthz", {}),
                                 ("POST", "/hooks/generic", {"json": {"subject": f"probe {k}", "text": "t"}})):
            t0 = time.monotonic()
            try:
                code = requests.request(method, web.base + path, timeout=3, headers={"Connection": "close"},
                                        **kw).status_code
            except requests.RequestException as exc:
                code = type(exc).__name__
            slowest = max(slowest, time.monotonic() - t0)
            answers[code] += 1
        time.sleep(0.25)
    return slowest, answers


def test_slow_and_idle_clients_do_not_take_the_bridge_offline(tmp_path):
    n = min(1000, (raise_nofile() - 300) // 2)
    web = start_web(tmp_path, DATABASE_URL=f"sqlite:///{tmp_path / 'b.db'}", MAIL_DIR=str(tmp_path / "mail"),
                    LOG_LEVEL="warning", PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"))
    try:
        for mode in ("headers", "body", "idle"):
            crowd = clients(web.port, mode, n, 6)
            time.sleep(2.5)                                        # the crowd is open
            slowest, answers = probe_rounds(web, 3)
            held = json.loads(crowd.communicate(timeout=30)[0])
            print(f"\n{mode}: {n} slow clients ({held}); probes {dict(answers)}, slowest {slowest:.2f} s")
            assert set(answers) == {200, 202} and slowest < 1.0, (mode, answers, slowest)
            assert held["opened"] >= n
            t0 = time.monotonic()                                  # and at once when they go
            assert requests.get(web.base + "/healthz", timeout=1).status_code == 200
            assert time.monotonic() - t0 < 1.0
    finally:
        web.kill()


def group_rss_mb(pid):
    """Summed RSS of the web process group (bash, gunicorn master, workers)."""
    total = 0
    for d in os.listdir("/proc"):
        try:
            if d.isdigit() and os.getpgid(int(d)) == pid:
                total += next(int(line.split()[1]) for line in open(f"/proc/{d}/status")
                              if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            continue
    return total / 1024


def test_big_unsigned_bodies_do_not_blow_up_memory_and_signed_ones_get_through(tmp_path):
    maildir = tmp_path / "mail"
    web = start_web(tmp_path, DATABASE_URL=f"sqlite:///{tmp_path / 'b.db'}", MAIL_DIR=str(maildir),
                    GITHUB_WEBHOOK_SECRET="big-secret", LOG_LEVEL="warning",
                    PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"))
    try:
        time.sleep(1)
        idle = group_rss_mb(web.popen.pid)
        flood = clients(web.port, "big", 32, 20)
        peak = idle
        while flood.poll() is None:
            peak = max(peak, group_rss_mb(web.popen.pid))
            time.sleep(0.1)
        codes = json.loads(flood.stdout.read())
        print(f"\n32 unsigned 20 MB bodies: {codes}; web RSS {idle:.0f} MB idle, peak {peak:.0f} MB")
        assert set(codes) <= {"401", "413", "429", "reset"} and codes.get("401", 0) >= 16, codes
        assert peak - idle < 150, (idle, peak)
        body = json.dumps({**push(), "padding": "p" * (20 * 1024 * 1024)}).encode()
        r = requests.post(web.base + "/hooks/github", data=body, timeout=60,
                          headers=headers_for("push", body, secret="big-secret"))
        assert (r.status_code, r.json()["status"]) == (202, "accepted")
        box = mailbox.Maildir(str(maildir), create=True)
        deadline = time.monotonic() + 20
        while not box.keys() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(box.keys()) == 1
    finally:
        web.kill()
