"""A loopback SMTP server for the benchmarks, in its own process: implicit TLS + AUTH like
QQ Mail (tests/smtpd.py's SmtpServer: aiosmtpd + a trustme CA), but it only counts and
timestamps messages, so 100 000 mails cost it no memory.

Prints one JSON line {"port", "cafile", "user", "password"} when ready, then answers commands
on stdin, one per line, with one JSON line: `stats`, `reset`, `delay SECONDS` (every DATA
waits that long before its 250).
"""
from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import trustme

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.smtpd import SmtpServer, _Controller  # noqa: E402


class CountingHandler:
    """Accepts every message; keeps only a count and the first and last arrival times."""

    def __init__(self):
        self.lock = threading.Lock()
        self.delay = 0.0
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.count, self.first, self.last = 0, None, None

    async def handle_DATA(self, smtp, session, envelope):
        if self.delay:
            await asyncio.sleep(self.delay)
        now = time.monotonic()
        with self.lock:
            self.count += 1
            self.first = self.first or now
            self.last = now
        return "250 OK queued"

    def stats(self) -> dict:
        with self.lock:
            return {"count": self.count, "first": self.first, "last": self.last}


def start(workdir: Path) -> tuple[SmtpServer, CountingHandler, str]:
    ca = trustme.CA()
    cafile = str(workdir / "ca.pem")
    ca.cert_pem.write_to_path(cafile)
    server = SmtpServer(ca, tls="implicit")
    handler = CountingHandler()
    server.controller = _Controller(server, ssl_context=server.server_context)
    server.controller.handler = handler  # the factory builds each session from .handler
    server.controller.start()
    return server, handler, cafile


def serve(server: SmtpServer, handler: CountingHandler) -> None:
    for line in sys.stdin:
        command, *args = line.split()
        if command == "reset":
            handler.reset()
        elif command == "delay":
            handler.delay = float(args[0])
        print(json.dumps(handler.stats()), flush=True)


def main() -> None:
    workdir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp())
    server, handler, cafile = start(workdir)
    print(json.dumps({"port": server.port, "cafile": cafile, "user": server.user,
                      "password": server.password}), flush=True)
    try:
        serve(server, handler)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
