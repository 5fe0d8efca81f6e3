"""GET, POST /wechat through the Flask test client: every corpus file in plain and safe mode,
the corpus envelopes, hostile bodies, signatures and timestamps, duplicates, who may forward."""
import json
import logging
import re

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from bridge.outbox import IGNORED, QUEUED
from bridge.settings import EnvReader, SettingsError
from bridge.sources import wechat
from tests.wechat_kit import (AES_KEY, TOKEN, WECHAT_ENV, fields, message, open_reply, post,
                              reply_text, seal_request, signed_query)

CORPUS_DIRS = ("messages", "wecom")
FORWARDED_TYPES = set(wechat.MESSAGE_TEMPLATES)


def rows(app):
    return app.extensions["bridge"].outbox.recent(limit=500)


@pytest.fixture
def wx(make_app):
    def make(**env):
        return make_app(**{**WECHAT_ENV, **env})
    return make


@pytest.fixture
def client(wx):
    return wx().test_client()


def corpus_files(corpus):
    return sorted(p for d in CORPUS_DIRS for p in (corpus / "wechat" / d).glob("*.xml"))


# -- the corpus, in plain and safe mode

@pytest.mark.parametrize("mode", ["plain", "aes", "compat"])
def test_every_corpus_message(corpus, wx, mode):
    app = wx(WECHAT_FORWARD_EVENTS="*")
    client = app.test_client()
    files = corpus_files(corpus)
    assert len(files) >= 34
    for n, path in enumerate(files):
        raw = fresh_ids(path.read_bytes(), n)
        sent = fields(raw)
        before = len(rows(app))
        r = post(client, raw, mode)
        assert r.status_code == 200, (path.name, r.data)
        made = rows(app)[: len(rows(app)) - before]
        if sent["MsgType"] in FORWARDED_TYPES:
            assert reply_text(r, "plain" if mode == "plain" else "aes") == "已转发到邮箱 ✓", path.name
            (row,) = made
            assert row.status == QUEUED and row.subject.startswith("[微信] ")
            assert sent["FromUserName"] in row.text
            if sent["MsgType"] == "text":
                assert sent["Content"] in row.text, path.name
        elif sent["MsgType"] == "event":
            assert r.data == b"success" and len(made) == 1, path.name
            assert sent["Event"] in row_kinds(made)
        else:   # unknown message types: `success`, nothing mailed
            assert r.data == b"success" and not made, path.name


def fresh_ids(raw, n):
    """Like the simulator's --fresh-ids: the doc samples share ids and times."""
    raw = re.sub(rb"<MsgId>\s*\d+\s*</MsgId>", b"<MsgId>%d</MsgId>" % (10 ** 12 + n), raw)
    return re.sub(rb"<CreateTime>\s*\d+\s*</CreateTime>", b"<CreateTime>%d</CreateTime>" % (10 ** 9 + n), raw)


def row_kinds(made):
    return " ".join(row.kind for row in made)


def test_events_are_not_mailed_unless_asked(corpus, wx):
    app = wx()
    client = app.test_client()
    for path in sorted((corpus / "wechat" / "messages").glob("event-*.xml")):
        assert post(client, path.read_bytes()).data == b"success"
    assert rows(app) == []


def test_forward_events_picks_by_name(wx):
    app = wx(WECHAT_FORWARD_EVENTS="subscribe,scan")
    client = app.test_client()
    for event in ("subscribe", "SCAN", "CLICK", "unsubscribe"):
        post(client, message(msg_type="event", Event=event, CreateTime=str(len(event))))
    assert sorted(r.kind for r in rows(app)) == ["wechat:SCAN", "wechat:subscribe"]


