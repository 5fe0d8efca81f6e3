"""POST /hooks/alertmanager: Prometheus Alertmanager's webhook (payload version 4).

One notification (one alert group at one moment) becomes one mail. Alertmanager signs
nothing and sends no delivery id, so a notification is identified by what it says: receiver,
group key, status and each alert's (fingerprint, startsAt, endsAt). Retries and HA peers send
the same notification again within seconds; a `repeat_interval` reminder sends it again hours
later. `dedup_window` tells the two apart.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Mapping
from zoneinfo import ZoneInfo

from bridge.actions.alertmanager import target as reply_target
from bridge.settings import EnvReader
from bridge.events import (Event, Rejected, header, json_object, matches_any, media_type,
                           presented_secret, same_secret)

NAME = "alertmanager"
MAX_BODY = 10 * 1024 * 1024
STATUSES = ("firing", "resolved")
# Alertmanager hides the future end of a firing alert behind Go's zero time.
ZERO_TIME_YEAR = 1
# Most urgent first; anything else sorts after these, by name.
SEVERITY_RANK = {"critical": 0, "page": 0, "error": 1, "high": 1, "warning": 2, "medium": 2,
                 "low": 3, "info": 3, "none": 4}
REASON_VALUE_CAP = 40  # how much of a payload value a 400 reason may quote


@dataclass(frozen=True)
class Config:
    token: str = field(repr=False)
    hide_labels: tuple[str, ...]
    dedup_window: float
    max_alerts: int
    timezone: ZoneInfo


def redelivery_seconds(config: Config) -> float:
    """A repeat within the dedup window is a duplicate, even after retention pruned its row."""
    return config.dedup_window


def load_config(env: EnvReader) -> Config:
    return Config(token=env.str("ALERTMANAGER_TOKEN"),
                  hide_labels=env.list("ALERTMANAGER_HIDE_LABELS"),
                  dedup_window=env.float("ALERTMANAGER_DEDUP_WINDOW", 600.0),
                  max_alerts=env.int("ALERTMANAGER_MAX_ALERTS", 20, minimum=1),
                  timezone=env.zone("BRIDGE_TIMEZONE"))


# -- credentials

def verify(headers: Mapping[str, str], body: bytes, config: Config) -> None:
    if config.token and not same_secret(presented_secret(headers), config.token):
        raise Rejected(401, "missing or wrong credentials: send ALERTMANAGER_TOKEN as bearer "
                            "token or basic-auth password")


# -- reading the payload; anything malformed is a 400 naming the field

def _quote(value: Any) -> str:
    return repr(str(value)[:REASON_VALUE_CAP])


def _object(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Rejected(400, f"{where} must be an object")
    return value


def _strings(value: Any, where: str) -> dict[str, str]:
    """A label or annotation set: an object of string values."""
    pairs = _object(value, where)
    for name, text in pairs.items():
        if not isinstance(text, str):
            raise Rejected(400, f"{where}[{_quote(name)}] must be a string")
    return pairs


def _string(doc: dict, name: str, where: str) -> str:
    value = doc.get(name, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise Rejected(400, f"{where}{name} must be a string")
    return value


def _status(doc: dict, where: str) -> str:
    status = doc.get("status")
    if status not in STATUSES:
        raise Rejected(400, f'{where}status must be "firing" or "resolved", not {_quote(status)}')
    return status


def _time(doc: dict, name: str, where: str) -> dt.datetime | None:
    """An RFC 3339 time; None when absent or Go's zero time (a firing alert's endsAt)."""
    raw = _string(doc, name, where)
    if not raw:
        return None
    try:
        when = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise Rejected(400, f"{where}{name} is not an RFC 3339 time: {_quote(raw)}") from None
    if when.year <= ZERO_TIME_YEAR:
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)


def load_group(body: bytes) -> dict:
    """The notification as a dict, after checking it is a version-4 alert group."""
    doc = json_object(body)
    if doc.get("version") != "4":
        raise Rejected(400, f'payload version {_quote(doc.get("version"))} is not "4" '
                            "(Alertmanager webhook payload version 4 expected)")
    _status(doc, "")
    alerts = doc.get("alerts")
    if not isinstance(alerts, list) or not alerts:
        raise Rejected(400, "alerts must be a non-empty list")
    for index, alert in enumerate(alerts):
        where = f"alerts[{index}]."
        _object(alert, where[:-1])
        _status(alert, where)
        _strings(alert.get("labels"), where + "labels")
        _strings(alert.get("annotations"), where + "annotations")
        for name in ("generatorURL", "fingerprint", "startsAt", "endsAt"):
            _string(alert, name, where)
        for name in ("startsAt", "endsAt"):
            _time(alert, name, where)
    for name in ("groupLabels", "commonLabels", "commonAnnotations"):
        _strings(doc.get(name), name)
    for name in ("receiver", "externalURL", "groupKey"):
        _string(doc, name, "")
    truncated = doc.get("truncatedAlerts", 0)
    if not isinstance(truncated, int) or isinstance(truncated, bool) or truncated < 0:
        raise Rejected(400, "truncatedAlerts must be a whole number")
    return doc


# -- identity: dedup and thread keys

def fingerprint(alert: dict) -> str:
    """Alertmanager's fingerprint, or (from other senders) a hash of the label set."""
    given = alert.get("fingerprint")
    if given:
        return given
    labels = json.dumps(sorted((alert.get("labels") or {}).items()), ensure_ascii=False)
    return hashlib.sha256(labels.encode("utf-8")).hexdigest()[:16]


