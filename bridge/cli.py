"""Flask CLI commands: `flask --app bridge send-test | check-smtp | worker | outbox ...`."""
from __future__ import annotations

import datetime as dt
import json
import signal
import threading
import time
import uuid
from pathlib import Path

import click
from flask import Flask, current_app
from flask.cli import AppGroup, with_appcontext

from bridge.intake import store
from bridge.mail.smtp import classify
from bridge.outbox import DEAD, SENT
from bridge.events import Event, Rejected
from bridge.retention import parse_age
from bridge.settings import EnvReader, SettingsError, environment
from bridge.sources.declarative import DeclarativeSource, read_definition


def _services():
    return current_app.extensions["bridge"]


@click.command("worker")
@with_appcontext
def worker_command():
    """Drain the outbox until SIGTERM (the Procfile's worker process); read replies too when
    IMAP_URL is set."""
    svc = _services()
    _run_until_signal("worker", svc.start_sender, f"sending via {svc.make_transport().describe()}")


def _run_until_signal(name: str, start, what: str) -> None:
    """Start background threads, run until SIGTERM or SIGINT, then stop them within Heroku's
    grace period (the sender finishes the message in hand)."""
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stopped.set())
    signal.signal(signal.SIGINT, lambda signum, frame: stopped.set())
    start()
    click.echo(f"{name}: {what}")
    while not stopped.wait(0.5):
        pass
    _services().stop(timeout=20)
    click.echo(f"{name}: stopped")


@click.command("inbox")
@click.option("--once", is_flag=True, help="Read what is in the mailbox, run the actions, exit.")
@with_appcontext
def inbox_command(once: bool):
    """Read replies from IMAP_URL and act on them (the Procfile's inbox process)."""
    svc = _services()
    if svc.inbox is None:
        click.echo("inbox: IMAP_URL is not set: replies are off")
        raise SystemExit(2)
    if once:
        read = svc.inbox.once()
        while svc.runner.work_once():
            pass
        click.echo(f"inbox: read {read} message(s) from {svc.settings.replies.imap.host}" if read is not None
                   else "inbox: another process is reading the mailbox now; its actions ran here too")
        return
    _run_until_signal("inbox", svc.start_replies,
                      f"reading {svc.settings.replies.imap.host} (one reader at a time across processes)")


@click.command("send-test")
@click.option("--timeout", default=30.0, help="Seconds to wait for the outcome.")
@with_appcontext
def send_test_command(timeout: float):
    """Queue one test mail to MAIL_TO, deliver it, print the outcome."""
    svc = _services()
    now = dt.datetime.now(svc.settings.timezone).strftime("%Y-%m-%d %H:%M:%S %Z")
    event = Event(source="cli", kind="cli:send-test", dedup_key=f"send-test:{uuid.uuid4().hex}",
                  template="generic/message",
                  context={"subject": f"bridge test mail ✓ {now}",
                           "text": f"This is a test mail from bridge, sent at {now}.\n"})
    stored = store(svc, event, svc.settings.mail_to)
    transport = svc.make_transport()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            row = svc.outbox.get(stored.id)
            if row.status in (SENT, DEAD) or (row.attempts and row.last_error):
                break
            svc.sender.work_once(transport)
            time.sleep(0.1)
    finally:
        transport.close()
    row = svc.outbox.get(stored.id)
    if row.status == SENT:
        click.echo(f"sent: outbox #{row.id} to {row.mail_to} via {transport.describe()}")
        return
    click.echo(f"not sent: outbox #{row.id} is {row.status}: {row.last_error}")
    if row.hint:
        click.echo(f"hint: {row.hint}")
    raise SystemExit(1)


@click.command("check-smtp")
@with_appcontext
def check_smtp_command():
    """Connect and log in to the SMTP server, nothing more; one line of verdict."""
    transport = _services().make_transport()
    try:
        transport.check()
    except Exception as exc:
        failure = classify(exc)
        click.echo(f"FAIL {transport.describe()}: {failure.detail}"
                   + (f" — {failure.hint}" if failure.hint else ""))
        raise SystemExit(1)
    click.echo(f"OK {transport.describe()}")


@click.group("outbox", cls=AppGroup)
def outbox_group():
    """Look at the outbox; queue dead rows again."""


