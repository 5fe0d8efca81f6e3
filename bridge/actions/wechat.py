"""WeChat: a reply goes back to the follower as customer-service text messages (客服消息).

The access token comes from `cgi-bin/stable_token` (which, unlike `cgi-bin/token`, does not
invalidate the copy another process holds) and is cached in the database, shared by every
process; a token WeChat calls invalid (40001, 40014, 42001) is fetched again once.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Mapping

from bridge.actions import Context, Done, Later, Refused, call
from bridge.logs import log_line

TEXT_LIMIT = 2048                    # bytes of UTF-8 per text message (45002 past it)
TOKEN_MARGIN = 300                   # seconds before expiry a cached token is renewed
STALE_TOKEN = (40001, 40014, 42001)
NAME_SECONDS = 86400.0               # a remark learned is used this long, then looked up again
PERMANENT = {
    45015: "more than 48 hours passed since the follower last wrote (or they unfollowed): "
           "WeChat lets the account answer only within 48 hours of the follower's message",
    45047: "the customer-service quota for this follower is used up (5 messages per message "
           "they send); it resets when they write again",
    48001: "this account may not send customer-service messages: the interface needs a "
           "verified (微信认证) service or subscription account",
    40164: "WeChat refused the bridge's IP address: add it to the IP whitelist "
           "(基本配置 → IP白名单) in the official-account console",
    40013: "WECHAT_APPID is not a valid AppID",
    40125: "WECHAT_APPSECRET is wrong",
    40003: "the follower's OpenID is not valid for this account",
}


def target(openid: str) -> dict[str, Any]:
    return {"target": "wechat", "openid": openid}


def plan(text: str, target: Mapping[str, Any]) -> dict[str, Any]:
    return {**target, "op": "send", "parts": split_text(text)}


def split_text(text: str, limit: int = TEXT_LIMIT) -> list[str]:
    """Pieces of at most `limit` UTF-8 bytes, cut at a line break where one is near."""
    parts, rest = [], text.strip()
    while len(rest.encode("utf-8")) > limit:
        cut = len(rest.encode("utf-8")[:limit].decode("utf-8", "ignore"))
        newline = rest.rfind("\n", 0, cut)
        cut = newline if newline > cut // 2 else cut
        parts.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip("\n")
    return parts + ([rest] if rest else [])


def _errcode(doc: Mapping[str, Any]) -> int:
    try:
        return int(doc.get("errcode") or 0)
    except (TypeError, ValueError):
        return -1


def _failure(doc: Mapping[str, Any]) -> Refused | Later:
    code = _errcode(doc)
    error = f"WeChat errcode {code}: {doc.get('errmsg', '')}"
    if code in PERMANENT:
        return Refused(error, PERMANENT[code])
    if code == -1 or code == 45009:      # system busy; API call frequency limit
        return Later(error)
    return Refused(error)


def access_token(ctx: Context, force: bool = False) -> str | Refused | Later:
    """The cached token, or a new one from stable_token (`force`: the cached one was refused)."""
    replies = ctx.settings.replies
    name = f"wechat_token:{replies.wechat_appid}"
    cached, expires_at = ctx.store.read_state(name)
    if cached and not force and (expires_at or 0) > time.time() + TOKEN_MARGIN:
        return cached
    if not (replies.wechat_appid and replies.wechat_secret):
        return Refused("WECHAT_APPID and WECHAT_APPSECRET are needed to answer WeChat followers")
    response = call(ctx.http, "POST", f"{replies.wechat_api_url}/cgi-bin/stable_token", replies.api_timeout,
                    json={"grant_type": "client_credential", "appid": replies.wechat_appid,
                          "secret": replies.wechat_secret, "force_refresh": force})
    if isinstance(response, Later):
        return response
    doc = _json(response)
    if not doc.get("access_token"):
        return _failure(doc)
    ctx.store.write_state(name, doc["access_token"], time.time() + float(doc.get("expires_in") or 7200))
    return doc["access_token"]


def _json(response) -> dict[str, Any]:
    try:
        doc = response.json()
    except ValueError:
        return {"errcode": -1, "errmsg": f"HTTP {response.status_code}, not JSON"}
    return doc if isinstance(doc, dict) else {"errcode": -1, "errmsg": "not a JSON object"}


def _send(ctx: Context, openid: str, text: str) -> dict[str, Any] | Refused | Later:
    for force in (False, True):
        token = access_token(ctx, force)
        if not isinstance(token, str):
            return token
        response = call(ctx.http, "POST", f"{ctx.settings.replies.wechat_api_url}/cgi-bin/message/custom/send",
                        ctx.settings.replies.api_timeout, params={"access_token": token},
                        json={"touser": openid, "msgtype": "text", "text": {"content": text}})
        if isinstance(response, Later):
            return response
        doc = _json(response)
        if _errcode(doc) not in STALE_TOKEN:
            return doc if _errcode(doc) == 0 else _failure(doc)
    return _failure(doc)


def name_key(openid: str) -> str:
    return f"wechat_name:{openid}"


def learn_name(ctx: Context, openid: str) -> None:
    """Keep the remark the account gave this follower (`cgi-bin/user/info`), for the next mails
    about them; only with an access token at hand, and a failure only means no name."""
    replies = ctx.settings.replies
    token, expires_at = ctx.store.read_state(f"wechat_token:{replies.wechat_appid}")
    known, until = ctx.store.read_state(name_key(openid))
    if not token or (expires_at or 0) < time.time() or (known and (until or 0) > time.time()):
        return
    response = call(ctx.http, "GET", f"{replies.wechat_api_url}/cgi-bin/user/info", replies.api_timeout,
                    params={"access_token": token, "openid": openid, "lang": "zh_CN"})
    remark = _json(response).get("remark") if not isinstance(response, Later) else None
    if isinstance(remark, str) and remark.strip():
        ctx.store.write_state(name_key(openid), remark.strip()[:64], time.time() + NAME_SECONDS)


def perform(action: Mapping[str, Any], ctx: Context) -> Done | Refused | Later:
    # A retry after a temporary failure starts from the first part again: WeChat has no
    # idempotency key, and a repeated line is better than a lost one.
    for part in action["parts"]:
        outcome = _send(ctx, action["openid"], part)
        if not isinstance(outcome, dict):
            return outcome
    try:  # the answer is sent: nothing here may make the runner send it again
        learn_name(ctx, action["openid"])
    except Exception as exc:  # noqa: BLE001
        log_line("wechat_name_failed", logging.WARNING, error=f"{type(exc).__name__}: {exc}"[:200])
    return Done("wechat_sent", {"openid": action["openid"], "messages": len(action["parts"])})