def group_key(doc: dict) -> str:
    return doc.get("groupKey") or json.dumps(sorted((doc.get("groupLabels") or {}).items()),
                                             ensure_ascii=False)


def dedup_key(doc: dict) -> str:
    identity = [doc.get("receiver") or "", group_key(doc), doc["status"],
                doc.get("truncatedAlerts") or 0,
                [(fingerprint(a), a.get("startsAt") or "", a.get("endsAt") or "") for a in doc["alerts"]]]
    digest = hashlib.sha256(json.dumps(identity, ensure_ascii=False).encode("utf-8")).hexdigest()
    return f"{NAME}:{digest}"


def thread_key(doc: dict) -> str:
    """One thread per alert group: the group key is the same in its firing and resolved mails."""
    return f"{NAME}:{doc.get('receiver') or ''}:{group_key(doc)}"


# -- what the templates see

def http_url(url: str) -> str | None:
    """Only http(s) links become links: a payload must not smuggle a javascript: href."""
    parts = urllib.parse.urlsplit(url.strip())
    return url.strip() if parts.scheme in ("http", "https") and parts.netloc else None


def silence_url(external_url: str | None, labels: Mapping[str, str]) -> str | None:
    """Alertmanager's "new silence" page, prefilled with the alert's exact label set."""
    if not external_url:
        return None
    matchers = ",".join(f'{name}="{_matcher_value(value)}"' for name, value in sorted(labels.items()))
    return f"{external_url}/#/silences/new?filter=" + urllib.parse.quote("{" + matchers + "}", safe="")


def _matcher_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def duration_text(seconds: float) -> str:
    """The two largest units: 42s, 5m 3s, 3h 4m, 2d 3h."""
    seconds = max(0, int(seconds))
    units = [("d", 86400), ("h", 3600), ("m", 60), ("s", 1)]
    parts = []
    for suffix, size in units:
        count, seconds = divmod(seconds, size)
        if count or parts:
            parts.append(f"{count}{suffix}")
        if len(parts) == 2:
            break
    return " ".join(p for p in parts if not p.startswith("0")) or "0s"


def local_time(when: dt.datetime, zone: ZoneInfo) -> str:
    return when.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S %Z")


def severity_rank(severity: str) -> tuple[int, str]:
    return SEVERITY_RANK.get(severity.lower(), len(SEVERITY_RANK)), severity.lower()


def shown_labels(labels: Mapping[str, str], leave_out: Mapping[str, str], config: Config) -> list[tuple[str, str]]:
    return [(name, value) for name, value in sorted(labels.items())
            if name not in leave_out and not matches_any(name, config.hide_labels)]


def alert_view(alert: dict, common: Mapping[str, str], external_url: str | None, config: Config,
               now: dt.datetime) -> dict[str, Any]:
    labels = alert.get("labels") or {}
    annotations = dict(alert.get("annotations") or {})
    starts = _time(alert, "startsAt", "")
    ends = _time(alert, "endsAt", "") if alert["status"] == "resolved" else None
    runbook = annotations.pop("runbook_url", "")
    return {
        "status": alert["status"],
        "name": labels.get("alertname", ""),
        "severity": labels.get("severity", ""),
        "summary": annotations.pop("summary", ""),
        "description": annotations.pop("description", ""),
        "annotations": sorted(annotations.items()),
        "labels": shown_labels(labels, common, config),
        "starts_at": local_time(starts, config.timezone) if starts else None,
        "ends_at": local_time(ends, config.timezone) if ends else None,
        "duration": duration_text(((ends or now) - starts).total_seconds()) if starts else None,
        "generator_url": http_url(alert.get("generatorURL") or ""),
        "runbook_url": http_url(runbook),
        "runbook_text": runbook if runbook and not http_url(runbook) else "",
        "silence_url": silence_url(external_url, labels) if alert["status"] == "firing" else None,
        "fingerprint": fingerprint(alert),
    }