@outbox_group.command("list")
@click.option("--status", default=None, help="Only rows in this status.")
@click.option("--limit", default=20)
def outbox_list(status, limit):
    svc = _services()
    for row in svc.outbox.recent(limit=limit, status=status):
        when = dt.datetime.fromtimestamp(row.created_at, svc.settings.timezone).strftime("%m-%d %H:%M:%S")
        click.echo(f"#{row.id:<6} {when} {row.status:<8} {row.attempts:>2}x {row.source:<12} "
                   f"{row.subject[:60]}" + (f"  [{row.last_error[:80]}]" if row.last_error else ""))
    counts = svc.outbox.counts()
    click.echo("totals: " + (", ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "empty"))


@outbox_group.command("retry")
@click.argument("ids", nargs=-1, type=int)
@click.option("--all-dead", is_flag=True, help="Queue every dead row again.")
def outbox_retry(ids, all_dead):
    """Queue rows again (same Message-ID): the given ids, or --all-dead."""
    if not ids and not all_dead:
        raise click.UsageError("name row ids or pass --all-dead")
    n = _services().outbox.requeue(ids if ids else None, status=DEAD)
    click.echo(f"queued again: {n}")


@outbox_group.command("prune")
@click.option("--older-than", "older_than", default=None, metavar="AGE",
              help="Sent, ignored and digested rows older than this (30d, 12h, 0s); default RETAIN_DAYS.")
@click.option("--dead-older-than", "dead_older_than", default=None, metavar="AGE",
              help="Dead rows older than this; default RETAIN_DEAD_DAYS.")
def outbox_prune(older_than, dead_older_than):
    """Delete old history now (what the sender does on its own), print what went."""
    svc = _services()
    try:
        ages = [None if age is None else parse_age(age) for age in (older_than, dead_older_than)]
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    pruned = svc.retention.prune(svc.outbox, *ages, replies=svc.replies)
    note = svc.outbox.reclaim(convert=True)
    click.echo(f"pruned: {pruned.rows} rows, {pruned.attempts} attempts; dedup keys kept for redeliveries: "
               f"{pruned.kept_keys} (expired: {pruned.expired_keys})" + (f"; {note}" if note else ""))


@click.group("sources", cls=AppGroup)
def sources_group():
    """Sources defined as YAML (docs/sources.md)."""


@sources_group.command("check")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--payload", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A sample body (JSON) to render as the mail it would become.")
@click.option("--header", "headers", multiple=True, metavar="'NAME: VALUE'",
              help="A request header the sample carries (repeatable), e.g. 'X-Acme-Event: build'.")
@click.option("--route", default=None, help="The route the sample is posted to (/hooks/<name>/<route>).")
def sources_check(file: Path, payload: Path | None, headers: tuple[str, ...], route: str | None):
    """Validate a definition; with --payload, show the mail a sample makes (signature not checked)."""
    try:
        source = DeclarativeSource(file.stem, read_definition(file), file)
    except SettingsError as exc:
        click.echo(f"FAIL {exc}")
        raise SystemExit(1)
    scheme = source.definition.auth.scheme
    click.echo(f"OK {file}: POST /hooks/{source.NAME}, auth: {scheme.describe() if scheme else 'none'}, "
               f"{len(source.definition.events)} events entr{'y' if len(source.definition.events) == 1 else 'ies'}")
    if payload is None:
        return
    given = dict(line.split(":", 1) for line in headers if ":" in line)
    given = {"Content-Type": "application/json", **{k.strip(): v.strip() for k, v in given.items()}}
    config = source.load_config(EnvReader(environment()))
    try:
        (event,) = source.parse(given, payload.read_bytes(), config, route=route)
    except Rejected as exc:
        click.echo(f"the sample would be refused: {exc.status} {exc.reason}")
        raise SystemExit(1)
    _, glob = source.fields_for(event.kind.split(":", 1)[1])
    mail = event.context
    click.echo(f"event:   {event.kind.split(':', 1)[1] or '(empty)'}  ->  "
               + (f"events.{json.dumps(glob)}" if glob else "the top-level templates"))
    click.echo(f"dedup:   {event.delivery_id or '(none: an identical body is a duplicate)'}")
    click.echo(f"thread:  {event.thread_key or '(none)'}" + (" (opens the thread)" if event.thread_root else ""))
    click.echo(f"outcome: {'200 ignored: ' + event.ignored if event.ignored else '202 accepted, mailed'}")
    click.echo(f"Subject: {mail['subject']}")
    click.echo("--- text ---")
    click.echo(mail["text"].rstrip("\n"))
    if mail["html"]:
        click.echo("--- html ---")
        click.echo(mail["html"])


def register(app: Flask) -> None:
    for command in (worker_command, inbox_command, send_test_command, check_smtp_command, outbox_group,
                    sources_group):
        app.cli.add_command(command)
