"""Delivery: mails/s from a pre-filled outbox to a loopback SMTP server with implicit TLS and
AUTH (bench/smtp_server.py, its own process), by the bridge's worker process, against

- raw smtplib.SMTP_SSL over one verified connection, each message composed in the timed loop
  the tutorial way (EmailMessage, Subject/From/To/Date/Message-ID by hand, text + HTML),
- a verified connect-login-send-quit per mail,
- Apprise's mailtos:// per notification;

then through a proxy adding 20 ms round trip, the worker with SMTP_CONNECTIONS=1, 2, 4 (and
the two raw baselines again, at that distance).
Rates are counted at the server: messages between its first and last arrival.

    python -m bench.delivery [--mails 1000] [--rounds 3] [--per-connection-mails 200] [--proxy-mails 120]
"""
from __future__ import annotations

import argparse
import os
import smtplib
import statistics
import ssl
import sys
import time
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path

import sqlalchemy as sa

from bench.common import (Child, SmtpProcess, bridge_env, free_port, rate, result, running,
                          worker, workdir)
from bench.payloads import generic_message

ROOT = Path(__file__).resolve().parent.parent


def prefill(env: dict[str, str], count: int) -> list:
    """Store one real event through intake, then `count` - 1 copies of its row (new keys) in
    one transaction; returns the rows, which the baselines compose as they send."""
    from bridge import create_app
    from bridge.intake import store
    from bridge.outbox import outbox
    from bridge.sources import generic

    app = create_app(env)
    svc = app.extensions["bridge"]
    body = generic_message()
    event = generic.parse({"Content-Type": "application/json"}, body, svc.settings.sources["generic"])[0]
    first = svc.outbox.get(store(svc, event, svc.settings.mail_to).id)
    template = {k: v for k, v in first._mapping.items() if k != "id"}
    copies = [{**template, "dedup_key": f"bench:{n}", "fingerprint": f"bench:{n}",
               "message_id": f"<bench.{n}@example.com>"} for n in range(1, count)]
    with svc.outbox.engine.begin() as conn:
        conn.execute(outbox.insert(), copies)
        rows = conn.execute(sa.select(outbox).order_by(outbox.c.id)).all()
    svc.outbox.engine.dispose()
    return rows


def tutorial_message(row) -> tuple[EmailMessage, str, list[str]]:
    """The message a careful hand-written script builds: the standard library's defaults."""
    msg = EmailMessage()
    msg["Subject"] = row.subject
    msg["From"] = row.mail_from
    msg["To"] = row.mail_to
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = row.message_id
    msg.set_content(row.text)
    if row.html:
        msg.add_alternative(row.html, subtype="html")
    return msg, row.mail_from, [a.strip() for a in row.mail_to.split(",")]


def requeue(env: dict[str, str]) -> None:
    engine = sa.create_engine(env["DATABASE_URL"])
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE outbox SET status = 'queued', attempts = 0, sent_at = NULL"))
        conn.execute(sa.text("DELETE FROM attempts"))
    engine.dispose()


def run_worker(server: SmtpProcess, env: dict, count: int, log: Path, timeout: float) -> float:
    requeue(env)
    server.command("reset")
    with running(worker(log, env)):
        stats = server.wait_for(count, timeout)
    if stats["count"] < count:
        raise RuntimeError(f"the worker sent {stats['count']} of {count} in {timeout} s; see {log}")
    return rate(stats)


def tls_context(cafile: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=cafile)  # verified: CA and host name


def raw_one_connection(server: SmtpProcess, messages: list, port: int | None = None) -> float:
    server.command("reset")
    info = server.info
    with smtplib.SMTP_SSL("127.0.0.1", port or server.port, context=tls_context(info["cafile"])) as conn:
        conn.login(info["user"], info["password"])
        for row in messages:
            conn.send_message(*tutorial_message(row))
    return rate(server.wait_for(len(messages), 10))


def raw_per_mail(server: SmtpProcess, messages: list, port: int | None = None) -> float:
    server.command("reset")
    info = server.info
    for row in messages:
        with smtplib.SMTP_SSL("127.0.0.1", port or server.port, context=tls_context(info["cafile"])) as conn:
            conn.login(info["user"], info["password"])
            conn.send_message(*tutorial_message(row))
    return rate(server.wait_for(len(messages), 10))


