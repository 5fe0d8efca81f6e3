"""The Procfile's processes, started the way Heroku starts them (bash -c, PORT set)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests.smtpd import free_port

ROOT = Path(__file__).resolve().parent.parent


def procfile(kind: str) -> str:
    for line in (ROOT / "Procfile").read_text().splitlines():
        name, _, command = line.partition(":")
        if name.strip() == kind:
            return command.strip()
    raise AssertionError(f"no {kind}: line in the Procfile")


class Proc:
    def __init__(self, kind: str, env: dict, log: Path):
        self.kind, self.log = kind, log
        self.port = free_port()
        bin_dir = str(Path(sys.executable).parent)
        full = {"PATH": f"{bin_dir}:/usr/bin:/bin", "PORT": str(self.port), "PYTHONPATH": str(ROOT),
                "HOME": str(log.parent), **env}
        with open(log, "ab") as out:
            self.popen = subprocess.Popen(["bash", "-c", procfile(kind)], cwd=ROOT, env=full, stdout=out,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        self.base = f"http://127.0.0.1:{self.port}"

    def wait_healthy(self, timeout: float = 30) -> "Proc":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if requests.get(self.base + "/healthz", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                time.sleep(0.1)
        self.kill()
        raise AssertionError(f"{self.kind} did not become healthy:\n{self.log.read_text()[-3000:]}")

    def signal(self, sig: int) -> None:
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, timeout: float = 30) -> int:
        self.signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.popen.wait(10)


def start_web(tmp_path: Path, name: str = "web", **env) -> Proc:
    return Proc("web", {"WEB_CONCURRENCY": "2", **env}, tmp_path / f"{name}.log").wait_healthy()


def start_worker(tmp_path: Path, name: str = "worker", **env) -> Proc:
    return Proc("worker", env, tmp_path / f"{name}.log")