def test_corpus_envelopes(corpus, wx):
    """The encrypted/ files as POSTed, with their own query, key and AppID."""
    index = json.loads((corpus / "wechat" / "index.json").read_text("utf-8"))
    envelopes = [e for e in index["files"] if e["file"].startswith("encrypted/")]
    assert len(envelopes) == 4
    for entry in envelopes:
        app = wx(WECHAT_TOKEN=entry["token"], WECHAT_AES_KEY=entry["encoding_aes_key"],
                 WECHAT_APPID=entry["receive_id"], WECHAT_TIMESTAMP_WINDOW=str(10 ** 10))
        body = (corpus / "wechat" / entry["file"]).read_bytes()
        r = app.test_client().post("/wechat", query_string=entry["query"], data=body)
        if entry["mode"] == "wecom":   # WeCom callbacks are another protocol: not served here
            assert r.status_code == 403, entry["file"]
            continue
        assert r.status_code == 200, (entry["file"], r.data)
        outer = fields(r.data)
        assert set(outer) == {"Encrypt", "MsgSignature", "TimeStamp", "Nonce"}
        assert rows(app)[0].kind == "wechat:text"
    assert len(rows(app)) == 2


def test_corpus_replies_are_what_we_send(corpus):
    """Our reply has the shape of replies/reply-text.xml; the corpus' sealed reply opens."""
    sample = fields((corpus / "wechat" / "replies" / "reply-text.xml").read_bytes())
    msg = wechat.Inbound({"FromUserName": sample["ToUserName"], "ToUserName": sample["FromUserName"]},
                         {}, b"", None, "1")
    ours = fields(wechat.text_reply(msg, sample["Content"], int(sample["CreateTime"])).encode())
    assert ours == sample
    assert (corpus / "wechat" / "replies" / "reply-success.txt").read_bytes().strip() == b"success"
    for name in ("reply-image.xml", "reply-news.xml", "reply-encrypted-wecom.xml"):
        assert wechat.parse_xml((corpus / "wechat" / "replies" / name).read_bytes())[0]
    inner = open_reply((corpus / "wechat" / "replies" / "reply-encrypted-oa.xml").read_bytes())
    assert inner["MsgType"] == "text" and inner["Content"]


# -- URL verification and signatures

def test_url_verification_doc_example(wx):
    client = wx(WECHAT_TOKEN="AAAAA", WECHAT_AES_KEY=None, WECHAT_APPID=None,
                WECHAT_TIMESTAMP_WINDOW=str(10 ** 10)).test_client()
    query = {"signature": "f464b24fc39322e44b38aa78f5edd27bd1441696", "timestamp": "1714036504",
             "nonce": "1514711492", "echostr": "4375120948345356249"}
    r = client.get("/wechat", query_string=query)
    assert (r.status_code, r.data) == (200, b"4375120948345356249")
    r = client.get("/wechat", query_string={**query, "nonce": "1514711493"})
    assert r.status_code == 403 and b"4375120948345356249" not in r.data


def test_url_verification_echoes_exactly(client):
    echo = "abc+/= 测试"
    r = client.get("/wechat", query_string=signed_query(echostr=echo))
    assert r.status_code == 200 and r.data == echo.encode()


@pytest.mark.parametrize("spoil", [
    {"signature": "0" * 40}, {"signature": ""}, {"timestamp": ""}, {"timestamp": "12x"},
    {"nonce": "other"},
])
def test_bad_signatures_are_403(client, spoil):
    query = {**signed_query(), **spoil}
    assert client.get("/wechat", query_string={**query, "echostr": "e"}).status_code == 403
    assert client.post("/wechat", query_string=query, data=message()).status_code == 403


@pytest.mark.parametrize("skew", [-301, 301, -86400])
def test_stale_or_future_timestamps_are_403(app_now, skew):
    app, now = app_now
    client = app.test_client()
    r = client.post("/wechat", query_string=signed_query(now + skew), data=message())
    assert r.status_code == 403 and b"timestamp" in r.data
    query, body = seal_request(message(msg_id=9), now + skew)
    assert client.post("/wechat", query_string=query, data=body).status_code == 403
    assert rows(app) == []


