"""bridge: webhooks and chat messages in, one readable email each out.

`create_app()` is the app factory (gunicorn: `bridge.wsgi:app`; CLI: `flask --app bridge`).
"""
from __future__ import annotations

import sys
import threading
from dataclasses import dataclass
from typing import Mapping

from flask import Flask

from bridge.actions.runner import ActionRunner
from bridge.actions.store import ReplyStore
from bridge.bodies import MemoryBudget
from bridge.inbox import Inbox
from bridge.invite import invited
from bridge.logs import log_line, setup_logging
from bridge.mail.attachments import fetch_attachments
from bridge.mail.maildir import MaildirTransport
from bridge.mail.smtp import SmtpTransport
from bridge.digests import Digester
from bridge.outbox import Outbox, make_engine
from bridge.pacing import Pacer, Unpaced
from bridge.render import Renderer
from bridge.sender import Sender
from bridge.settings import EnvReader, Settings, SettingsError, environment, load_settings
from bridge.retention import PRUNE_PAUSE, Retention
from bridge import sources


@dataclass
class Services:
    """What the blueprints, the CLI and the sender share: one per app."""

    settings: Settings
    hooks: Mapping[str, object]          # name → source served at /hooks/<name>
    outbox: Outbox
    renderer: Renderer
    sender: Sender
    intake_slots: threading.Semaphore
    body_memory: MemoryBudget
    retention: Retention
    pacer: Pacer | Unpaced
    replies: ReplyStore | None = None
    runner: ActionRunner | None = None      # the way back, when IMAP_URL is set
    inbox: Inbox | None = None

    def make_transport(self):
        if self.settings.smtp is None:
            return MaildirTransport(self.settings.mail_dir)
        return SmtpTransport(self.settings.smtp)

    def wake_sender(self) -> None:
        self.sender.wake()

    def start_sender(self) -> None:
        smtp = self.settings.smtp
        self.sender.start(threads=smtp.connections if smtp else 1)
        self.start_replies()

    def start_replies(self) -> None:
        """The IMAP reader (one at a time across processes) and the action runner."""
        if self.inbox is not None:
            self.runner.start()
            self.inbox.start()

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the background threads: the sender finishes the message in hand."""
        if self.inbox is not None:
            self.inbox.stop(timeout=min(timeout, 12.0))
            self.runner.stop(timeout=5.0)
        self.sender.stop(timeout=timeout)


def _redelivery_windows(settings: Settings, every_source: Mapping[str, object]) -> dict[str, float]:
    """Per source, how long after its event a repeat may still come (a dedup key is kept that
    long after retention deleted its row): each source that can be redelivered says."""
    return {name: source.redelivery_seconds(settings.sources[name]) for name, source in every_source.items()
            if hasattr(source, "redelivery_seconds") and name in settings.sources}


def build_services(settings: Settings, every_source: Mapping[str, object]) -> Services:
    pool = max(5, (smtp.connections if (smtp := settings.smtp) else 1) + 4)
    outbox = Outbox(make_engine(settings.database_url, pool_size=pool),
                    retry_base=settings.retry_base_seconds, retry_max=settings.retry_max_seconds,
                    max_attempts=settings.max_attempts)
    outbox.create_schema()
    pacer = Pacer(outbox, settings.smtp, settings.timezone) if settings.smtp else Unpaced()
    renderer = Renderer(settings.templates_dir)
    services = Services(settings=settings, hooks=sources.hooks(every_source), outbox=outbox, renderer=renderer,
                        sender=None, intake_slots=threading.Semaphore(settings.intake_max_inflight),
                        body_memory=MemoryBudget(settings.intake_max_body_memory),
                        retention=Retention(settings.retain_days, settings.retain_dead_days,
                                            keep_keys=_redelivery_windows(settings, every_source)),
                        pacer=pacer)
    services.sender = Sender(outbox, services.make_transport, batch_size=settings.batch_size,
                             lease_seconds=settings.lease_seconds, poll_seconds=settings.poll_seconds,
                             attach=fetch_attachments, pacer=pacer,
                             digester=Digester(outbox, pacer, renderer, settings,
                                               invite=lambda mail, target: invited(services, mail, target)),
                             prune=lambda: services.retention.prune(outbox, pause=PRUNE_PAUSE,
                                                                      replies=services.replies))
    services.replies = ReplyStore(outbox)
    if settings.replies is not None:
        services.runner = ActionRunner(services, poll_seconds=max(settings.poll_seconds, 0.5))
        services.inbox = Inbox(services, on_stored=services.runner.wake)
    return services


def _startup_log(settings: Settings, services: Services) -> None:
    transport = services.make_transport()
    log_line("startup", delivery=transport.describe(), mail_from=settings.mail_from,
             mail_to=",".join(settings.mail_to), database=settings.database_url.split("://")[0],
             send_in_web=settings.send_in_web,
             replies=services.inbox.settings.imap.host if services.inbox else "off (IMAP_URL unset)")
    if settings.smtp is None:
        log_line("startup", note=f"no SMTP server configured (SMTP_HOST / SMTP_URL): mail is "
                                 f"written to the Maildir {settings.mail_dir}")


def create_app(environ: Mapping[str, str] | None = None) -> Flask:
    """The app factory. `environ` replaces os.environ (and `.env`) when given, for tests."""
    environ = environment(environ)
    try:
        every_source = sources.registry(EnvReader(environ))
        settings = load_settings(environ, source_loaders={name: source.load_config
                                                          for name, source in every_source.items()})
    except SettingsError as exc:
        # One clear line, then stop: a misconfigured bridge must not half-run.
        print(f"bridge: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    setup_logging(settings.log_level)
    app = Flask(__name__)
    app.config["SECRET_KEY"] = settings.secret_key
    app.config["MAX_CONTENT_LENGTH"] = 26 * 1024 * 1024
    services = build_services(settings, every_source)
    app.extensions["bridge"] = services

    from bridge import cli, metrics, ops, web, wechat_web
    app.register_blueprint(web.bp)
    app.register_blueprint(wechat_web.bp)
    app.register_blueprint(metrics.bp)
    ops.register(app)
    cli.register(app)
    _startup_log(settings, services)
    return app
