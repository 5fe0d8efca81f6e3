"""Alertmanager (API v2): create a silence, expire one, list alerts — for mail replies and for
the WeChat chat commands alike (bridge/commands.py parses what either channel typed)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Mapping

from bridge.actions import Context, Done, Later, Refused, call

ALERTS_SHOWN = 8


def target(doc: Mapping[str, Any], thread: str) -> dict[str, Any] | None:
    """Answering an alert group's mail acts on the group: its labels are the silence's matchers."""
    labels = doc.get("groupLabels") or doc.get("commonLabels") or {}
    if not labels:
        return None
    return {"target": "alertmanager", "labels": dict(labels), "thread": thread,
            "external_url": (doc.get("externalURL") or "").rstrip("/") or None}


def _answer(response) -> str:
    return response.text.strip()[:200]


def create_silence(http, base: str, timeout: float, matchers: list[dict[str, Any]], seconds: int,
                   created_by: str, comment: str, link_base: str | None = None) -> Done | Refused | Later:
    """`link_base`: the Alertmanager people open (its externalURL), when the API is reached
    at another address."""
    now = datetime.now(timezone.utc)
    ends = now + timedelta(seconds=seconds)
    doc = {"matchers": matchers, "createdBy": created_by, "comment": comment,
           "startsAt": now.isoformat(), "endsAt": ends.isoformat()}
    response = call(http, "POST", f"{base}/api/v2/silences", timeout, json=doc)
    if isinstance(response, Later):
        return response
    if response.status_code >= 400:
        return Refused(f"Alertmanager refused the silence: {_answer(response)}")
    try:
        silence_id = response.json()["silenceID"]
    except (ValueError, KeyError, TypeError):
        return Later("Alertmanager's answer has no silenceID")
    return Done("silence", {"id": silence_id, "matchers": matchers, "ends_at": ends.timestamp(),
                            "url": f"{link_base or base}/#/silences/{silence_id}"})


def expire_silence(http, base: str, timeout: float, silence_id: str) -> Done | Refused | Later:
    response = call(http, "DELETE", f"{base}/api/v2/silence/{silence_id}", timeout)
    if isinstance(response, Later):
        # Alertmanager answers an unknown or already expired silence with 500 "... not found".
        return Refused(f"no silence {silence_id}") if "not found" in response.error else response
    if response.status_code >= 400:
        return Refused(f"no silence {silence_id} (HTTP {response.status_code})")
    return Done("unsilence", {"id": silence_id})


def list_alerts(http, base: str, timeout: float) -> Done | Later:
    response = call(http, "GET", f"{base}/api/v2/alerts", timeout,
                    params={"active": "true", "silenced": "false", "inhibited": "false"})
    if isinstance(response, Later):
        return response
    try:
        labels = [a.get("labels", {}) for a in response.json()]
    except (ValueError, AttributeError, TypeError):
        return Later("the answer is not an alert list")
    return Done("alerts", {"count": len(labels), "alerts": labels[:ALERTS_SHOWN],
                           "more": max(0, len(labels) - ALERTS_SHOWN)})


def matchers(labels: Mapping[str, str]) -> list[dict[str, Any]]:
    return [{"name": k, "value": v, "isRegex": False, "isEqual": True} for k, v in sorted(labels.items())]


def perform(action: Mapping[str, Any], ctx: Context) -> Done | Refused | Later:
    replies = ctx.settings.replies
    base = replies.alertmanager_url or action.get("external_url")
    if action["op"] == "help":
        return Done("alertmanager_help", {"max_seconds": replies.max_silence_seconds})
    if not base:
        return Refused("ALERTMANAGER_URL is not set: the bridge cannot reach Alertmanager")
    if action["op"] == "silence":
        outcome = create_silence(ctx.http, base, replies.api_timeout, matchers(action["labels"]),
                                 action["seconds"], ctx.sender,
                                 action["comment"] or f"silenced by mail by {ctx.sender}",
                                 link_base=action.get("external_url"))
        if isinstance(outcome, Done):
            return Done("silence", {**outcome.result, "capped": action["seconds"] < action["asked_seconds"]})
        return outcome
    return _unsilence(ctx, base)


def _unsilence(ctx: Context, base: str) -> Done | Refused | Later:
    """Expire every silence this thread's replies created (the ones already gone count as done)."""
    expired, gone = [], []
    for result in ctx.store.thread_results("alertmanager", ctx.thread, "silence"):
        outcome = expire_silence(ctx.http, base, ctx.settings.replies.api_timeout, result["id"])
        if isinstance(outcome, Later):
            return outcome
        (expired if isinstance(outcome, Done) else gone).append(result["id"])
    return Done("unsilence", {"expired": expired, "gone": gone})
