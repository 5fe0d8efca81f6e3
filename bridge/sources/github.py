"""POST /hooks/github: GitHub webhook deliveries (docs/github.md).

Sans-I/O: raw headers and bytes in, Events or an Answer out. The signature is checked over the
raw body before anything is decoded, since a re-serialised payload would never match.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import re
import uuid
from dataclasses import dataclass, field
from typing import Mapping

from bridge.bodies import HmacCheck, check_whole, hmac_check
from bridge.logs import log_line
from bridge.settings import EnvReader, SettingsError
from bridge.events import (Answer, Event, Rejected, form_payload, header, json_object, matches_any,
                           media_type, selected)
from bridge.actions.github import target as reply_target
from bridge.sources.github_views import Limits, Payload, View, dig, router, scalar

NAME = "github"
MAX_BODY = 25 * 1024 * 1024  # GitHub's own cap on a payload
# Everything a person acts on. Off: CI chatter (per-job and per-check events, queued and running
# runs, successes; workflow_run carries the outcome of GitHub Actions) and the two extra events
# GitHub sends with every release.published (created, released/prereleased).
DEFAULT_EVENTS = ("*", "!check_run", "!check_suite", "!workflow_job", "!status",
                  "!workflow_run.requested", "!workflow_run.in_progress", "!*.completed.success",
                  "!*.completed.skipped", "!*.completed.neutral", "!release.created",
                  "!release.released", "!release.prereleased")
GLOB = re.compile(r"!?[A-Za-z0-9_.*?-]+")


@dataclass(frozen=True)
class Config:
    secret: str = field(repr=False)
    events: tuple[str, ...] = DEFAULT_EVENTS
    branches: tuple[str, ...] = ()
    ignore_senders: tuple[str, ...] = ()
    max_commits: int = 20
    max_body_chars: int = 4000


def _globs(env: EnvReader, name: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
    globs = env.list(name, default)
    bad = [g for g in globs if not GLOB.fullmatch(g)]
    if bad:
        raise SettingsError(f"{name}: {bad[0]!r} is not a glob (letters, digits, _ . - * ? and a leading !)")
    return globs


def redelivery_seconds(config: Config) -> float:
    """GitHub redelivers (by hand or by API) deliveries of the last 3 days."""
    return 3 * 86400.0


def load_config(env: EnvReader) -> Config:
    secret = env.env.get("GITHUB_WEBHOOK_SECRET", "")
    if not secret:
        log_line("startup", logging.WARNING, source=NAME,
                 note="GITHUB_WEBHOOK_SECRET is not set: /hooks/github accepts unsigned deliveries")
    return Config(secret=secret, events=_globs(env, "GITHUB_EVENTS", DEFAULT_EVENTS),
                  branches=env.list("GITHUB_BRANCHES"), ignore_senders=env.list("GITHUB_IGNORE_SENDERS"),
                  max_commits=env.int("GITHUB_MAX_COMMITS", 20, minimum=1),
                  max_body_chars=env.int("GITHUB_MAX_BODY_CHARS", 4000, minimum=100))


# --------------------------------------------------------------------------- verify

def sign(secret: str, body: bytes, algorithm: str = "sha256") -> str:
    """The X-Hub-Signature(-256) value GitHub sends for `body`."""
    return f"{algorithm}=" + hmac.new(secret.encode("utf-8"), body, algorithm).hexdigest()


def body_check(headers: Mapping[str, str], config: Config) -> HmacCheck | None:
    """The signature check that runs as the body streams in (bridge/bodies.py); None when no
    secret is set (unsigned deliveries are accepted)."""
    if not config.secret:
        return None
    name, algorithm = "X-Hub-Signature-256", "sha256"
    if not header(headers, name).strip() and header(headers, "X-Hub-Signature").strip():
        # The SHA-1 header only counts when GitHub sent no SHA-256 one (old GHES).
        name, algorithm = "X-Hub-Signature", "sha1"
    return hmac_check(headers, name, config.secret, "GITHUB_WEBHOOK_SECRET", algorithm=algorithm,
                      prefix=f"{algorithm}=")


def verify(headers: Mapping[str, str], body: bytes, config: Config) -> None:
    """The same check on a whole body."""
    check_whole(body_check(headers, config), body)


# --------------------------------------------------------------------------- parse

def decode(headers: Mapping[str, str], body: bytes) -> dict:
    kind = media_type(headers)
    if kind == "application/x-www-form-urlencoded":
        raw: str | bytes = form_payload(body)
    elif kind == "application/json":
        raw = body
    else:
        raise Rejected(415, "send Content-Type: application/json or application/x-www-form-urlencoded")
    return json_object(raw, "payload")


def parse(headers: Mapping[str, str], body: bytes, config: Config,
          route: str | None = None) -> list[Event] | Answer:
    event = header(headers, "X-GitHub-Event").strip()
    if not event:
        raise Rejected(400, "missing X-GitHub-Event header")
    doc = decode(headers, body)
    if event == "ping":
        return Answer("pong")
    payload = Payload(event=event, action=scalar(doc.get("action")), doc=doc,
                      limits=Limits(config.max_commits, config.max_body_chars))
    view = router.view(payload)
    delivery = header(headers, "X-GitHub-Delivery").strip()
    return [Event(
        source=NAME, kind=f"{NAME}:{event}" + (f".{payload.action}" if payload.action else ""),
        dedup_key=dedup_key(header(headers, "X-GitHub-Hook-ID").strip(), delivery),
        template=view.template, context={**web_links(view.context), "delivery": delivery},
        thread_key=f"{NAME}:{view.thread_key}" if view.thread_key else None,
        thread_root=view.thread_root, headers=mail_headers(payload, delivery),
        ignored=filtered(payload, view, config), delivery_id=delivery or None,
        reply_target=reply_target(event, doc),
    )]


def web_links(value):
    """Blank every *url field that is not http(s): a javascript: link must not reach the HTML."""
    if isinstance(value, dict):
        return {key: ("" if key.endswith("url") and isinstance(item, str)
                      and not item.startswith(("https://", "http://")) else web_links(item))
                for key, item in value.items()}
    if isinstance(value, list):
        return [web_links(item) for item in value]
    return value


def dedup_key(hook_id: str, delivery: str) -> str:
    # A redelivery keeps its GUID; two hooks may share one, so the hook id is part of the key.
    if not delivery:
        return f"{NAME}:{uuid.uuid4().hex}"
    return f"{NAME}:" + hashlib.sha256(f"{hook_id}:{delivery}".encode("utf-8")).hexdigest()


def mail_headers(p: Payload, delivery: str) -> dict[str, str]:
    headers = {"X-GitHub-Event": p.event, "X-GitHub-Delivery": delivery,
               "X-GitHub-Sender": p.text("sender", "login")}
    if p.scope:
        headers["List-Id"] = f"{p.scope} <{list_label(p.scope)}.github.localhost>"
    return {name: value for name, value in headers.items() if value}


def list_label(scope: str) -> str:
    """owner/repo → repo.owner, as GitHub's List-Id does, kept to RFC 2919's dot-atom."""
    parts = reversed(scope.split("/"))
    return ".".join(re.sub(r"[^A-Za-z0-9_-]+", "-", part).strip("-") or "x" for part in parts)


# --------------------------------------------------------------------------- filters

def event_names(p: Payload, view: View) -> list[str]:
    """push, issues.opened, workflow_run.completed.failure: what GITHUB_EVENTS globs see."""
    names = [p.event]
    if p.action:
        names.append(f"{p.event}.{p.action}")
        if view.outcome:
            names.append(f"{p.event}.{p.action}.{view.outcome}")
    return names


def branch_of(p: Payload) -> str | None:
    """The branch GITHUB_BRANCHES looks at; None for events without one (and for tags)."""
    if p.event == "push":
        ref = p.text("ref")
        return ref[len("refs/heads/"):] if ref.startswith("refs/heads/") else None
    if p.event in ("create", "delete"):
        return p.text("ref") if p.text("ref_type") == "branch" else None
    base = dig(p.doc, "pull_request", "base", "ref")
    return scalar(base) if p.event.startswith("pull_request") and scalar(base) else None


def filtered(p: Payload, view: View, config: Config) -> str | None:
    """Why this delivery is not mailed (GITHUB_EVENTS, _BRANCHES, _IGNORE_SENDERS), or None."""
    names = event_names(p, view)
    if not selected(names, config.events):
        return f"{names[-1]} is not selected by GITHUB_EVENTS"
    branch = branch_of(p)
    if config.branches and branch is not None and not selected([branch], config.branches):
        return f"branch {branch} is not selected by GITHUB_BRANCHES"
    sender = p.text("sender", "login")
    if sender and matches_any(sender, config.ignore_senders):
        return f"sender {sender} matches GITHUB_IGNORE_SENDERS"
    return None