@pytest.fixture
def app_now(wx):
    import time
    return wx(), time.time()


def test_timestamp_window_is_configurable(wx):
    import time
    client = wx(WECHAT_TIMESTAMP_WINDOW="30").test_client()
    assert client.post("/wechat", query_string=signed_query(time.time() - 60), data=message()).status_code == 403
    assert client.post("/wechat", query_string=signed_query(time.time() - 20), data=message()).status_code == 200


def test_safe_mode_checks_msg_signature_not_signature(client):
    query, body = seal_request(message())
    query["msg_signature"] = query["signature"]       # the plain signature does not cover Encrypt
    assert client.post("/wechat", query_string=query, data=body).status_code == 403


def test_safe_mode_wrong_appid_is_403(wx):
    client = wx(WECHAT_APPID="wx0000000000000000").test_client()
    query, body = seal_request(message())
    r = client.post("/wechat", query_string=query, data=body)
    assert r.status_code == 403 and b"AppID" in r.data


def test_compatible_mode_trusts_only_the_envelope(wx):
    app = wx()
    query, body = seal_request(message("the real text", msg_id=5), compat=True)
    forged = body.replace(b"the real text", b"forged plaintext copy", 1)
    r = app.test_client().post("/wechat", query_string=query, data=forged)
    assert r.status_code == 200
    (row,) = rows(app)
    assert "the real text" in row.text and "forged" not in row.text


def test_require_aes_refuses_plain(wx):
    client = wx(WECHAT_REQUIRE_AES="true").test_client()
    assert post(client, message(msg_id=1)).status_code == 403
    assert reply_text(post(client, message(msg_id=2), "aes"), "aes") == "已转发到邮箱 ✓"


def test_safe_mode_without_a_key_is_403(wx):
    client = wx(WECHAT_AES_KEY=None, WECHAT_APPID=None).test_client()
    assert post(client, message(), "aes").status_code == 403
    assert post(client, message()).status_code == 200


def test_key_rotation_replies_with_the_key_that_worked(wx):
    new_key = "B" * 43
    client = wx(WECHAT_AES_KEY=f"{new_key},{AES_KEY}").test_client()
    r = post(client, message(), "aes")
    assert reply_text(r, "aes") == "已转发到邮箱 ✓"     # open_reply uses the old key


def test_off_without_token(make_app):
    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logging.getLogger("bridge").addHandler(handler)
    try:
        client = make_app().test_client()
    finally:
        logging.getLogger("bridge").removeHandler(handler)
    assert client.get("/wechat", query_string=signed_query(echostr="x")).status_code == 404
    assert client.post("/wechat", query_string=signed_query(), data=message()).status_code == 404
    assert any("WECHAT_TOKEN is not set" in line and "/wechat" in line for line in seen)


@pytest.mark.parametrize("env, variable", [
    ({"WECHAT_TOKEN": "a b"}, "WECHAT_TOKEN"),
    ({"WECHAT_TOKEN": "x" * 33}, "WECHAT_TOKEN"),
    ({"WECHAT_TOKEN": "tok", "WECHAT_AES_KEY": "short", "WECHAT_APPID": "wx1"}, "WECHAT_AES_KEY"),
    ({"WECHAT_TOKEN": "tok", "WECHAT_AES_KEY": AES_KEY}, "WECHAT_APPID"),
    ({"WECHAT_TOKEN": "tok", "WECHAT_REQUIRE_AES": "true"}, "WECHAT_REQUIRE_AES"),
    ({"WECHAT_RATE_LIMIT": "lots"}, "WECHAT_RATE_LIMIT"),
    ({"WECHAT_USER_NAMES": "no-equals-sign"}, "WECHAT_USER_NAMES"),
    ({"WECHAT_TIMESTAMP_WINDOW": "0"}, "WECHAT_TIMESTAMP_WINDOW"),
    ({"ALERTMANAGER_URL": "am:9093"}, "ALERTMANAGER_URL"),
])
def test_bad_settings_name_the_variable(env, variable):
    with pytest.raises(SettingsError, match=variable):
        wechat.load_config(EnvReader(env))


