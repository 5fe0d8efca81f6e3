"""The Procfile's web process for real: gunicorn, its sender thread, the Maildir default,
the start-up log, and a graceful SIGTERM."""
import email
import email.policy
import mailbox
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests.smtpd import free_port

ROOT = Path(__file__).resolve().parent.parent


def procfile(kind):
    for line in (ROOT / "Procfile").read_text().splitlines():
        name, _, command = line.partition(":")
        if name.strip() == kind:
            return command.strip()
    raise AssertionError(f"no {kind}: line in the Procfile")


def start_web(tmp_path, **env):
    port = free_port()
    bin_dir = str(Path(sys.executable).parent)
    full = {"PATH": f"{bin_dir}:/usr/bin:/bin", "PORT": str(port), "WEB_CONCURRENCY": "2",
            "PYTHONPATH": str(ROOT), "HOME": str(tmp_path), **env}
    log = open(tmp_path / "web.log", "wb")
    proc = subprocess.Popen(["bash", "-c", procfile("web")], cwd=ROOT, env=full, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if requests.get(base + "/healthz", timeout=1).status_code == 200:
                return proc, base
        except requests.RequestException:
            time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError((tmp_path / "web.log").read_text())


def test_web_process_delivers_to_the_maildir_and_says_where(tmp_path):
    maildir = tmp_path / "mail"
    proc, base = start_web(tmp_path, DATABASE_URL=f"sqlite:///{tmp_path / 'b.db'}", MAIL_DIR=str(maildir))
    try:
        started = time.monotonic()
        r = requests.post(base + "/hooks/generic", json={"subject": "进程 ✓", "text": "hello"}, timeout=5)
        assert r.status_code == 202
        box = mailbox.Maildir(str(maildir), create=True)
        while not box.keys() and time.monotonic() - started < 5:
            time.sleep(0.05)
        subjects = [email.message_from_bytes(box.get_bytes(k), policy=email.policy.default)["Subject"]
                    for k in box.keys()]
        assert subjects == ["进程 ✓"]
        assert time.monotonic() - started < 2
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(30) == 0
    log = (tmp_path / "web.log").read_text()
    assert re.search(r"mail is written to the Maildir " + re.escape(str(maildir)), log)
    assert "Traceback" not in log
