"""GET, POST /wechat: a WeChat official account's server URL (基本配置 → 服务器配置).

Sans-I/O: bytes and the query string in, fields / events / reply bytes out. WeChat signs the
query string, not headers, so the mapping every function here takes is the request's query.
Modes: plain (`signature`), compatible and safe (`encrypt_type=aes` + `msg_signature`; the
message is read from the envelope only, never from the compatible mode's plaintext copy).
Protocol notes: ../shared/docs/wechat-protocol.md; the HTTP side is bridge/wechat_web.py.
"""
from __future__ import annotations

import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Mapping
from xml.etree.ElementTree import Element, ParseError
from zoneinfo import ZoneInfo

import defusedxml
from defusedxml.ElementTree import fromstring

from bridge.actions.wechat import target as reply_target
from bridge.settings import EnvReader, SettingsError
from bridge.events import Answer, Event, Rejected, matches_any
from bridge.sources import wechat_crypto as crypto

NAME = "wechat"
MAX_BODY = 1024 * 1024
TOKEN_SHAPE = re.compile(r"[A-Za-z0-9]{3,32}")
MESSAGE_TEMPLATES = {"text": "text", "image": "image", "voice": "voice", "video": "video",
                     "shortvideo": "video", "location": "location", "link": "link"}
DEFAULT_REPLY = "已转发到邮箱 ✓"


@dataclass(frozen=True)
class Config:
    token: str = field(repr=False)
    app_id: str
    aes_keys: tuple[bytes, ...] = field(repr=False)   # current first; the previous one during rotation
    app_secret: str = field(repr=False)
    require_aes: bool
    allowed_users: tuple[str, ...]
    user_names: Mapping[str, str]
    forward_events: tuple[str, ...]
    reply_text: str
    rate_limit: int              # forwards per sender per `rate_window` seconds (allow-list unset)
    rate_window: float
    timestamp_window: int
    timezone: ZoneInfo
    alertmanager_url: str
    alertmanager_timeout: float

    @property
    def enabled(self) -> bool:
        return bool(self.token)

    def name_of(self, openid: str) -> str:
        return self.user_names.get(openid, openid)

    def may_use(self, openid: str) -> bool:
        return not self.allowed_users or openid in self.allowed_users


def _aes_keys(env: EnvReader) -> tuple[bytes, ...]:
    keys = []
    for value in env.list("WECHAT_AES_KEY"):
        try:
            keys.append(crypto.decode_key(value))
        except ValueError as exc:
            raise SettingsError(f"WECHAT_AES_KEY: {exc} (copy EncodingAESKey from the console)") from None
    return tuple(keys)


def _ascii_number(text: str) -> bool:
    """0-9 only: str.isdigit() also takes '²' and other digits int() refuses."""
    text = text.strip()
    return text.isascii() and text.isdecimal()


def _rate(env: EnvReader) -> tuple[int, float]:
    raw = env.str("WECHAT_RATE_LIMIT", "20/600")
    count, _, seconds = raw.partition("/")
    if not (_ascii_number(count) and _ascii_number(seconds) and int(seconds) > 0):
        raise SettingsError(f"WECHAT_RATE_LIMIT={raw!r} must look like 20/600 "
                            "(messages per sender / seconds)")
    return int(count), float(seconds)


def load_config(env: EnvReader) -> Config:
    token = env.str("WECHAT_TOKEN")
    if token and not TOKEN_SHAPE.fullmatch(token):
        raise SettingsError("WECHAT_TOKEN must be 3-32 letters or digits (as in the console)")
    aes_keys = _aes_keys(env)
    app_id = env.str("WECHAT_APPID")
    if aes_keys and not app_id:
        raise SettingsError("WECHAT_APPID is required with WECHAT_AES_KEY (safe mode checks it)")
    require_aes = env.bool("WECHAT_REQUIRE_AES", False)
    if require_aes and not aes_keys:
        raise SettingsError("WECHAT_REQUIRE_AES=true needs WECHAT_AES_KEY")
    am_url = env.str("ALERTMANAGER_URL").rstrip("/")
    if am_url and not am_url.startswith(("http://", "https://")):
        raise SettingsError("ALERTMANAGER_URL must start with http:// or https://")
    rate_limit, rate_window = _rate(env)
    return Config(
        token=token, app_id=app_id, aes_keys=aes_keys, app_secret=env.str("WECHAT_APPSECRET"),
        require_aes=require_aes,
        allowed_users=env.list("WECHAT_ALLOWED_USERS"),
        user_names=env.pairs("WECHAT_USER_NAMES"),
        forward_events=tuple(e.lower() for e in env.list("WECHAT_FORWARD_EVENTS")),
        reply_text=env.str("WECHAT_REPLY_TEXT") or DEFAULT_REPLY,
        rate_limit=rate_limit, rate_window=rate_window,
        timestamp_window=env.int("WECHAT_TIMESTAMP_WINDOW", 300, minimum=1),
        timezone=env.zone("BRIDGE_TIMEZONE"),
        alertmanager_url=am_url,
        alertmanager_timeout=env.float("ALERTMANAGER_TIMEOUT", 2.0, minimum=0.1),
    )