def test_config_repr_hides_secrets():
    config = wechat.load_config(EnvReader({**WECHAT_ENV, "WECHAT_APPSECRET": "s3cr3tappsecret"}))
    assert TOKEN not in repr(config) and "s3cr3tappsecret" not in repr(config)


# -- hostile and malformed bodies

XXE = b"""<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<xml><ToUserName>gh</ToUserName><FromUserName>o1</FromUserName><CreateTime>1</CreateTime>
<MsgType>text</MsgType><Content>&x;</Content><MsgId>77</MsgId></xml>"""
LAUGHS = b"""<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">
<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
<!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">]>
<xml><MsgType>text</MsgType><Content>&lol4;</Content><MsgId>78</MsgId></xml>"""
PARAMETER_ENTITY = b"""<!DOCTYPE x [<!ENTITY % p SYSTEM "http://127.0.0.1:9/x.dtd"> %p;]><xml/>"""

HOSTILE = {
    "xxe": XXE, "billion-laughs": LAUGHS, "parameter-entity": PARAMETER_ENTITY,
    "unclosed": b"<xml><MsgType>text</MsgType><Content>hi", "not-xml": b"hello there",
    "empty": b"", "bad-utf8": b"<xml><Content>\xff\xfe</Content></xml>",
    "json": b'{"MsgType": "text"}', "two-roots": b"<xml/><xml/>",
}


@pytest.mark.parametrize("mode", ["plain", "aes"])
@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_bodies_are_a_clean_400(wx, name, mode):
    app = wx()
    r = post(app.test_client(), HOSTILE[name], mode)
    assert r.status_code == 400, r.data
    assert b"root:" not in r.data and b"lollol" not in r.data and len(r.data) < 300
    assert rows(app) == []


def test_doctype_typed_by_a_user_is_just_text(wx):
    app = wx()
    r = post(app.test_client(), message("<!DOCTYPE html><script>alert(1)</script> &amp;"))
    assert r.status_code == 200
    (row,) = rows(app)
    assert "<!DOCTYPE html><script>alert(1)</script> &amp;" in row.text


def test_nested_and_odd_structures_never_fail(wx):
    app = wx(WECHAT_FORWARD_EVENTS="*")
    body = (b"<xml><ToUserName>gh</ToUserName><FromUserName>o1</FromUserName><CreateTime>5</CreateTime>"
            b"<MsgType>event</MsgType><Event>brand_new_event</Event><A><B><C>deep</C></B><B>two</B></A>"
            b"<List><X>1</X></List><List><X>2</X></List><MsgType>again</MsgType></xml>")
    r = post(app.test_client(), body)
    assert r.status_code == 200 and r.data == b"success"
    (row,) = rows(app)
    assert "A.B[0].C: deep" in row.text and "A.B[1]: two" in row.text
    assert "List[6].X: 1" in row.text and "List[7].X: 2" in row.text


@pytest.mark.parametrize("created", ["99999999999999999999", "-5", "soon", ""])
def test_odd_create_times_are_not_a_failure(wx, created):
    app = wx()
    r = post(app.test_client(), message("hi", CreateTime=created))
    assert reply_text(r) == "已转发到邮箱 ✓"


def test_body_over_1_mb_is_413(wx):
    app = wx()
    big = message("x" * (1024 * 1024))
    r = post(app.test_client(), big)
    assert r.status_code == 413
    assert post(app.test_client(), message("x" * (1024 * 1024 - 400))).status_code == 200


def test_crlf_in_content_never_reaches_a_header(wx):
    app = wx()
    post(app.test_client(), message("hi\r\nBcc: attacker@example.com\r\nSubject: x"))
    (row,) = rows(app)
    from bridge.mail.compose import compose
    msg = compose(row)
    assert msg["Bcc"] is None and len(msg.get_all("Subject")) == 1