def apprise_per_notification(server: SmtpProcess, messages: list) -> float:
    """One Apprise object per notification, as a per-event script would call it. (Reusing one
    object is far slower: Apprise waits 5.5 s between two notifications to one service.)"""
    from urllib.parse import quote

    import apprise

    info = server.info
    os.environ["SSL_CERT_FILE"] = info["cafile"]  # Apprise verifies against the default context
    url = (f"mailtos://127.0.0.1:{server.port}?mode=ssl&user={quote(info['user'])}"
           f"&pass={quote(info['password'])}&from=bridge@example.com&to=team@example.com")
    server.command("reset")
    for row in messages:
        notifier = apprise.Apprise()
        if not notifier.add(url):
            raise RuntimeError("Apprise did not accept the mailtos:// URL")
        if not notifier.notify(title=row.subject, body=row.text):
            raise RuntimeError("Apprise failed to send; see its log")
    return rate(server.wait_for(len(messages), 10))


def far_away(server: SmtpProcess, env: dict, messages: list, count: int, tmp: Path) -> dict:
    """Through a proxy adding 20 ms round trip: the worker with 1, 2 and 4 connections, and
    the raw baselines (one connection; connect-login-send-quit per mail) for comparison."""
    port = free_port()
    proxy = Child([sys.executable, str(ROOT / "bench" / "latency_proxy.py"), str(port),
                   str(server.port), "0.010"], tmp / "proxy.log")
    rates = {}
    with running(proxy):
        time.sleep(0.5)
        for connections in (1, 2, 4):
            far = {**env, **server.env(port), "SMTP_CONNECTIONS": str(connections)}
            rates[connections] = run_worker(server, far, count, tmp / f"worker-rtt-{connections}.log",
                                            timeout=count * 0.2 + 30)
        rates["raw"] = raw_one_connection(server, messages[:count], port)
        rates["per-mail"] = raw_per_mail(server, messages[: count // 4], port)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mails", type=int, default=1000, help="per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--per-connection-mails", type=int, default=200)
    parser.add_argument("--proxy-mails", type=int, default=120)
    args = parser.parse_args()
    tmp = workdir("delivery")
    server = SmtpProcess(tmp / "smtp.log")
    with running(server):
        env = bridge_env(tmp, SEND_IN_WEB="false", **server.env(), SMTP_CONNECTIONS="1")
        messages = prefill(env, args.mails)
        load = os.getloadavg()[0]
        bridge_runs, raw_runs = [], []
        for n in range(args.rounds):  # alternating, so load from elsewhere hits both alike
            bridge_runs.append(run_worker(server, env, args.mails, tmp / f"worker-{n}.log", timeout=120))
            raw_runs.append(raw_one_connection(server, messages))
        bridge, raw = statistics.median(bridge_runs), statistics.median(raw_runs)
        per_mail = raw_per_mail(server, messages[: args.per_connection_mails])
        via_apprise = apprise_per_notification(server, messages[: args.per_connection_mails])
        context = (f"median of {args.rounds} alternating rounds of {args.mails} mails; "
                   f"load avg {load:.1f} at start")
        result("delivery", "bridge worker, 1 connection", bridge, "mails/s",
               raw, ">= 0.8 of raw smtplib, one connection", bridge >= 0.8 * raw, note=context)
        result("delivery", "bridge vs connect-login-send-quit per mail", bridge, "mails/s", per_mail,
               ">= 10x", bridge >= 10 * per_mail)
        result("delivery", "bridge vs Apprise mailtos:// per notification", bridge, "mails/s",
               via_apprise, ">= 10x", bridge >= 10 * via_apprise)
        result("delivery", "raw one connection vs per-mail connect (reference)", raw, "mails/s", per_mail)
        far = far_away(server, env, messages, args.proxy_mails, tmp)
    note = "through a proxy adding 10 ms each way"
    result("delivery", "+20 ms RTT: bridge 1 connection vs raw one connection", far[1], "mails/s",
           far["raw"], ">= 0.8", far[1] >= 0.8 * far["raw"], note=note)
    result("delivery", "+20 ms RTT: bridge 1 connection vs per-mail connect", far[1], "mails/s",
           far["per-mail"], ">= 10x", far[1] >= 10 * far["per-mail"], note=note)
    for connections in (1, 2, 4):
        result("delivery", f"+20 ms RTT, SMTP_CONNECTIONS={connections}", far[connections], "mails/s",
               far[1], note="baseline: 1 connection")


if __name__ == "__main__":
    main()
