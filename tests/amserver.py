"""A real, throwaway Prometheus Alertmanager for the tests (Debian's `prometheus-alertmanager`).

`AlertmanagerServer` runs one on 127.0.0.1 (free port, temp data dir, clustering off), with a
webhook receiver when given a URL, and talks to its API v2: fire and resolve alerts, list
alerts and silences, and read how many notifications it delivered. The `alertmanager`
fixture starts one per test and stops it afterwards; import it into a test module with
`from tests.amserver import alertmanager  # noqa: F401`.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import need
from tests.smtpd import free_port

BINARIES = ("alertmanager", "prometheus-alertmanager")


def find_binary() -> str | None:
    given = os.environ.get("AM_BIN")
    if given:
        return shutil.which(given) or (given if os.access(given, os.X_OK) else None)
    return next((path for name in BINARIES if (path := shutil.which(name))), None)


def iso(when: dt.datetime) -> str:
    return when.astimezone(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def yaml_scalar(value: str) -> str:
    # A JSON string is a valid YAML scalar, whatever it contains.
    return json.dumps(value, ensure_ascii=False)


class AlertmanagerServer:
    """One Alertmanager process. `webhook_url` None: no receiver (API use only)."""

    def __init__(self, binary: str, webhook_url: str | None = None, bearer: str | None = None,
                 group_by: tuple[str, ...] = ("alertname",), group_wait: str = "1s",
                 group_interval: str = "2s", repeat_interval: str = "1h"):
        self.binary = binary
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dir = Path(tempfile.mkdtemp(prefix="am-test-"))
        self.process: subprocess.Popen | None = None
        self.config = self._config(webhook_url, bearer, group_by, group_wait, group_interval, repeat_interval)

    @staticmethod
    def _config(webhook_url, bearer, group_by, group_wait, group_interval, repeat_interval) -> str:
        lines = ["route:", "  receiver: bridge",
                 f"  group_by: [{', '.join(yaml_scalar(g) for g in group_by)}]",
                 f"  group_wait: {group_wait}", f"  group_interval: {group_interval}",
                 f"  repeat_interval: {repeat_interval}",
                 "receivers:", "  - name: bridge"]
        if webhook_url:
            lines += ["    webhook_configs:", f"      - url: {yaml_scalar(webhook_url)}",
                      "        send_resolved: true"]
            if bearer:
                lines += ["        http_config:", "          authorization:",
                          "            type: Bearer", f"            credentials: {yaml_scalar(bearer)}"]
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 10.0) -> "AlertmanagerServer":
        (self.dir / "alertmanager.yml").write_text(self.config, "utf-8")
        (self.dir / "data").mkdir()
        self.log = open(self.dir / "alertmanager.log", "wb")
        self.process = subprocess.Popen(
            [self.binary, f"--config.file={self.dir / 'alertmanager.yml'}",
             f"--storage.path={self.dir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
             f"--web.external-url={self.url}", "--cluster.listen-address=", "--log.level=info"],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                if requests.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"Alertmanager did not start on {self.url}: {self.log_tail()}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if getattr(self, "log", None):
            self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, lines: int = 15) -> str:
        path = self.dir / "alertmanager.log"
        text = path.read_text("utf-8", "replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    # -- API v2
    def post_alerts(self, alerts: list[dict]) -> None:
        r = requests.post(f"{self.url}/api/v2/alerts", json=alerts, timeout=5)
        r.raise_for_status()

    def fire(self, labels: dict[str, str], annotations: dict[str, str] | None = None,
             generator_url: str = "") -> dict:
        """An alert as Prometheus sends it: starts now, ends a few evaluations ahead."""
        now = dt.datetime.now(dt.timezone.utc)
        alert = {"labels": labels, "annotations": annotations or {}, "startsAt": iso(now),
                 "endsAt": iso(now + dt.timedelta(minutes=4)), "generatorURL": generator_url}
        self.post_alerts([alert])
        return alert

    def resolve(self, alerts: list[dict]) -> None:
        """Resolve alerts sent before: the same labels with endsAt just past."""
        ended = iso(dt.datetime.now(dt.timezone.utc) - dt.timedelta(milliseconds=100))
        self.post_alerts([dict(a, endsAt=max(ended, a["startsAt"])) for a in alerts])

    def alerts(self, **params) -> list[dict]:
        r = requests.get(f"{self.url}/api/v2/alerts", params=params, timeout=5)
        r.raise_for_status()
        return r.json()

    def silences(self) -> list[dict]:
        r = requests.get(f"{self.url}/api/v2/silences", timeout=5)
        r.raise_for_status()
        return r.json()

    def delivered(self, integration: str = "webhook") -> tuple[int, int]:
        """(notifications answered 2xx, failed attempts) from Alertmanager's own /metrics."""
        total = failed = 0.0
        for line in requests.get(f"{self.url}/metrics", timeout=5).text.splitlines():
            if f'integration="{integration}"' not in line:
                continue
            if line.startswith("alertmanager_notification_requests_total{"):
                total += float(line.rsplit(" ", 1)[1])
            elif line.startswith("alertmanager_notification_requests_failed_total{"):
                failed += float(line.rsplit(" ", 1)[1])
        return int(total - failed), int(failed)


@pytest.fixture
def alertmanager():
    """make(**kwargs) → a started AlertmanagerServer (see its arguments); all stopped after
    the test. A missing binary skips the test, or fails it under CI=true."""
    binary = find_binary()
    need(binary is not None, "no Alertmanager binary (apt-get install prometheus-alertmanager, or set AM_BIN)")
    servers = []

    def make(**kwargs) -> AlertmanagerServer:
        server = AlertmanagerServer(binary, **kwargs)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.stop()
