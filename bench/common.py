"""What every benchmark shares: child processes (servers, gunicorn, the worker), the bridge's
environment, RSS readings, and the result lines (measured, baseline, ratio, target)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from tests.smtpd import free_port  # noqa: F401  (re-exported for the benchmarks)

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RESULTS = ROOT / "var" / "bench" / "results.jsonl"


def workdir(name: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"bridge-bench-{name}-"))


class Child:
    """A child process whose output goes to a log file; stopped by its own pid only."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None,
                 stdin: bool = False, stdout_pipe: bool = False):
        self.log = log
        self.handle = open(log, "wb")
        self.proc = subprocess.Popen(
            args, cwd=ROOT, env={**os.environ, **(env or {})}, text=stdout_pipe,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout_pipe else self.handle, stderr=self.handle)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.handle.close()


@contextmanager
def running(child: Child):
    try:
        yield child
    finally:
        child.stop()


class SmtpProcess(Child):
    """bench/smtp_server.py in its own process, driven over its stdin."""

    def __init__(self, log: Path):
        super().__init__([sys.executable, str(ROOT / "bench" / "smtp_server.py"), str(log.parent)],
                         log, stdin=True, stdout_pipe=True)
        self.info = json.loads(self.proc.stdout.readline())
        self.port = self.info["port"]

    def command(self, line: str) -> dict:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def stats(self) -> dict:
        return self.command("stats")

    def wait_for(self, count: int, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        stats = self.stats()
        while stats["count"] < count and time.monotonic() < deadline:
            time.sleep(0.05)
            stats = self.stats()
        return stats

    def env(self, port: int | None = None) -> dict[str, str]:
        """The bridge's settings for this server (or for a proxy in front of it on `port`)."""
        return {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(port or self.port), "SMTP_SECURITY": "ssl",
                "SMTP_USER": self.info["user"], "SMTP_PASSWORD": self.info["password"],
                "SSL_CERT_FILE": self.info["cafile"]}


def rate(stats: dict) -> float:
    """Messages per second between the first and the last arrival at the server."""
    span = (stats["last"] or 0) - (stats["first"] or 0)
    return (stats["count"] - 1) / span if stats["count"] > 1 and span > 0 else 0.0


def bridge_env(tmp: Path, **extra: str) -> dict[str, str]:
    return {"DATABASE_URL": f"sqlite:///{tmp / 'bridge.db'}", "MAIL_DIR": str(tmp / "mail"),
            "MAIL_TO": "team@example.com", "MAIL_FROM": "bridge@example.com",
            "SECRET_KEY": "bench", **extra}


def gunicorn(app: str, port: int, log: Path, env: dict[str, str]) -> Child:
    """gunicorn with the Procfile's settings (gunicorn.conf.py) on a loopback port."""
    # its own counter folder: gunicorn sweeps the folder at start, and the user's var/metrics
    # is not the benchmark's
    metrics = {"PROMETHEUS_MULTIPROC_DIR": str(log.parent / f"metrics-{port}")}
    return Child([str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "--bind", f"127.0.0.1:{port}", app],
                 log, env={"PORT": str(port), **metrics, **env})


def worker(log: Path, env: dict[str, str]) -> Child:
    return Child([str(BIN / "flask"), "--app", "bridge", "worker"], log, env=env)


def wait_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer within {timeout} s")
            time.sleep(0.1)


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] if ordered else 0.0


def result(bench: str, what: str, value: float, unit: str, baseline: float | None = None,
           target: str = "", ok: bool | None = None, note: str = "") -> None:
    """Print one result line and append it to var/bench/results.jsonl (docs table source)."""
    ratio = value / baseline if baseline else None
    verdict = "" if ok is None else ("met" if ok else "MISSED")
    line = f"{bench:<9} {what:<46} {value:>10.1f} {unit:<7}"
    if baseline is not None:
        line += f" baseline {baseline:>9.1f}  ratio {ratio:>6.2f}"
    print(line + (f"  target {target} {verdict}" if target else "") + (f"  ({note})" if note else ""),
          flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a") as out:
        out.write(json.dumps({"bench": bench, "what": what, "value": value, "unit": unit,
                              "baseline": baseline, "ratio": ratio, "target": target,
                              "verdict": verdict, "note": note}) + "\n")
