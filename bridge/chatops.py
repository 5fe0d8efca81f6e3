"""Chat-ops over WeChat: `/help`, `/status`, `/alerts`, `/silence …`, `/unsilence <id>`.

A command is a message whose first word is `/` + a known command name, so ordinary text
(including WeChat emoticon codes such as `/::)` or a path like `/etc/hosts`) is never one.
Replies must fit WeChat's 5 s budget: every Alertmanager call has a short timeout, and the
whole command runs under a hard deadline; past it the user gets a "not reachable" answer.
Parsing is pure; `run` does the I/O (outbox reads, Alertmanager API v2 over `requests`).
"""
from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor, TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import requests
import sqlalchemy as sa

from bridge.outbox import DEAD, QUEUED, RETRYING, SENDING, SENT, outbox

COMMANDS = ("help", "status", "alerts", "silence", "unsilence")
DURATION = re.compile(r"(?:\d+[smhdw])+")
DURATION_PART = re.compile(r"(\d+)([smhdw])")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_SILENCE = 30 * 86400
MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(=~|!~|!=|=)(.*)")
ALERTS_SHOWN = 8
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


def parse_duration(word: str) -> int | None:
    if not DURATION.fullmatch(word):
        return None
    return sum(int(n) * UNIT_SECONDS[unit] for n, unit in DURATION_PART.findall(word))


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


# -- the I/O

def _am_call(method: str, url: str, timeout: float, **kwargs) -> requests.Response:
    try:
        response = requests.request(method, url, timeout=(min(1.0, timeout), timeout), **kwargs)
    except requests.RequestException as exc:
        raise Unreachable(type(exc).__name__) from None
    # Alertmanager answers an unknown silence id with 500 "silence not found": the user's error.
    if response.status_code >= 500 and "not found" not in response.text[:200]:
        raise Unreachable(f"HTTP {response.status_code}")
    return response


def _alerts(config, **_) -> dict[str, Any]:
    response = _am_call("GET", f"{config.alertmanager_url}/api/v2/alerts", config.alertmanager_timeout,
                        params={"active": "true", "silenced": "false", "inhibited": "false"})
    try:
        alerts = response.json()
        labels = [a.get("labels", {}) for a in alerts]
    except (ValueError, AttributeError, TypeError):
        raise Unreachable("the answer is not an alert list") from None
    return {"count": len(labels), "alerts": labels[:ALERTS_SHOWN], "more": max(0, len(labels) - ALERTS_SHOWN)}


def _silence(config, command: Command, sender: str, **_) -> dict[str, Any]:
    silence = parse_silence(command.args)
    now = datetime.now(timezone.utc)
    doc = {"matchers": list(silence.matchers), "createdBy": sender,
           "comment": silence.comment or f"silenced from WeChat by {sender}",
           "startsAt": now.isoformat(), "endsAt": (now + timedelta(seconds=silence.seconds)).isoformat()}
    response = _am_call("POST", f"{config.alertmanager_url}/api/v2/silences", config.alertmanager_timeout,
                        json=doc)
    if response.status_code >= 400:
        raise CommandError(f"Alertmanager refused the silence: {response.text.strip()[:200]}")
    try:
        silence_id = response.json()["silenceID"]
    except (ValueError, KeyError, TypeError):
        raise Unreachable("the answer has no silenceID") from None
    return {"id": silence_id, "matchers": silence.matchers, "until": doc["endsAt"][:16] + "Z"}


def _unsilence(config, command: Command, **_) -> dict[str, Any]:
    if len(command.args) != 1 or not re.fullmatch(r"[0-9a-fA-F-]{8,64}", command.args[0]):
        raise CommandError("用法 usage: /unsilence <silence id>")
    silence_id = command.args[0]
    response = _am_call("DELETE", f"{config.alertmanager_url}/api/v2/silence/{silence_id}",
                        config.alertmanager_timeout)
    if response.status_code >= 400:
        raise CommandError(f"no silence {silence_id} (HTTP {response.status_code})")
    return {"id": silence_id}


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
