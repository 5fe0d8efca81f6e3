"""The action runner: claims due reply actions, performs each once, answers in the thread.

Runs as one thread wherever the sender runs (web processes with SEND_IN_WEB, the `worker`
process, `flask inbox`). Like the sender it claims rows with a lease, so two processes never
perform one action; a temporary failure is retried with the outbox's backoff (or the API's
Retry-After), a permanent one is final. Each finished action queues one confirmation mail
through the outbox, in the thread of the reply, to the replier.
"""
from __future__ import annotations

import json
import logging
import re
import threading
from datetime import datetime
from email.utils import parseaddr

from bridge import metrics
from bridge.actions import Context, Done, Later, Refused, alertmanager, github, http_session, wechat
from bridge.actions.store import DONE, FAILED, RETRYING
from bridge.invite import invited
from bridge.logs import log_line
from bridge.mail.compose import mail_domain, message_id
from bridge.outbox import NewMail

RE_PREFIX = re.compile(r"^\s*(re|回复|答复|aw|sv)\s*[:：]", re.I)
TARGETS = {"github": github, "alertmanager": alertmanager, "wechat": wechat}
LEASE_SECONDS = 120.0
BATCH = 10


class ActionRunner:
    def __init__(self, services, poll_seconds: float = 1.0):
        self.services = services
        self.store = services.replies
        self.poll_seconds = poll_seconds
        self.http = http_session()
        self.stopping = threading.Event()
        self._wake = threading.Event()
        self.thread: threading.Thread | None = None

    # -- one round
    def work_once(self) -> int:
        token, rows = self.store.claim(BATCH, LEASE_SECONDS)
        for row in rows:
            if self.stopping.is_set():
                break
            if not self.store.hold(row.id, token, LEASE_SECONDS):
                # A slow API used up the batch's lease: another process may be on this row
                # now, and an action done twice is a second comment or silence.
                log_line("claim_lost", logging.WARNING, reply_id=row.id)
                continue
            if row.status not in (DONE, FAILED):
                row = self._perform(row, token)
                if row is None:
                    continue
            self._confirm(row, token)
        return len(rows)

    def _perform(self, row, token: str):
        action = json.loads(row.action or "{}")
        module = TARGETS.get(row.target)
        ctx = Context(settings=self.services.settings, store=self.store, sender=row.sender,
                      thread=row.thread, http=self.http)
        try:
            outcome = module.perform(action, ctx) if module else Done(action.get("op", "nothing"))
        except Exception as exc:  # a bug or an odd answer: recorded and retried, never fatal
            log_line("action_error", logging.ERROR, reply_id=row.id, error=f"{type(exc).__name__}: {exc}"[:300])
            outcome = Later(f"{type(exc).__name__}: {str(exc)[:200]}")
        attempts = row.attempts + 1
        if isinstance(outcome, Done):
            status, result, error, hint, delay = DONE, {"template": outcome.template, **outcome.result}, None, None, 0.0
        elif isinstance(outcome, Refused) or attempts >= self.services.outbox.max_attempts:
            status, result, error, hint, delay = FAILED, None, outcome.error, getattr(outcome, "hint", None), 0.0
        else:
            status, result, error, hint = RETRYING, None, outcome.error, None
            delay = outcome.after if outcome.after is not None else self.services.outbox.backoff(attempts)
        self.store.finish(row.id, token, status, result, error, hint, delay)
        metrics.action(row.target or "none", status)
        log_line("action", logging.INFO if status != FAILED else logging.WARNING, reply_id=row.id,
                 target=row.target, op=action.get("op"), status=status, attempt=attempts, error=error)
        return None if status == RETRYING else self.store.get(row.id)

    def _confirm(self, row, token: str) -> None:
        """One mail to the replier, in the reply's thread: what was done, or why not."""
        services = self.services
        result = json.loads(row.result) if row.result else {}
        name = result.get("template") if row.status == DONE else "refused"
        context = {"reply": row, "action": json.loads(row.action or "{}"), "result": result,
                   "error": row.last_error, "hint": row.hint, "when": self._local_time,
                   "already_re": bool(RE_PREFIX.match(row.subject or ""))}
        env = services.renderer.env
        text = env.get_template(f"replies/{name}.txt.j2").render(context)
        subject = env.get_template("replies/confirmation.subject.j2").render(context).strip()
        answered = services.outbox.get(row.outbox_id) if row.outbox_id else None
        target = json.loads(answered.reply_target) if answered is not None and answered.reply_target else None
        refs = list(dict.fromkeys(reversed(json.loads(row.references or "[]"))))
        mail_from = services.settings.mail_from
        stored = services.outbox.enqueue(invited(services, NewMail(
            dedup_key=f"reply-confirmation:{row.id}:{row.attempts}", source="replies",
            kind=f"replies:{row.target or 'none'}.{context['action'].get('op', 'none')}.{row.status}",
            subject=subject, text=text, html=None, mail_from=mail_from,
            mail_to=(parseaddr(row.sender)[1] or row.sender,),
            message_id=message_id(f"reply-confirmation:{row.id}:{row.attempts}", mail_domain(mail_from)),
            in_reply_to=row.message_id,
            headers={"References": " ".join([r for r in refs if r != row.message_id] + [row.message_id])},
        ), target, footer=False))
        self.store.confirmed(row.id, token, stored.id)
        services.wake_sender()

    def _local_time(self, stamp: float) -> str:
        return datetime.fromtimestamp(stamp, self.services.settings.timezone).strftime("%Y-%m-%d %H:%M %Z")

    # -- the loop
    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                busy = self.work_once() == BATCH
            except Exception as exc:  # the database went away: wait and try again
                log_line("action_runner_error", logging.ERROR, error=f"{type(exc).__name__}: {exc}"[:300])
                busy = False
            if not busy and self._wake.wait(self.poll_seconds):
                self._wake.clear()

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self.thread = threading.Thread(target=self.run, name="bridge-actions", daemon=True)
        self.thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self.stopping.set()
        self._wake.set()
        if self.thread is not None:
            self.thread.join(timeout)