# -- duplicates, who may forward, rate limits, replies

@pytest.mark.parametrize("mode", ["plain", "aes"])
def test_a_retry_is_a_duplicate(wx, mode):
    app = wx()
    client = app.test_client()
    first = post(client, message("once", msg_id=4242), mode)
    again = post(client, message("once", msg_id=4242), mode)
    assert reply_text(first, mode) == "已转发到邮箱 ✓"
    assert "已经转发过" in reply_text(again, mode)
    assert len(rows(app)) == 1


def test_events_dedupe_on_sender_and_create_time(wx):
    app = wx(WECHAT_FORWARD_EVENTS="*")
    client = app.test_client()
    for sender, created in (("o1", "100"), ("o1", "100"), ("o2", "100"), ("o1", "101")):
        post(client, message(msg_type="event", sender=sender, Event="subscribe", CreateTime=created))
    assert len(rows(app)) == 3


def test_allowed_users(wx):
    app = wx(WECHAT_ALLOWED_USERS="oBoss, oDeputy")
    client = app.test_client()
    assert reply_text(post(client, message(sender="oBoss", msg_id=1))) == "已转发到邮箱 ✓"
    refused = reply_text(post(client, message(sender="oStranger", msg_id=2)))
    assert "没有转发" in refused
    assert post(client, message(msg_type="event", sender="oStranger", Event="subscribe")).data == b"success"
    assert [r.delivery_id for r in rows(app)] == ["1"]


def test_rate_limit_per_sender(wx):
    app = wx(WECHAT_RATE_LIMIT="2/600")
    client = app.test_client()
    replies = [reply_text(post(client, message(sender="oFlood", msg_id=n))) for n in range(1, 5)]
    assert replies[:2] == ["已转发到邮箱 ✓"] * 2
    assert all("太频繁" in text and "2" in text for text in replies[2:])
    assert "已经转发过" in reply_text(post(client, message(sender="oFlood", msg_id=1)))
    assert reply_text(post(client, message(sender="oCalm", msg_id=9))) == "已转发到邮箱 ✓"
    assert len(rows(app)) == 3


def test_allow_list_replaces_the_rate_limit(wx):
    app = wx(WECHAT_RATE_LIMIT="1/600", WECHAT_ALLOWED_USERS="oBoss")
    client = app.test_client()
    for n in range(3):
        assert reply_text(post(client, message(sender="oBoss", msg_id=n))) == "已转发到邮箱 ✓"


def test_reply_text_and_display_names(wx):
    app = wx(WECHAT_REPLY_TEXT="收到", WECHAT_USER_NAMES="oBoss=王老板")
    r = post(app.test_client(), message("第一句话。第二句话还有很多很多很多很多很多很多很多很多很多很多很多很多很多很多很多很多很多很多很多很多很多很多很多很多很多很多很多很多很多很多字", sender="oBoss"))
    assert reply_text(r) == "收到"
    (row,) = rows(app)
    assert row.subject.startswith("[微信] 王老板: 第一句话。第二句话")
    assert row.subject.endswith("…") and len(row.subject) < 80
    assert "王老板 (oBoss)" in row.text


