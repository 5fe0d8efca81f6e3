"""What a reply (or a chat command) does outside: one small module per target, alike.

Each target module has `plan(reply_text, target) -> dict` (sans-I/O: which operation, with
what) and `perform(action, context) -> Outcome` (the API call). An outcome is one of:
`Done` (the API's answer, and the confirmation template that tells the replier), `Refused`
(permanent: a person must change something; the confirmation says what) or `Later`
(temporary: retried with backoff, after `Retry-After` when the API gave one).

`requests` is imported where a call is made, not here: every source imports its target's
`target()` from this package, and the web process, which makes no API call unless a chat
command asks, would otherwise carry it (about 5 MB of its 80 MB; the first chat command pays
the import instead, about 55 ms).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    import requests

USER_AGENT = "bridge-replies/1 (mail replies to GitHub, WeChat, Alertmanager)"


@dataclass(frozen=True)
class Done:
    template: str                              # replies/<template>.txt.j2 tells the replier
    result: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Refused:
    error: str
    hint: str | None = None


@dataclass(frozen=True)
class Later:
    error: str
    after: float | None = None                 # seconds, when the API said (Retry-After)


Outcome = Done | Refused | Later


@dataclass(frozen=True)
class Context:
    """What an action may use: settings, the shared store (tokens, this thread's past actions),
    who replied, and an HTTP session."""

    settings: Any
    store: Any
    sender: str
    thread: str | None
    http: requests.Session


def http_session() -> requests.Session:
    import requests
    session = requests.Session()
    session.headers["User-Agent"] = USER_AGENT
    return session


_QUERY = re.compile(r"\?[^\s)'\"]*")


def call(http, method: str, url: str, timeout: float, **kwargs) -> requests.Response | Later:
    """One API request (`http`: a Session, or the requests module); a network failure or a
    5xx is temporary."""
    import requests
    try:
        response = http.request(method, url, timeout=(min(timeout, 5.0), timeout), **kwargs)
    except requests.RequestException as exc:
        # requests names the URL in its errors, query string and all: WeChat's access_token
        # travels there, and this text reaches logs, the deliveries page and the replier.
        return Later(f"{type(exc).__name__}: {_QUERY.sub('?…', str(exc))[:200]}")
    if response.status_code >= 500:
        return Later(f"HTTP {response.status_code}: {response.text.strip()[:200]}",
                     retry_after(response))
    return response


def retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After", "").strip()
    return float(value) if value.isdigit() else None
