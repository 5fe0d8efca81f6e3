"""The commands, one layer for two channels: WeChat chat-ops and mail replies.

WeChat: `/help`, `/status`, `/alerts`, `/silence …`, `/unsilence <id>` — a message whose first
word is `/` + a known command name, so ordinary text (WeChat emoticon codes such as `/::)`, a
path like `/etc/hosts`) is never one. Answers must fit WeChat's 5 s budget: every Alertmanager
call has a short timeout, and the whole command runs under a hard deadline.
Mail: the first line of a reply to an alert mail, `silence <duration> [comment]` or
`unsilence`; the matchers are the alert group's, and the action runner does the I/O later.
Parsing is pure; the Alertmanager calls are bridge/actions/alertmanager.py, for both.
"""
from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor, TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Mapping

import sqlalchemy as sa

from bridge.actions import Done, Later, alertmanager
from bridge.events import parse_duration
from bridge.outbox import DEAD, QUEUED, RETRYING, SENDING, SENT, outbox

COMMANDS = ("help", "status", "alerts", "silence", "unsilence")
MAIL_COMMANDS = ("silence", "unsilence")
MAX_SILENCE = 30 * 86400
MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(=~|!~|!=|=)(.*)")
_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="bridge-chatops")


class CommandError(ValueError):
    """A command the user typed wrong: the message says how to type it."""


class Unreachable(Exception):
    """Alertmanager did not answer usefully in time."""


@dataclass(frozen=True)
class Command:
    name: str
    args: tuple[str, ...]


@dataclass(frozen=True)
class Silence:
    matchers: tuple[dict[str, Any], ...]
    seconds: int
    comment: str


def parse_command(text: str) -> Command | None:
    """`/name args…` for a known name; None for anything else (then it is forwarded)."""
    words = text.split()
    if not words or not words[0].startswith("/"):
        return None
    name = words[0][1:].lower()
    return Command(name, tuple(words[1:])) if name in COMMANDS else None


def _matcher(word: str) -> dict[str, Any]:
    found = MATCHER.fullmatch(word)
    if not found:  # a bare word names the alert
        return {"name": "alertname", "value": word, "isRegex": False, "isEqual": True}
    name, op, value = found.groups()
    return {"name": name, "value": value.strip("\"'"), "isRegex": "~" in op,
            "isEqual": not op.startswith("!")}


def parse_silence(args: tuple[str, ...]) -> Silence:
    """`<alertname|label=value…> <duration> [comment…]` → a Silence."""
    at = next((i for i, word in enumerate(args) if parse_duration(word)), None)
    if not at:
        raise CommandError("用法 usage: /silence <alertname|label=value…> <duration, e.g. 2h> [comment]")
    seconds = parse_duration(args[at])
    if seconds > MAX_SILENCE:
        raise CommandError("a silence lasts at most 30d")
    return Silence(tuple(_matcher(word) for word in args[:at]), seconds, " ".join(args[at + 1:]))


def parse_mail_command(text: str) -> Command | None:
    """The first non-empty line of a reply: `silence 2h [comment]` or `unsilence` (a leading
    `/`, as in WeChat, is fine); None for anything else."""
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    words = first.split()
    if not words or words[0].lstrip("/").lower() not in MAIL_COMMANDS:
        return None
    name = words[0].lstrip("/").lower()
    if name == "silence" and (len(words) < 2 or not parse_duration(words[1])):
        return None
    return Command(name, tuple(words[1:]))


def plan_alert_reply(text: str, target: Mapping[str, Any], max_seconds: int) -> dict[str, Any]:
    """What a reply to an alert group's mail asks for: a silence on the group, the end of this
    thread's silences, or (anything else) the help text."""
    command = parse_mail_command(text)
    if command is None:
        return {**target, "op": "help"}
    if command.name == "unsilence":
        return {**target, "op": "unsilence"}
    asked = parse_duration(command.args[0])
    return {**target, "op": "silence", "seconds": min(asked, max_seconds), "asked_seconds": asked,
            "comment": " ".join(command.args[1:])}


# -- the I/O (chat commands: answered at once, within WeChat's budget)

def _done(outcome) -> dict[str, Any]:
    if isinstance(outcome, Later):
        raise Unreachable(outcome.error)
    if not isinstance(outcome, Done):
        raise CommandError(outcome.error)
    return dict(outcome.result)


def _alerts(config, **_) -> dict[str, Any]:
    import requests  # here, not at the top: bridge/actions says why
    return _done(alertmanager.list_alerts(requests, config.alertmanager_url, config.alertmanager_timeout))


def _silence(config, command: Command, sender: str, **_) -> dict[str, Any]:
    import requests
    silence = parse_silence(command.args)
    result = _done(alertmanager.create_silence(
        requests, config.alertmanager_url, config.alertmanager_timeout, list(silence.matchers),
        silence.seconds, sender, silence.comment or f"silenced from WeChat by {sender}"))
    until = datetime.fromtimestamp(result["ends_at"], config.timezone).strftime("%Y-%m-%d %H:%M %Z")
    return {"id": result["id"], "matchers": silence.matchers, "until": until}


def _unsilence(config, command: Command, **_) -> dict[str, Any]:
    import requests
    if len(command.args) != 1 or not re.fullmatch(r"[0-9a-fA-F-]{8,64}", command.args[0]):
        raise CommandError("用法 usage: /unsilence <silence id>")
    return _done(alertmanager.expire_silence(requests, config.alertmanager_url,
                                             config.alertmanager_timeout, command.args[0]))


def _status(config, services, **_) -> dict[str, Any]:
    counts = services.outbox.counts()
    midnight = datetime.now(config.timezone).replace(hour=0, minute=0, second=0, microsecond=0)
    with services.outbox.engine.connect() as conn:
        sent_today = conn.execute(sa.select(sa.func.count()).where(
            outbox.c.status == SENT, outbox.c.sent_at >= midnight.timestamp())).scalar()
        last = conn.execute(sa.select(outbox.c.last_error, outbox.c.updated_at)
                            .where(outbox.c.last_error.is_not(None))
                            .order_by(outbox.c.updated_at.desc()).limit(1)).first()
    return {"pending": sum(counts.get(s, 0) for s in (QUEUED, RETRYING, SENDING)),
            "dead": counts.get(DEAD, 0), "sent_today": sent_today,
            "last_error": last.last_error[:200] if last else None,
            "last_error_at": datetime.fromtimestamp(last.updated_at, config.timezone)
            .strftime("%m-%d %H:%M") if last else None}


HANDLERS: dict[str, Callable[..., dict[str, Any]]] = {
    "help": lambda **_: {}, "status": _status, "alerts": _alerts,
    "silence": _silence, "unsilence": _unsilence,
}
NEEDS_ALERTMANAGER = ("alerts", "silence", "unsilence")


def run(command: Command, config, services, sender: str, budget: float) -> tuple[str, dict[str, Any]]:
    """Run a command within `budget` seconds → (reply template name, its context)."""
    if command.name in NEEDS_ALERTMANAGER and not config.alertmanager_url:
        return "no_alertmanager", {}
    started = time.monotonic()
    future = _pool.submit(HANDLERS[command.name], config=config, command=command, sender=sender,
                          services=services)
    try:
        return command.name, future.result(timeout=budget)
    except CommandError as exc:
        return "command_error", {"command": command.name, "error": str(exc)}
    except (Unreachable, FutureTimeout) as exc:
        waited = time.monotonic() - started
        return "unreachable", {"command": command.name, "why": str(exc) or f"no answer in {waited:.1f} s"}
