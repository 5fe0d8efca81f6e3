"""Blueprint: GET, POST /wechat — the thin HTTP side of bridge/sources/wechat.py.

WeChat drops a request it has no answer to within 5 s and sends it again, so nothing slow
happens here: a message is stored in the outbox and answered at once (the sender mails it,
downloading any picture, later); a chat command gets a hard time budget. Answers are what
WeChat expects — the echostr, `success`, or a (sealed) reply — never JSON.
"""
from __future__ import annotations

import dataclasses
import logging
import time

from flask import Blueprint, Response, current_app, request

from bridge import commands
from bridge.actions import wechat as wechat_actions
from bridge.intake import DATABASE_DOWN, request_record, store
from bridge.logs import log_line
from bridge.sources import wechat
from bridge.events import Rejected
from bridge.web import read_body

bp = Blueprint("wechat", __name__)
COMMAND_BUDGET = 3.5   # seconds a chat command may take, leaving room inside WeChat's 5 s


@bp.record_once
def _setup(state) -> None:
    services = state.app.extensions["bridge"]
    config = services.settings.sources[wechat.NAME]
    state.app.extensions["wechat_limiter"] = wechat.RateLimiter(config.rate_limit, config.rate_window)
    if not config.enabled:
        log_line("startup", note="WECHAT_TOKEN is not set: the WeChat endpoint /wechat is off (404)")


def _services():
    return current_app.extensions["bridge"]


def _reply(name: str, **context) -> str:
    template = _services().renderer.env.get_template(f"wechat/replies/{name}.txt.j2")
    return template.render(context).strip()


@bp.route("/wechat", methods=["GET", "POST"])
def endpoint():
    started = time.monotonic()
    config = _services().settings.sources[wechat.NAME]
    if not config.enabled:
        return Response("the WeChat endpoint is off (WECHAT_TOKEN is not set)\n", 404, mimetype="text/plain")
    params = request.args.to_dict()
    try:
        if request.method == "GET":
            code, body, outcome = 200, wechat.verify_url(params, config, time.time()), "verified"
        else:
            code, body, outcome = _message(params, config)
    except Rejected as exc:
        code, body, outcome = exc.status, exc.reason + "\n", "rejected"
    except DATABASE_DOWN as exc:
        log_line("store_failed", logging.ERROR, error=f"{type(exc).__name__}: {exc}"[:300])
        code, body, outcome = 503, "the outbox database is unavailable; try again\n", "error"
    except Exception as exc:  # a bug must not become a 500 that WeChat retries three times
        current_app.logger.exception("wechat message failed")
        code, body, outcome = 400, f"message could not be read ({type(exc).__name__})\n", "error"
    log_line("request", source=wechat.NAME, method=request.method, code=code, outcome=outcome,
             reason=body.strip()[:200] if code >= 400 else None,
             ms=round((time.monotonic() - started) * 1000))
    mimetype = "application/xml" if isinstance(body, bytes) else "text/plain"
    return Response(body, code, mimetype=mimetype)


def _message(params, config) -> tuple[int, str | bytes, str]:
    with read_body(wechat.MAX_BODY) as body:
        now = time.time()
        msg = wechat.open_message(params, body, config, now)
    text, outcome = _handle(msg, config, now)
    if text is None:
        return 200, "success", outcome
    return 200, wechat.seal(msg, wechat.text_reply(msg, text, now), config, now), outcome


def _handle(msg: wechat.Inbound, config, now: float) -> tuple[str | None, str]:
    """(passive reply text, or None for `success`; outcome for the log). Events get `success`."""
    text, outcome = _decide(msg, config, now)
    return (None if msg.get("MsgType").strip() == "event" else text), outcome


def _decide(msg: wechat.Inbound, config, now: float) -> tuple[str | None, str]:
    openid = msg.get("FromUserName").strip()
    if not config.may_use(openid):
        return _reply("not_allowed"), "not allowed"
    command = commands.parse_command(msg.get("Content")) if msg.get("MsgType").strip() == "text" else None
    if command is not None:
        if not config.allowed_users:  # a public account's followers must not silence alerts
            return _reply("commands_off"), "command refused"
        return _command(msg, command, config)
    events = wechat.events_for(msg, _with_known_name(config, openid))
    if not events:
        return None, "ignored"
    limiter = current_app.extensions["wechat_limiter"]
    key = events[0].dedup_key
    if not config.allowed_users and not limiter.allows(openid, key, now):
        return _reply("limited", limit=config.rate_limit, window=config.rate_window), "limited"
    stored = [_store(msg, event) for event in events]
    if any(s.status == "accepted" for s in stored):
        limiter.record(openid, key, now)
        return config.reply_text, "accepted"
    return _reply("duplicate"), "duplicate"


def _with_known_name(config, openid: str):
    """The config, naming this follower by the remark the account gave them when the bridge
    has looked it up (bridge/actions/wechat.py, once it holds an access token);
    WECHAT_USER_NAMES wins."""
    if openid in config.user_names or _services().settings.replies is None:
        return config
    name = _services().replies.read_state(wechat_actions.name_key(openid))[0]
    return dataclasses.replace(config, user_names={**config.user_names, openid: name}) if name else config


def _store(msg: wechat.Inbound, event):
    services = _services()
    record = request_record("POST", "/wechat", {}, msg.xml)
    return store(services, event, services.settings.mail_to, None, record)


def _command(msg: wechat.Inbound, command: commands.Command, config) -> tuple[str, str]:
    # Stored as an ignored row first: a WeChat retry of the same MsgId never runs it twice,
    # and the deliveries page shows who ran what.
    stored = _store(msg, wechat.command_record(msg, config, command.name))
    if stored.status == "duplicate":
        return _reply("command_duplicate", content=msg.get("Content")), "duplicate command"
    sender = config.name_of(msg.get("FromUserName").strip())
    name, context = commands.run(command, config, _services(), sender, COMMAND_BUDGET)
    return _reply(name, **context), f"command {command.name}: {name}"
