"""A real, throwaway Dovecot IMAP server for the tests (Debian's `dovecot-imapd` + `-lmtpd`).

`DovecotServer` runs one on 127.0.0.1 with its own config (no /etc/dovecot, no system
service): imaps on a free port with a certificate from the tests' trustme CA, a plain imap
port, LMTP for delivering mail as an MTA would, one passwd-file user with a Maildir. The
`dovecot` fixture starts one per test module; with CI=true a missing Dovecot fails the test.
"""
from __future__ import annotations

import imaplib
import os
import pwd
import shutil
import smtplib
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import need
from tests.smtpd import free_port

DOVECOT = ("/usr/sbin/dovecot", "/usr/local/sbin/dovecot")
USER, PASSWORD = "bridge@example.com", "imap-secret"


def find_binary() -> str | None:
    return shutil.which("dovecot") or next((p for p in DOVECOT if os.access(p, os.X_OK)), None)


class DovecotServer:
    def __init__(self, binary: str, ca, user: str = USER, password: str = PASSWORD):
        self.binary, self.user, self.password = binary, user, password
        self.ssl_context = ssl.create_default_context()
        ca.configure_trust(self.ssl_context)
        # /tmp, not pytest's tmp_path (mode 0700): Dovecot's own users must reach the files.
        self.dir = Path(tempfile.mkdtemp(prefix="dovecot-", dir="/tmp"))
        self.dir.chmod(0o755)
        self.port, self.plain_port, self.lmtp_port = free_port(), free_port(), free_port()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        cert.private_key_pem.write_to_path(str(self.dir / "key.pem"))
        cert.cert_chain_pems[0].write_to_path(str(self.dir / "cert.pem"))
        os.chmod(self.dir / "key.pem", 0o600)
        self.maildir = self.dir / "mail" / user / "Maildir"

    def _ids(self) -> tuple[int, int]:
        if os.geteuid() == 0:
            entry = pwd.getpwnam("dovecot")
            return entry.pw_uid, entry.pw_gid
        return os.getuid(), os.getgid()

    def _config(self, uid: int, gid: int) -> str:
        d = self.dir
        lines = [
            "protocols = imap lmtp", "listen = 127.0.0.1", f"base_dir = {d}/run", f"state_dir = {d}/state",
            f"log_path = {d}/dovecot.log", "ssl = yes", f"ssl_cert = <{d}/cert.pem", f"ssl_key = <{d}/key.pem",
            "disable_plaintext_auth = no", "auth_mechanisms = plain login", "recipient_delimiter = +",
            "passdb {", "  driver = passwd-file", f"  args = scheme=PLAIN username_format=%u {d}/users", "}",
            "userdb {", "  driver = static", f"  args = uid={uid} gid={gid} home={d}/mail/%u", "}",
            "mail_location = maildir:~/Maildir", "mail_fsync = never", "mailbox_idle_check_interval = 1 secs",
            "first_valid_uid = 1", "first_valid_gid = 1",
        ]
        if os.geteuid() != 0:  # rootless: no user switching, no chroot
            me, group = pwd.getpwuid(os.getuid()).pw_name, str(os.getgid())
            lines += [f"default_internal_user = {me}", f"default_internal_group = {group}",
                      f"default_login_user = {me}", "service anvil {", "  chroot =", "}"]
        lines += ["service imap-login {", *(["  chroot ="] if os.geteuid() != 0 else []),
                  "  inet_listener imap {", "    address = 127.0.0.1", f"    port = {self.plain_port}", "  }",
                  "  inet_listener imaps {", "    address = 127.0.0.1", f"    port = {self.port}", "    ssl = yes",
                  "  }", "}",
                  "service lmtp {", "  inet_listener lmtp {", "    address = 127.0.0.1",
                  f"    port = {self.lmtp_port}", "  }", "}"]
        return "\n".join(lines) + "\n"

    def start(self) -> "DovecotServer":
        uid, gid = self._ids()
        for sub in ("run", "state"):
            (self.dir / sub).mkdir()
        for sub in ("new", "cur", "tmp"):
            (self.maildir / sub).mkdir(parents=True)
        users = self.dir / "users"
        users.write_text(f"{self.user}:{{PLAIN}}{self.password}::::::\n")
        users.chmod(0o640)
        if os.geteuid() == 0:
            os.chown(users, 0, gid)
            for path in [self.dir / "mail", *(self.dir / "mail").rglob("*")]:
                os.chown(path, uid, gid)
        (self.dir / "dovecot.conf").write_text(self._config(uid, gid))
        # The master forks into the background: its output goes to the log, not to a pipe
        # that would stay open (and keep run() waiting) as long as the daemon lives.
        with open(self.dir / "start.log", "wb") as out:
            subprocess.run([self.binary, "-c", str(self.dir / "dovecot.conf")], check=True,
                           stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while not all(_open(p) for p in (self.port, self.plain_port, self.lmtp_port)):
            if time.monotonic() > deadline:
                raise RuntimeError("Dovecot did not start: " + self.log()[-1500:])
            time.sleep(0.05)
        return self

    def log(self) -> str:
        try:
            return (self.dir / "dovecot.log").read_text("utf-8", "replace")
        except OSError:
            return ""

    def url(self, scheme: str = "imaps") -> str:
        port = self.port if scheme == "imaps" else self.plain_port
        return f"{scheme}://{self.user.replace('@', '%40')}:{self.password}@127.0.0.1:{port}/INBOX"

    def deliver(self, raw: bytes, rcpt: str | None = None, mail_from: str = "someone@example.com") -> None:
        """Hand one message to Dovecot over LMTP, as an MTA would."""
        with smtplib.LMTP("127.0.0.1", self.lmtp_port, timeout=15) as lmtp:
            refused = lmtp.sendmail(mail_from, [rcpt or self.user], raw)
        assert not refused, refused

    def clear(self) -> None:
        """Remove every message (a module's tests share one mailbox)."""
        with imaplib.IMAP4_SSL("127.0.0.1", self.port, ssl_context=self.ssl_context) as imap:
            imap.login(self.user, self.password)
            _, count = imap.select("INBOX")
            if int(count[0]):
                imap.store("1:*", "+FLAGS.SILENT", r"(\Deleted)")
                imap.expunge()

    def logins(self) -> int:
        return self.log().count(f"imap-login: Info: Login: user=<{self.user}>")

    def stop(self) -> None:
        pid_file = self.dir / "run" / "master.pid"
        try:
            pid = int(pid_file.read_text().strip())
            os.kill(pid, 15)
            for _ in range(100):
                os.kill(pid, 0)
                time.sleep(0.05)
        except (OSError, ValueError):
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


def _open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def dovecot(ca):
    binary = find_binary()
    need(binary is not None, "Dovecot is not installed (scripts/system-deps.sh installs dovecot-imapd)")
    server = DovecotServer(binary, ca).start()
    yield server
    server.stop()