# -- the request: signature, timestamp, envelope, XML

@dataclass(frozen=True)
class Inbound:
    """One opened POST: its fields, and what a reply needs to be sealed like the request."""

    fields: Mapping[str, str]        # top-level elements → text
    details: Mapping[str, str]       # nested elements, as dotted paths (events carry some)
    xml: bytes                       # the plaintext message (decrypted in safe mode)
    key: bytes | None                # the AES key that opened it; None: plain mode
    nonce: str

    def get(self, name: str) -> str:
        return self.fields.get(name, "")


def _fresh(params: Mapping[str, str], config: Config, now: float) -> str:
    stamp = params.get("timestamp", "")
    if not _ascii_number(stamp):
        raise Rejected(403, "missing or malformed timestamp")
    if abs(int(stamp) - now) > config.timestamp_window:
        raise Rejected(403, f"timestamp is more than {config.timestamp_window} s from now "
                            "(replayed, or the server clock is off)")
    return stamp


def _signed(params: Mapping[str, str], config: Config, now: float) -> None:
    stamp = _fresh(params, config, now)
    if not crypto.signature_ok(params.get("signature", ""), config.token, stamp,
                               params.get("nonce", "")):
        raise Rejected(403, "bad signature (check WECHAT_TOKEN)")


def verify_url(params: Mapping[str, str], config: Config, now: float) -> str:
    """GET URL verification: the `echostr` to answer, byte for byte."""
    _signed(params, config, now)
    return params.get("echostr", "")


def parse_xml(data: bytes) -> tuple[dict[str, str], dict[str, str]]:
    """WeChat XML → (top-level fields, nested fields by dotted path). No DTDs, no entities."""
    try:
        root = fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except defusedxml.DefusedXmlException as exc:
        raise Rejected(400, f"XML refused ({type(exc).__name__}): WeChat never sends a DTD") from None
    except (ParseError, ValueError) as exc:
        raise Rejected(400, f"malformed XML: {str(exc)[:120]}") from None
    fields: dict[str, str] = {}
    details: dict[str, str] = {}
    for path, child in _children(root, ""):
        if len(child):
            _flatten(child, path, details)
        else:
            fields.setdefault(child.tag, child.text or "")
    return fields, details


def _children(element: Element, parent: str):
    """(dotted path, child) pairs; a repeated tag gets its position: `List[0]`, `List[1]`."""
    repeats = Counter(child.tag for child in element)
    for n, child in enumerate(element):
        path = f"{parent}.{child.tag}" if parent else child.tag
        yield (f"{path}[{n}]" if repeats[child.tag] > 1 else path), child


def _flatten(element: Element, path: str, into: dict[str, str]) -> None:
    for name, child in _children(element, path):
        if len(child):
            _flatten(child, name, into)
        else:
            into[name] = (child.text or "").strip()


def _open_envelope(params: Mapping[str, str], fields: Mapping[str, str], config: Config,
                   now: float) -> tuple[bytes, bytes]:
    if not config.aes_keys:
        raise Rejected(403, "an encrypted (safe mode) message, but WECHAT_AES_KEY is not set")
    encrypted = fields.get("Encrypt", "").strip()
    if not encrypted:
        raise Rejected(400, "encrypt_type=aes but the body has no <Encrypt>")
    stamp = _fresh(params, config, now)
    if not crypto.signature_ok(params.get("msg_signature", ""), config.token, stamp,
                               params.get("nonce", ""), encrypted):
        raise Rejected(403, "bad msg_signature (check WECHAT_TOKEN)")
    last_error = None
    for key in config.aes_keys:
        try:
            return crypto.decrypt(encrypted, key, config.app_id), key
        except crypto.CryptoError as exc:
            last_error = exc
    raise Rejected(403, f"the message does not decrypt: {last_error}")


