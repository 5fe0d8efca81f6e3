"""The Procfile's web process for real: gunicorn, its sender thread, the Maildir default,
the start-up log, and a graceful SIGTERM."""
import email
import email.policy
import mailbox
import os
import re
import subprocess
import sys
import time

import requests

from tests.procs import start_web


def test_web_process_delivers_to_the_maildir_and_says_where(tmp_path):
    maildir = tmp_path / "mail"
    web = start_web(tmp_path, DATABASE_URL=f"sqlite:///{tmp_path / 'b.db'}", MAIL_DIR=str(maildir))
    try:
        started = time.monotonic()
        r = requests.post(web.base + "/hooks/generic", json={"subject": "进程 ✓", "text": "hello"}, timeout=5)
        assert r.status_code == 202
        box = mailbox.Maildir(str(maildir), create=True)
        while not box.keys() and time.monotonic() - started < 5:
            time.sleep(0.05)
        subjects = [email.message_from_bytes(box.get_bytes(k), policy=email.policy.default)["Subject"]
                    for k in box.keys()]
        assert subjects == ["进程 ✓"]
        assert time.monotonic() - started < 2
    finally:
        assert web.stop() == 0
    log = web.log.read_text()
    assert re.search(r"mail is written to the Maildir " + re.escape(str(maildir)), log)
    assert "Traceback" not in log


def test_the_web_app_loads_no_http_client(tmp_path):
    """requests (about 5 MB) is imported where an API call is made: a web worker that takes
    webhooks makes none, and the memory budget (README, Benchmarks) counts on it."""
    probe = "import sys, bridge.wsgi; print(sorted({'requests', 'urllib3'} & set(sys.modules)))"
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'b.db'}", "MAIL_DIR": str(tmp_path / "mail"),
           "SEND_IN_WEB": "false", "LOG_LEVEL": "warning"}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.strip() == "[]"
