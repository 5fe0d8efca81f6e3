"""The Procfile's web process for real: gunicorn, its sender thread, the Maildir default,
the start-up log, and a graceful SIGTERM."""
import email
import email.policy
import mailbox
import re
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