def open_message(params: Mapping[str, str], body: bytes, config: Config, now: float) -> Inbound:
    """Authenticate and read one POST (plain, compatible or safe mode)."""
    nonce = params.get("nonce", "")
    if params.get("encrypt_type", "raw").lower() not in ("", "raw"):
        xml, key = _open_envelope(params, parse_xml(body)[0], config, now)
        return Inbound(*parse_xml(xml), xml, key, nonce)
    if config.require_aes:
        raise Rejected(403, "plain-mode message refused: WECHAT_REQUIRE_AES=true")
    _signed(params, config, now)
    return Inbound(*parse_xml(body), body, None, nonce)


# -- the reply

def _cdata(text: str) -> str:
    return "<![CDATA[" + text.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def text_reply(msg: Inbound, text: str, now: float) -> str:
    """A passive text reply: From/To swapped."""
    return (f"<xml><ToUserName>{_cdata(msg.get('FromUserName'))}</ToUserName>"
            f"<FromUserName>{_cdata(msg.get('ToUserName'))}</FromUserName>"
            f"<CreateTime>{int(now)}</CreateTime><MsgType>{_cdata('text')}</MsgType>"
            f"<Content>{_cdata(text)}</Content></xml>")


def seal(msg: Inbound, reply_xml: str, config: Config, now: float) -> bytes:
    """The reply as WeChat wants it: plain for a plain request, else an encrypted envelope."""
    if msg.key is None:
        return reply_xml.encode("utf-8")
    encrypted = crypto.encrypt(reply_xml.encode("utf-8"), msg.key, config.app_id)
    stamp = str(int(now))
    nonce = msg.nonce or stamp
    sig = crypto.signature(config.token, stamp, nonce, encrypted)
    return (f"<xml><Encrypt>{_cdata(encrypted)}</Encrypt>"
            f"<MsgSignature>{_cdata(sig)}</MsgSignature>"
            f"<TimeStamp>{stamp}</TimeStamp><Nonce>{_cdata(nonce)}</Nonce></xml>").encode("utf-8")


# -- message → events

def dedup_key(msg: Inbound) -> str:
    """`MsgId` for messages; `FromUserName` + `CreateTime` for events (they have no MsgId),
    plus the event's name: two different events of one second (a customer-service session
    opened and closed) are two events, while a retry repeats all three."""
    msg_id = msg.get("MsgId").strip()[:64]
    if msg.get("MsgType").strip() != "event" and msg_id:
        return f"wechat:msg:{msg_id}"
    return (f"wechat:event:{msg.get('FromUserName').strip()[:128]}:{msg.get('CreateTime').strip()[:32]}"
            f":{msg.get('Event').strip()[:64]}")


def _local_time(msg: Inbound, config: Config) -> str:
    stamp = msg.get("CreateTime").strip()
    try:
        when = datetime.fromtimestamp(int(stamp), config.timezone)
    except (ValueError, OverflowError, OSError):   # not a time WeChat would send: use ours
        when = datetime.now(config.timezone)
    return when.strftime("%Y-%m-%d %H:%M:%S %Z")


def _coordinates(lat: str, lon: str) -> tuple[float, float] | None:
    try:
        lat_f, lon_f = float(lat), float(lon)
    except ValueError:
        return None
    return (lat_f, lon_f) if -90 <= lat_f <= 90 and -180 <= lon_f <= 180 else None


def _location(msg: Inbound) -> dict[str, object]:
    point = _coordinates(msg.get("Location_X").strip(), msg.get("Location_Y").strip())
    # WeChat reports GCJ-02 coordinates, which is what AMap's marker URL expects.
    map_url = (f"https://uri.amap.com/marker?position={point[1]},{point[0]}" if point else None)
    return {"latitude": msg.get("Location_X").strip(), "longitude": msg.get("Location_Y").strip(),
            "scale": msg.get("Scale").strip(), "label": msg.get("Label"), "map_url": map_url}