def _ordered(alerts: list[dict]) -> list[dict]:
    """Most severe first, then oldest first: what a capped list should keep."""
    return sorted(alerts, key=lambda a: (severity_rank((a.get("labels") or {}).get("severity", "")),
                                         a.get("startsAt") or "", fingerprint(a)))


def shared_labels(alerts: list[dict]) -> dict[str, str]:
    """What Alertmanager puts in commonLabels, for senders that leave it out."""
    first, *rest = [a.get("labels") or {} for a in alerts]
    return {name: value for name, value in first.items() if all(other.get(name) == value for other in rest)}


def group_view(doc: dict, config: Config, now: dt.datetime) -> dict[str, Any]:
    group_labels = doc.get("groupLabels") or {}
    common = doc.get("commonLabels")
    if common is None:
        common = shared_labels(doc["alerts"])
    external_url = http_url(doc.get("externalURL") or "")
    if external_url:
        external_url = external_url.rstrip("/")
    receiver = doc.get("receiver") or ""
    by_status = {status: _ordered([a for a in doc["alerts"] if a["status"] == status]) for status in STATUSES}
    listed_firing = by_status["firing"][:config.max_alerts]
    listed_resolved = by_status["resolved"][:max(0, config.max_alerts - len(listed_firing))]

    firing = [alert_view(a, common, external_url, config, now) for a in listed_firing]
    resolved = [alert_view(a, common, external_url, config, now) for a in listed_resolved]
    # The summary leads the mail: the group's common one, else the first listed alert's.
    common_summary = (doc.get("commonAnnotations") or {}).get("summary", "")
    lead = common_summary or next((a["summary"] for a in firing + resolved), "")
    return {
        "status": doc["status"],
        "receiver": receiver,
        "alertname": common.get("alertname", ""),
        "severity": common.get("severity", ""),
        "summary": lead,
        "summary_others": len(doc["alerts"]) - 1 if lead and not common_summary else 0,
        "group_labels": sorted(group_labels.items()),
        "common_labels": shown_labels(common, group_labels, config),
        # Alertmanager's default subject: values only, group labels then the other common ones.
        "subject_group_values": [v for _, v in sorted(group_labels.items())],
        "subject_common_values": [v for k, v in sorted(common.items()) if k not in group_labels],
        "alert_count": len(doc["alerts"]),
        "firing_count": len(by_status["firing"]),
        "resolved_count": len(by_status["resolved"]),
        "firing": firing,
        "resolved": resolved,
        "unlisted_firing": len(by_status["firing"]) - len(listed_firing),
        "unlisted_resolved": len(by_status["resolved"]) - len(listed_resolved),
        "max_alerts": config.max_alerts,
        "truncated": doc.get("truncatedAlerts") or 0,
        "external_url": external_url,
        "alerts_url": f"{external_url}/#/alerts?receiver={urllib.parse.quote(receiver)}" if external_url else None,
        "notified_at": local_time(now, config.timezone),
        "timezone": config.timezone.key,
    }


def parse(headers: Mapping[str, str], body: bytes, config: Config, route: str | None = None,
          now: dt.datetime | None = None) -> list[Event]:
    """One Event for the notification. `now` (default: the clock) is when it arrived, for
    how long an alert has been firing."""
    if media_type(headers) != "application/json":
        raise Rejected(415, "send Content-Type: application/json (as Alertmanager does)")
    doc = load_group(body)
    now = now or dt.datetime.now(dt.timezone.utc)
    context = group_view(doc, config, now)
    return [Event(source=NAME, kind=f"{NAME}:{doc['status']}", dedup_key=dedup_key(doc),
                  template=f"{NAME}/notification", context=context,
                  thread_key=thread_key(doc), dedup_window=config.dedup_window,
                  reply_target=reply_target(doc, thread_key(doc)))]