def test_message_kinds(wx):
    app = wx()
    client = app.test_client()
    post(client, message(msg_type="voice", msg_id=1, MediaId="m1", Format="amr", Recognition="明天开会"))
    post(client, message(msg_type="voice", msg_id=2, MediaId="m-unrecognised", Format="amr"))
    post(client, message(msg_type="shortvideo", msg_id=3, MediaId="v1", ThumbMediaId="t1"))
    post(client, message(msg_type="location", msg_id=4, Location_X="39.9", Location_Y="116.4",
                         Scale="15", Label="天安门"))
    post(client, message(msg_type="link", msg_id=5, Title="标题", Description="说明", Url="https://e.x/a"))
    post(client, message(msg_type="image", msg_id=6, PicUrl="https://pic.example/p", MediaId="i1"))
    got = {row.delivery_id: row for row in rows(app)}
    assert "明天开会" in got["1"].text and "明天开会" in got["1"].subject
    assert "m-unrecognised" in got["2"].text
    assert "v1" in got["3"].text and "t1" in got["3"].text and "[视频]" in got["3"].subject
    assert "https://uri.amap.com/marker?position=116.4,39.9" in got["4"].text and "天安门" in got["4"].subject
    assert "https://e.x/a" in got["5"].text and "说明" in got["5"].text
    assert "https://pic.example/p" in got["6"].text
    assert json.loads(got["6"].attachments) == [
        {"url": "https://pic.example/p", "filename": "wechat-6", "accept": "image/"}]


def test_rows_do_not_keep_the_signature(wx):
    app = wx()
    post(app.test_client(), message(), "aes")
    (row,) = rows(app)
    record = json.loads(row.request)
    assert record["path"] == "/wechat" and "signature" not in json.dumps(record)
    assert "<Content>" in record["body"]      # the decrypted message, not the envelope


def test_parse_interface(wx):
    config = wechat.load_config(EnvReader(WECHAT_ENV))
    events = wechat.parse(signed_query(), message("hi"), config)
    assert [e.kind for e in events] == ["wechat:text"]
    assert wechat.parse(signed_query(), message(msg_type="event", Event="subscribe"), config).status == "ignored"
    with pytest.raises(wechat.Rejected):
        wechat.verify({**signed_query(), "signature": "x"}, message(), config)


def test_commands_are_stored_but_never_mailed(wx):
    app = wx(WECHAT_ALLOWED_USERS="oUser1")
    post(app.test_client(), message("/help", msg_id=31))
    assert [r.status for r in rows(app)] == [IGNORED]


def test_without_an_allow_list_nobody_runs_commands(wx):
    app = wx()
    text = reply_text(post(app.test_client(), message("/silence DiskFull 1d", msg_id=32)))
    assert "WECHAT_ALLOWED_USERS" in text
    assert rows(app) == []


# -- any text a user can type arrives whole; any body is a 200 or a clean 4xx

XML_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\ufffe\uffff",
                          min_codepoint=0x9).filter(lambda c: c in "\t\n" or ord(c) >= 0x20)
ANY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@ANY
@given(content=st.text(XML_CHARS, min_size=1, max_size=300).filter(str.strip))
def test_any_text_arrives_whole(wx_once, content):
    app, ids = wx_once
    r = post(app.test_client(), message(content, sender="oProp", msg_id=next(ids)), "aes")
    assert reply_text(r, "aes") == "已转发到邮箱 ✓"
    row = rows(app)[0]
    assert content in row.text and "\n" not in row.subject


@ANY
@given(body=st.binary(max_size=2000))
def test_any_body_is_a_200_or_a_clean_4xx(wx_once, body):
    app, _ = wx_once
    r = app.test_client().post("/wechat", query_string=signed_query(), data=body)
    assert r.status_code in (200, 400)


@pytest.fixture
def wx_once(wx):
    import itertools
    return wx(WECHAT_RATE_LIMIT="0/1"), itertools.count(10 ** 6)


def test_time_is_in_bridge_timezone(wx):
    app = wx(BRIDGE_TIMEZONE="Asia/Shanghai")
    post(app.test_client(), message("hi", CreateTime="1714112505"))
    (row,) = rows(app)
    assert "2024-04-26 14:21:45 CST" in row.text


def test_rate_limit_reply_names_the_window(wx):
    client = wx(WECHAT_RATE_LIMIT="1/30").test_client()
    post(client, message(msg_id=1))
    assert "每 30 秒最多转发 1 条" in reply_text(post(client, message(msg_id=2)))