def _image_attachments(msg: Inbound) -> tuple[dict[str, object], ...]:
    url = msg.get("PicUrl").strip()
    if not url.startswith(("http://", "https://")):
        return ()
    return ({"url": url, "filename": f"wechat-{msg.get('MsgId').strip() or 'image'}",
             "accept": "image/"},)


def _context(msg: Inbound, config: Config) -> dict[str, object]:
    openid = msg.get("FromUserName").strip()
    fields = {name: value for name, value in msg.fields.items() if name != "Encrypt"}
    return {
        "sender": config.name_of(openid), "openid": openid,
        "display_name": config.user_names.get(openid), "account": msg.get("ToUserName").strip(),
        "time": _local_time(msg, config), "msg_type": msg.get("MsgType").strip(),
        "msg_id": msg.get("MsgId").strip(), "content": msg.get("Content"),
        "pic_url": msg.get("PicUrl").strip(), "media_id": msg.get("MediaId").strip(),
        "thumb_media_id": msg.get("ThumbMediaId").strip(), "format": msg.get("Format").strip(),
        "recognition": msg.get("Recognition").strip(),
        "title": msg.get("Title"), "description": msg.get("Description"),
        "url": msg.get("Url").strip(), "event_name": msg.get("Event").strip(),
        "event_key": msg.get("EventKey").strip(),
        "fields": sorted({**fields, **msg.details}.items()),
        **(_location(msg) if msg.get("MsgType").strip() == "location" else {}),
    }


def wanted_event(msg: Inbound, config: Config) -> bool:
    return matches_any(msg.get("Event").strip().lower(), config.forward_events)


def events_for(msg: Inbound, config: Config) -> list[Event]:
    """The mail(s) one message makes: none for unknown types and for events not forwarded."""
    msg_type = msg.get("MsgType").strip()
    if msg_type == "event":
        if not wanted_event(msg, config):
            return []
        template = "wechat/event"
    elif msg_type in MESSAGE_TEMPLATES:
        template = f"wechat/{MESSAGE_TEMPLATES[msg_type]}"
    else:
        return []
    openid = msg.get("FromUserName").strip()
    key = dedup_key(msg)
    what = msg.get("Event").strip()[:64] if msg_type == "event" else msg_type
    return [Event(source=NAME, kind=f"wechat:{what}", dedup_key=key, template=template, context=_context(msg, config),
                  thread_key=f"wechat:{openid}", headers={"X-WeChat-OpenID": openid},
                  attachments=_image_attachments(msg) if msg_type == "image" else (),
                  delivery_id=key.split(":", 2)[2], reply_target=reply_target(openid))]


def command_record(msg: Inbound, config: Config, command: str) -> Event:
    """A chat command as an outbox row that is never mailed: its dedup key stops a retry
    from running the command twice."""
    key = dedup_key(msg)
    return Event(source=NAME, kind=f"wechat:command.{command}", dedup_key=key,
                 template="wechat/text", context=_context(msg, config),
                 ignored=f"chat command /{command}", delivery_id=key.split(":", 2)[2])


# -- the module interface every source has (the blueprint uses the pieces above directly,
#    because a WeChat answer also needs the opened message to seal the reply)

def verify(params: Mapping[str, str], body: bytes, config: Config) -> None:
    open_message(params, body, config, time.time())


def parse(params: Mapping[str, str], body: bytes, config: Config) -> list[Event] | Answer:
    events = events_for(open_message(params, body, config, time.time()), config)
    return events or Answer("ignored", "not a message type or event that is forwarded")


class RateLimiter:
    """Forwards per sender in a sliding window, counted in this process (a restart forgets,
    and each web process counts on its own: a flood guard, not an accounting). A retry of a
    message it let through passes again, so the retry is answered as the duplicate it is."""

    def __init__(self, limit: int, window: float):
        self.limit = limit
        self.window = window
        self.seen: dict[str, list[tuple[float, str]]] = {}
        self.lock = threading.Lock()

    def allows(self, who: str, key: str, now: float) -> bool:
        if not self.limit:
            return True
        with self.lock:
            recent = [(t, k) for t, k in self.seen.get(who, ()) if t > now - self.window]
            if recent:
                self.seen[who] = recent
            else:
                self.seen.pop(who, None)
            return len(recent) < self.limit or any(k == key for _, k in recent)

    def record(self, who: str, key: str, now: float) -> None:
        with self.lock:
            self.seen.setdefault(who, []).append((now, key))
