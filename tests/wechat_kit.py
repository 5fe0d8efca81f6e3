"""What the WeChat server does, for tests: sign a query, seal a body, open a sealed reply.

Sealing uses bridge's crypto, which the known-answer vectors in test_wechat_crypto pin
independently (deterministic re-encryption of Tencent's and WeChat's own samples).
"""
from __future__ import annotations

import itertools
import json
import time
from xml.etree import ElementTree

from bridge.sources import wechat_crypto as crypto

TOKEN = "spamtest"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
APPID = "wx2c2769f8efd9abc2"
WECHAT_ENV = {"WECHAT_TOKEN": TOKEN, "WECHAT_AES_KEY": AES_KEY, "WECHAT_APPID": APPID}
_nonces = itertools.count(1000)


def signed_query(now: float | None = None, token: str = TOKEN, **extra) -> dict[str, str]:
    stamp, nonce = str(int(now if now is not None else time.time())), str(next(_nonces))
    return {"signature": crypto.signature(token, stamp, nonce), "timestamp": stamp, "nonce": nonce, **extra}


def seal_request(xml: bytes, now: float | None = None, compat: bool = False) -> tuple[dict[str, str], bytes]:
    """(query, body) of a safe-mode (or compatible-mode) POST carrying `xml`."""
    query = signed_query(now, encrypt_type="aes")
    encrypted = crypto.encrypt(xml, crypto.decode_key(AES_KEY), APPID)
    query["msg_signature"] = crypto.signature(TOKEN, query["timestamp"], query["nonce"], encrypted)
    if compat:
        body = xml.rstrip()[:-len(b"</xml>")] + f"<Encrypt><![CDATA[{encrypted}]]></Encrypt></xml>".encode()
    else:
        body = f"<xml><ToUserName><![CDATA[gh_x]]></ToUserName><Encrypt><![CDATA[{encrypted}]]></Encrypt></xml>".encode()
    return query, body


def fields(xml: bytes) -> dict[str, str]:
    return {child.tag: child.text or "" for child in ElementTree.fromstring(xml)}


def open_reply(body: bytes) -> dict[str, str]:
    """A sealed reply → its inner fields, after checking MsgSignature the way WeChat does."""
    outer = fields(body)
    assert outer["MsgSignature"] == crypto.signature(TOKEN, outer["TimeStamp"], outer["Nonce"], outer["Encrypt"])
    return fields(crypto.decrypt(outer["Encrypt"], crypto.decode_key(AES_KEY), APPID))


def post(client, xml: bytes, mode: str = "plain", now: float | None = None):
    if mode == "plain":
        query, body = signed_query(now), xml
    else:
        query, body = seal_request(xml, now, compat=(mode == "compat"))
    return client.post("/wechat", query_string=query, data=body, content_type="text/xml")


def reply_text(response, mode: str = "plain") -> str | None:
    """The passive reply's Content; None for `success`."""
    if response.data == b"success":
        return None
    inner = fields(response.data) if mode == "plain" else open_reply(response.data)
    return inner["Content"]


def message(content: str = "hello", sender: str = "oUser1", msg_id: int = 1, msg_type: str = "text",
            **more: str) -> bytes:
    parts = {"ToUserName": "gh_account", "FromUserName": sender, "CreateTime": str(int(time.time())),
             "MsgType": msg_type, **({"Content": content} if msg_type == "text" else {}), **more}
    if msg_type != "event":
        parts["MsgId"] = str(msg_id)
    inner = "".join(f"<{k}>{cdata(v)}</{k}>" for k, v in parts.items())
    return f"<xml>{inner}</xml>".encode()


def cdata(text: str) -> str:
    return "<![CDATA[" + text.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def vectors(corpus) -> dict:
    return json.loads((corpus / "wechat" / "crypto-vectors.json").read_text("utf-8"))
