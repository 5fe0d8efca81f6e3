"""The reply reader (bridge/mail/reply.py) over raw mails written the way each client writes
them (tests/reply_samples/*.eml): the new text only, the ignore rules each on its own, charsets
Chinese clients use, and never an exception on arbitrary bytes."""
from __future__ import annotations

import email
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from bridge.mail.htmltext import html_to_text
from bridge.mail.quotes import new_text
from bridge.mail.reply import MAX_CONTAINERS, MAX_HTML, MAX_TEXT, Ignored, Reply, decode_bytes, decode_header, read_reply

SAMPLES = Path(__file__).parent / "reply_samples"
OWN = ("bridge <bridge@example.com>",)
SENT = "<5f2a9c0e1b7d4e8f9a3b6c2d1e0f4a5b.t1.Ab3xY9kQ@example.com>"
ROOT = "<0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f@example.com>"
ALERT = "[FIRING:1] HighLatency api (prod)"
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


# file, sender, subject, text — what the reader must get out of each client's mail
REPLIES = [
    # QQ Mail
    ("qq_gb18030_base64.eml", "ops@qq.com", "回复：" + ALERT, "ack，我来处理"),
    ("qq_html_only_english_ui.eml", "ops@qq.com", "Re: " + ALERT, "silence 2h deploying"),
    ("qq_gb2312_declared_really_gbk.eml", "ops@qq.com", "回复：" + ALERT, "收到，喆哥在处理，预计十分钟恢复"),
    ("qq_mobile_iphone.eml", "ops@qq.com", "回复：" + ALERT, "重启了，看下还报不报"),
    ("qq_html_only_signature_gb18030.eml", "ops@qq.com", "回复：微信 小王：服务器又挂了", "已经通知值班同学"),
    # Foxmail's default signature is the sender's address with no "-- " above it: it stays
    ("foxmail_gb18030.eml", "ops@example.cn", "Re: " + ALERT, "unsilence\n\nops@example.cn"),
    # Aliyun / Alimail: a bare rule, then full-width colons
    ("aliyun_gbk_fullwidth.eml", "ops@example.cn", "回复：" + ALERT, "已回滚到上一个版本。"),
    # 163 / 126
    ("163_gbk_base64.eml", "liwei_ops@163.com", "Re:微信 小王：服务器又挂了", "好的，已经重启了"),
    ("126_halfwidth_mail_master.eml", "liwei@126.com", "回复：" + ALERT, "silence 1h 正在发版"),
    ("163_html_only_gb2312.eml", "liwei_ops@163.com", "回复：" + ALERT, "unsilence"),
    # Gmail
    ("gmail_en_wrapped_attribution.eml", "alice.chen@gmail.com", "Re: " + ALERT, "silence 2h"),
    ("gmail_zh.eml", "chenyu.dev@gmail.com", "Re: 微信 小王：服务器又挂了",
     "我看了下，是数据库连接池满了，正在扩容。\n稍后回复结果。"),
    ("gmail_zh_yu.eml", "chenyu.dev@gmail.com", "Re: 微信 小王：服务器又挂了", "谢谢，已处理"),
    ("gmail_html_only_signature.eml", "alice.chen@gmail.com", "Re: [acme/api] CI failed on main (#42)",
     "Looks like a flaky runner, re-running the job."),
    # Outlook
    ("outlook_ios_en.eml", "bob.smith@contoso.com", "RE: " + ALERT, "Acked, I'm looking at it."),
    ("outlook_zh_gb2312_qp.eml", "zhangsan@contoso.cn", "答复: " + ALERT, "已确认，周三前修复。"),
    ("outlook_web_html_only.eml", "bob.smith@outlook.com", "Re: " + ALERT, "silence 30m"),
    ("outlook_desktop_windows1252.eml", "bob.smith@contoso.com", "RE: [acme/api] Login fails with SSO (#17)",
     "Thanks \u2013 I\u2019ll take this one."),
    ("outlook_original_message.eml", "ops@contoso.com", "RE: [acme/api] deploy",
     "Please hold the deploy until QA signs off."),
    ("outlook_big5.eml", "ops@contoso.com.tw", "回覆: " + ALERT, "收到，我來處理這個告警。"),
    # Apple Mail
    ("apple_iphone_flowed.eml", "carol@icloud.com", "Re: " + ALERT,
     "Silencing for now, the fix is being rolled out to the remaining hosts."),
    ("apple_mac_en.eml", "carol.wu@me.com", "Re: " + ALERT, "unsilence"),
    ("apple_iphone_zh.eml", "zhangsan@icloud.com", "回复：微信 小王：服务器又挂了", "好的，马上看"),
    ("apple_zh_unquoted.eml", "zhangsan@icloud.com", "回复：微信 小王：服务器又挂了", "已经扩容，观察中。"),
    # Thunderbird
    ("thunderbird_flowed_signature.eml", "david.li@example.org", "Re: " + ALERT,
     "Root cause is the expired certificate on the load balancer; renewing it now."),
    ("thunderbird_bottom_post.eml", "david.li@example.org", "Re: " + ALERT,
     "That is the cache node again, I'll restart it."),
    ("thunderbird_html_only.eml", "david.li@example.org", "Re: [acme/api] Login fails with SSO (#17)",
     "Merged the fix, closing."),
    # words that only look like markers stay
    ("mutt_mid_sentence_words.eml", "erin@example.net", "Re: " + ALERT,
     "I wrote: restart the cache first, then the api.\n"
     "The mail header said 发件人: bridge, that is fine.\n"
     "Note: \"Sent from my iPhone\" lines are stripped by the bridge.\n"
     "On the api hosts the disk is at 91%.\n"
     "No, keep it firing -- we need to see it.\n"
     "在会议上他写道：先回滚。"),
]

IGNORED = [
    ("qq_auto_reply.eml", "automatic reply (subject: 自动回复："),
    ("outlook_automatic_reply.eml", "automatic mail (Auto-Submitted: auto-generated)"),
    ("postfix_bounce_dsn.eml", "automatic mail (Auto-Submitted: auto-replied)"),
]


def test_every_sample_is_in_a_table():
    listed = {row[0] for row in REPLIES} | {row[0] for row in IGNORED}
    assert listed == {path.name for path in SAMPLES.glob("*.eml")}


@pytest.mark.parametrize("name, sender, subject, text", REPLIES, ids=[row[0] for row in REPLIES])
def test_reply_samples(name, sender, subject, text):
    raw = sample(name)
    reply = read_reply(raw, OWN)
    assert isinstance(reply, Reply), reply
    assert (reply.sender, reply.subject, reply.text) == (sender, subject, text)
    assert reply.references == (SENT, ROOT)   # In-Reply-To, then References newest first
    own_id = re.search(rb"^Message-ID: (.*?)\r$", raw, re.MULTILINE).group(1).decode()
    assert reply.message_id == own_id


def without_plain_part(raw: bytes) -> bytes:
    msg = email.message_from_bytes(raw)
    msg.set_payload([part for part in msg.get_payload() if part.get_content_type() != "text/plain"])
    return msg.as_bytes()


ALTERNATIVES = [row for row in REPLIES if b"text/plain" in sample(row[0]) and b"text/html" in sample(row[0])]


@pytest.mark.parametrize("name, sender, subject, text", ALTERNATIVES, ids=[row[0] for row in ALTERNATIVES])
def test_the_html_alternative_says_the_same(name, sender, subject, text):
    """Each client's own HTML part, read alone, gives the text its plain part gives."""
    raw = without_plain_part(sample(name))
    assert b"text/plain" not in raw and read_reply(raw, OWN).text == text


@pytest.mark.parametrize("name, reason", IGNORED, ids=[row[0] for row in IGNORED])
def test_ignored_samples(name, reason):
    ignored = read_reply(sample(name), OWN)
    assert isinstance(ignored, Ignored) and ignored.reason.startswith(reason)
    assert ignored.message_id.startswith("<") and "@" in ignored.sender
    assert "\n" not in ignored.reason


# --- each ignore rule alone, on a mail that is otherwise a good reply ---------------------

BASE = "gmail_en_wrapped_attribution.eml"


def edited(raw: bytes, **headers: str | None) -> bytes:
    """The mail with headers replaced (None drops it) or added (Auto_Submitted → Auto-Submitted)."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    lines = re.split(rb"\r\n(?![ \t])", head)
    for key, value in headers.items():
        name = key.replace("_", "-").encode()
        lines = [line for line in lines if not line.lower().startswith(name.lower() + b":")]
        if value is not None:
            lines.insert(1, name + b": " + value.encode("utf-8"))
    return b"\r\n".join(lines) + sep + body


def test_the_base_mail_is_a_reply():
    assert isinstance(read_reply(sample(BASE), OWN), Reply)


RULES = [
    ({"Auto_Submitted": "auto-replied"}, "automatic mail (Auto-Submitted: auto-replied)"),
    ({"Auto_Submitted": "auto-generated"}, "automatic mail (Auto-Submitted: auto-generated)"),
    ({"Auto_Submitted": "auto-notified; owner-email=\"x@example.com\""}, "automatic mail (Auto-Submitted"),
    ({"X_Autoreply": "yes"}, "automatic mail (X-Autoreply: yes)"),
    ({"X_Autorespond": "Out of office"}, "automatic mail (X-Autorespond"),
    ({"X_Autoreply": ""}, "automatic mail (X-Autoreply: )"),
    ({"Precedence": "bulk"}, "automatic mail (Precedence: bulk)"),
    ({"Precedence": "Junk"}, "automatic mail (Precedence: junk)"),
    ({"Precedence": "list"}, "automatic mail (Precedence: list)"),
    ({"From": "MAILER-DAEMON@mx.example.com (Mail Delivery System)"}, "bounce (from mailer-daemon@mx.example.com)"),
    ({"From": "postmaster@qq.com"}, "bounce (from postmaster@qq.com)"),
    ({"Subject": "=?utf-8?B?6Ieq5Yqo5Zue5aSN77ya?= " + ALERT}, "automatic reply (subject: 自动回复："),
    ({"Subject": "自动回复: " + ALERT}, "automatic reply (subject: 自动回复:"),
    ({"Subject": "Automatic reply: " + ALERT}, "automatic reply"),
    ({"Subject": "Auto-Reply: " + ALERT}, "automatic reply"),
    ({"Subject": "Auto: " + ALERT}, "automatic reply"),
    ({"Subject": "Delivery Status Notification (Failure)"}, "automatic reply"),
    ({"Subject": "Undelivered Mail Returned to Sender"}, "automatic reply"),
    ({"Subject": "=?utf-8?B?44CQ57O757uf6YCA5L+h44CR?= " + ALERT}, "automatic reply (subject: 【系统退信】"),
    ({"Subject": "Out of Office: " + ALERT}, "automatic reply"),
    ({"Subject": "Undeliverable: " + ALERT}, "automatic reply"),
    ({"Subject": "=?gb18030?B?zcvQxaO6?=" + ALERT}, "automatic reply (subject: 退信："),
    ({"From": "Bridge <BRIDGE@Example.com>"}, "mail from the bridge's own address (bridge@example.com)"),
    ({"From": "alerts-reply@example.com"}, "mail from the bridge's own address (alerts-reply@example.com)"),
    ({"From": None}, "no sender address (From)"),
    ({"From": "undisclosed-recipients:;"}, "no sender address (From)"),
    ({"In_Reply_To": None, "References": None}, "not a reply"),
]


@pytest.mark.parametrize("headers, reason", RULES, ids=[r for _, r in RULES])
def test_each_ignore_rule(headers, reason):
    ignored = read_reply(edited(sample(BASE), **headers), OWN + ("alerts-reply@example.com",))
    assert isinstance(ignored, Ignored), ignored
    assert ignored.reason.startswith(reason)
    assert ignored.message_id == "<CAH7s9Qx-2kF0p+Vd3c9vZ1bQ8=Y4nQ@mail.gmail.com>"


def test_a_delivery_status_report_alone_is_ignored():
    """The bounce sample without its Auto-Submitted header or bounce sender: the report type
    alone is enough."""
    raw = edited(sample("postfix_bounce_dsn.eml"), Auto_Submitted=None,
                 From="relay@mx.example.com", Subject="Delivery failure")
    assert read_reply(raw, OWN).reason == "delivery-status report (a bounce)"
    nested = raw.replace(b"multipart/report; report-type=delivery-status", b"multipart/mixed")
    assert read_reply(nested, OWN).reason == "delivery-status report (a bounce)"


NOT_IGNORED = [
    {"Auto_Submitted": "no"},
    {"Precedence": "first-class"},
    {"Subject": "Re: Automatic reply handling is broken"},
    {"Subject": "Re: [FIRING:1] OutOfOffice checker down"},
    {"Subject": "Re: Autoscaling stuck"},
    {"From": "bridge.fan@example.com"},
    {"In_Reply_To": None},
    {"References": None},
]


@pytest.mark.parametrize("headers", NOT_IGNORED, ids=[str(h) for h in NOT_IGNORED])
def test_lookalikes_are_replies(headers):
    assert isinstance(read_reply(edited(sample(BASE), **headers), OWN), Reply)


def test_message_id_forms():
    for header, found in [("<a@x> (added by relay)", "<a@x>"), ("\r\n <a@x>", "<a@x>"), ("a@x", "a@x"),
                          (None, "")]:
        assert read_reply(edited(sample(BASE), Message_ID=header)).message_id == found


def test_references_order_and_forms():
    raw = edited(sample(BASE), In_Reply_To="b@x (message from bridge)",
                 References="<a@x>\r\n <b@x> <c@x>  <a@x>")
    assert read_reply(raw).references == ("<b@x>", "<a@x>", "<c@x>")
    raw = edited(sample(BASE), In_Reply_To="<c@x> (Bridge's message of Tue)", References=None)
    assert read_reply(raw).references == ("<c@x>",)


# --- text stripping, line by line -------------------------------------------------------

ORIGINAL = "\n\nHighLatency is firing for api in prod.\nReply `silence 2h` to silence this alert group"
STRIPPED = [
    ("qq", "ok\n------------------ 原始邮件 ------------------\n发件人: \"bridge\"<b@example.com>;\n"
           "发送时间: 2026年12月1日(星期二) 晚上7:52\n收件人: \"ops\"<ops@qq.com>;\n主题: x"),
    ("qq nbsp", "ok\n------------------&nbsp;Original&nbsp;------------------\nFrom: b\nDate: x"),
    ("qq no separator", "ok\n\n发件人: \"bridge\"<b@example.com>;\n发送时间: 2026年12月1日"),
    ("163", "ok\n在 2026-12-01 19:52:35，\"bridge\" <bridge@example.com> 写道：\n>x"),
    ("163 half-width", "ok\n在 2026-12-01 19:52:35, \"bridge\" <bridge@example.com> 写道:"),
    ("gmail zh", "ok\n在 2026年12月1日周二 19:52，bridge <bridge@example.com> 写道：\n\n> x"),
    ("gmail zh wrapped", "ok\n在 2026年12月1日周二 19:52，bridge <\nbridge@example.com> 写道：\n\n> x"),
    ("gmail zh 于", "ok\nbridge <bridge@example.com> 于2026年12月1日周二 19:52写道：\n> x"),
    ("gmail en", "ok\nOn Tue, Dec 1, 2026 at 7:52 PM bridge <bridge@example.com> wrote:\n> x"),
    ("gmail en wrapped", "ok\nOn Tue, Dec 1, 2026 at 7:52 PM bridge <\nbridge@example.com> wrote:\n> x"),
    ("gmail en wrapped thrice", "ok\nOn Tue, Dec 1, 2026 at 7:52 PM\nbridge\n<bridge@example.com> wrote:"),
    ("outlook", "ok\n________________________________\nFrom: bridge <b@example.com>\n"
                "Sent: Tuesday, December 1, 2026 7:52 PM\nTo: ops\nSubject: x"),
    ("outlook no rule", "ok\n\nFrom: bridge <b@example.com>\nSent: Tuesday, December 1, 2026 7:52 PM"),
    ("outlook bold", "ok\n\n*From:* bridge <b@example.com>\n*Sent:* Tuesday, December 1, 2026"),
    ("outlook zh", "ok\n\n发件人: bridge <b@example.com>\n发送时间: 2026年12月1日 19:52\n收件人: ops"),
    ("outlook zh full-width colon", "ok\n\n发件人： bridge\n发送时间： 2026年12月1日 19:52"),
    ("outlook rule alone", "ok\n\n________________________________"),
    ("original message", "ok\n\n-----Original Message-----\nFrom: b\nSent: x"),
    ("original message zh", "ok\n\n-----原始邮件-----\n发件人: b\n发送时间: x"),
    ("outlook 2010 zh", "ok\n\n-----邮件原件-----\n发件人: b\n发送时间: x"),
    ("apple en", "ok\n\nOn 1 Dec 2026, at 19:52, bridge <bridge@example.com> wrote:\n\n> x"),
    ("apple zh", "ok\n\n2026年12月1日 19:52，bridge <bridge@example.com> 写道：\n\n> x"),
    ("thunderbird", "ok\n\nOn 12/1/26 7:52 PM, bridge wrote:\n> x"),
    ("gmail narrow no-break space", "ok\n\nOn Tue, Dec 1, 2026 at 7:52\u202fPM bridge <b@example.com> wrote:"),
    ("yahoo", "ok\n\nOn Tuesday, December 1, 2026, 07:52:35 PM GMT+8, bridge <b@example.com> wrote:"),
    ("outlook for mac", "ok\n\nFrom: bridge <b@example.com>\nDate: Tuesday, 1 December 2026 at 19:52\nTo: ops"),
    ("aliyun rule and header", "ok\n\n------------------------------------------------------------------\n"
                               "发件人：bridge <b@example.com>\n发送时间：2026年12月1日(星期二) 19:52\n收件人：ops"),
    ("signature", "ok\n-- \nWei Zhang\nSRE"),
    ("signature without space", "ok\n--\nWei"),
    ("sent from my iphone", "ok\n\nSent from my iPhone"),
    ("sent from my android", "ok\nSent from my Samsung Galaxy smartphone."),
    ("发自我的iPhone", "ok\n\n发自我的iPhone"),
    ("发自我的 iPad", "ok\n\n发自我的 iPad"),
    ("从我的 iPhone 发送", "ok\n\n从我的 iPhone 发送"),
    ("网易邮箱大师", "ok\n\n发自网易邮箱大师"),
    ("网易邮箱手机智能版", "ok\n\n发自我的网易邮箱手机智能版"),
    ("华为手机", "ok\n\n发自我的华为手机"),
    ("QQ邮箱", "ok\n\n发自我的QQ邮箱"),
    ("yahoo footer", "ok\n\nSent from Yahoo Mail for iPhone"),
    ("outlook ios", "ok\n\nGet Outlook for iOS<https://aka.ms/o0ukef>"),
    ("outlook android", "ok\n\nGet Outlook for Android"),
]


@pytest.mark.parametrize("case, text", STRIPPED, ids=[c for c, _ in STRIPPED])
def test_new_text_strips(case, text):
    assert new_text("  " + text + ORIGINAL + "\r\n") == "ok"


KEPT = [
    "He wrote: restart it",
    "I wrote: 重启",
    "我在邮件里写道：先回滚",
    "On call this week: Wei",
    "On 3 hosts the disk is full",
    "From: here on we page Wei",
    "发件人: 不认识",
    "Sent from my iPhone? No, from the laptop, the deploy is blocked",
    "It said Sent from my iPhone",
    "发自我的iPhone的消息都很短",
    "发自我的手机的消息都很短",
    "-----",
    "-- no, wait",
    "a -- b",
    "______ underlined ______",
    "see -----Original Message----- above",
]


@pytest.mark.parametrize("line", KEPT)
def test_new_text_keeps_lookalikes(line):
    assert new_text(f"{line}\nsecond line") == f"{line}\nsecond line"


def test_quoted_lines_go_wherever_they_are():
    assert new_text("> a\nok\n>> b\n  > c\n＞ d\nfine") == "ok\nfine"


def test_bottom_posting_keeps_the_text_below_the_quote():
    text = "On 12/1/26 7:52 PM, bridge wrote:\n> a\n> b\n\nmine\n\n> c\n\nmore\n-- \nsig"
    assert new_text(text) == "mine\n\nmore"


def test_many_attributions_in_a_row():
    assert new_text("On 1 Dec 2026, b wrote:\n" * 4000 + "> x\nmine") == "mine"


def test_a_reply_of_quotes_only_is_empty():
    assert new_text("On 12/1/26 7:52 PM, bridge wrote:\n> a\n") == ""
    assert new_text("\n\n------------------ 原始邮件 ------------------\n发件人: b\n主题: x\n\nbody") == ""


# --- HTML --------------------------------------------------------------------------------

HTML = [
    ("<div>ok</div><blockquote>quoted <b>bold</b><blockquote>deeper</blockquote> still</blockquote>", "ok"),
    ("<style>p{color:red}</style><script>alert(1)</script><p>ok</p>", "ok"),
    ("<div>ok</div><div class=\"gmail_quote extra\">On … wrote:<blockquote>x</blockquote></div>", "ok"),
    ("<div>ok</div><div id=\"isReplyContent\">x</div>", "ok"),
    ("<div>ok</div><div class=\"yahoo_quoted\">On Tuesday … wrote:<div>x</div></div>", "ok"),
    ("<div>ok</div><div class=\"protonmail_quote\">x</div>", "ok"),
    ("<div>ok</div><div id=\"QQMailSignature\">王伟<br>运维</div><div class=\"qmbox\">x</div>", "ok"),
    ("<div>ok</div><div id=\"divRplyFwdMsg\">From: x</div><div>the original, not quoted</div>", "ok"),
    ("<div>ok</div><hr><div><b>From:</b> b<br><b>Sent:</b> x</div>", "ok"),
    ("<div>line one</div><div><br></div><div>line&nbsp;two &amp; three</div>", "line one\n\nline two & three"),
    ("<p>a<br>b</p><p>c</p>", "a\nb\nc"),
    ("<pre>keep   this\nspacing</pre>", "keep   this\nspacing"),
    ("<div>ok<blockquote>never closed", "ok"),
    ("</div></blockquote>ok<br/></p>", "ok"),
    ("<div>ok</div><br><img src=x><wbr>", "ok"),
]


@pytest.mark.parametrize("html, text", HTML, ids=[t for _, t in HTML])
def test_html_to_text(html, text):
    assert new_text(html_to_text(html)) == text


# --- charsets ----------------------------------------------------------------------------

@pytest.mark.parametrize("data, charset, text", [
    ("喆".encode("gbk"), "gb2312", "喆"),              # declared gb2312, really GBK
    ("喆".encode("gbk"), "GB_2312-80", "喆"),
    ("𠀀".encode("gb18030"), "gbk", "𠀀"),             # a four-byte GB18030 character
    ("處理".encode("big5"), "big5", "處理"),
    ("碁".encode("big5hkscs"), "big5", "碁"),
    ("处理".encode("gbk"), None, "处理"),              # undeclared: not UTF-8, so GB18030
    ("处理".encode("utf-8"), "gb2312", "处理"),        # declared wrongly
    ("处理".encode("utf-8"), "x-unknown", "处理"),
    ("处理".encode("utf-8"), "rot13", "处理"),         # a codec, but not a text one
    (b"\xff", 'utf-8"; format=flowed', "\ufffd"),   # a bogus name b"".decode() lets through
    (b"\xff\xfe\xff", "utf-8", "\ufffd\ufffd\ufffd"),
])
def test_decode_bytes(data, charset, text):
    assert decode_bytes(data, charset) == text


def test_decode_header():
    # a UTF-8 character split across two encoded words, joined before decoding
    assert decode_header("=?UTF-8?B?5L2g5Q==?=\r\n =?UTF-8?B?pb3lpb0=?= x") == "你好好 x"
    assert decode_header("=?gb2312?B?u9i4tKO6?= =?utf-8?Q?=E5=A5=BD_x?=") == "回复：好 x"
    assert decode_header("Re: " + "回复".encode("gbk").decode("utf-8", "surrogateescape")) == "Re: 回复"
    assert decode_header("=?bogus?B?!!!?= =?utf-8?X?y?=") == "=?bogus?B?!!!?= =?utf-8?X?y?="
    assert decode_header("=?bogus?B?aGk=?=") == "hi"


def test_gbk_headers_sent_raw():
    """A client that sends 8-bit GBK headers unencoded (no RFC 2047)."""
    raw = edited(sample(BASE), Subject=None, From=None)
    raw = raw.replace(b"\r\n", b"\r\nSubject: " + "回复：告警".encode("gbk")
                      + b"\r\nFrom: " + "王伟".encode("gbk") + b" <Wang@163.com>\r\n", 1)
    reply = read_reply(raw)
    assert (reply.subject, reply.sender) == ("回复：告警", "wang@163.com")


def test_subject_is_one_line():
    raw = edited(sample(BASE), Subject="=?utf-8?B?5Zue5aSN?=\r\n =?utf-8?B?77ya?=\r\n [FIRING:1]\r\n\tDisk")
    assert read_reply(raw).subject == "回复： [FIRING:1] Disk"


def test_a_huge_reply_is_read_only_so_far():
    head = edited(sample(BASE), Content_Type="text/plain").partition(b"\r\n\r\n")[0]
    for body in (b"On 1 " * 22_000, b"> x\r\nok\r\n" * 12_000):
        reply = read_reply(head + b"\r\n\r\n" + body)
        assert 0 < len(reply.text) <= MAX_TEXT
    html = edited(sample(BASE), Content_Type="text/html").partition(b"\r\n\r\n")[0]
    # past MAX_HTML, and stray end tags that once cost a scan of every open tag each
    reply = read_reply(html + b"\r\n\r\n" + b"<div>x" * 52_000 + b"</span>" * 20_000)
    assert 0 < len(reply.text) <= MAX_HTML // len("<div>x") * len("x\n")


def test_plain_text_is_preferred_and_attachments_are_not_text():
    body = (b"--b\r\nContent-Type: text/plain; name=log.txt\r\nContent-Disposition: attachment\r\n\r\n"
            b"not this\r\n--b\r\nContent-Type: text/html\r\n\r\n<p>html</p>\r\n"
            b"--b\r\nContent-Type: text/plain\r\n\r\n   \r\n--b\r\nContent-Type: message/rfc822\r\n\r\n"
            b"Subject: fwd\r\n\r\nforwarded\r\n--b--\r\n")
    head = edited(sample(BASE), Content_Type='multipart/mixed; boundary="b"').partition(b"\r\n\r\n")[0]
    assert read_reply(head + b"\r\n\r\n" + body).text == "html"


# --- never an exception -------------------------------------------------------------------

@pytest.mark.parametrize("kind", [b"multipart/mixed", b"message/rfc822"])
def test_deeply_nested_parts(kind):
    """The stdlib parser recurses once per nested part (RecursionError at ~1,000, seconds before
    that): too many is a reason, not a crash or a stall; what is there is walked without
    recursion."""
    def nested(depth: int) -> bytes:
        opened = b"".join(b'Content-Type: %s; boundary="b%d"\r\n\r\n--b%d\r\n' % (kind, n, n)
                          for n in range(depth))
        closed = b"".join(b"\r\n--b%d--" % n for n in reversed(range(depth)))
        return (b"From: a@example.com\r\nIn-Reply-To: <x@example.com>\r\n" + opened
                + b"Content-Type: text/plain\r\n\r\ndeep" + closed + b"\r\n")
    assert read_reply(nested(5000)) == Ignored("unreadable mail (more than 100 multipart or message parts)")
    assert isinstance(read_reply(nested(MAX_CONTAINERS)), Reply)
    if kind.startswith(b"multipart"):
        assert read_reply(nested(MAX_CONTAINERS)).text == "deep"


def test_control_characters_are_dropped():
    raw = edited(sample(BASE), Subject="Re:\x00 x\x07", From="a\x00b@example.com",
                 Content_Type="text/plain", Content_Transfer_Encoding="8bit")
    head = raw.partition(b"\r\n\r\n")[0]
    reply = read_reply(head + b"\r\n\r\nok\x00 \x1b[31mred\r\n")
    assert (reply.subject, reply.sender, reply.text) == ("Re: x", "ab@example.com", "ok [31mred")


def well_formed(result) -> bool:
    """What a caller stores: text a database takes (UTF-8, no NUL), a one-line reason."""
    if isinstance(result, Reply):
        values, line = [result.subject, result.text, *result.references], result.subject
    else:
        values, line = [result.reason], result.reason
    values += [result.message_id, result.sender]
    return ("\n" not in line and all("\x00" not in value for value in values)
            and all(value.encode("utf-8") is not None for value in values))


@FUZZ
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_raise(raw):
    assert well_formed(read_reply(raw, OWN))


ALL_SAMPLES = sorted(SAMPLES.glob("*.eml"))


@FUZZ
@given(st.sampled_from(ALL_SAMPLES), st.lists(st.tuples(st.integers(0, 10_000), st.binary(max_size=12)),
                                            max_size=6))
def test_mangled_samples_never_raise(path, edits):
    raw = bytearray(path.read_bytes())
    for at, junk in edits:
        at %= len(raw) + 1
        raw[at:at + len(junk)] = junk
    assert well_formed(read_reply(bytes(raw), OWN))


@FUZZ
@given(st.lists(st.sampled_from(["ok", "> q", "-- ", "On 1 Dec 2026, bridge wrote:", "发件人: b",
                                 "发送时间: x", "", "在 2026-12-01 19:52，b 写道：", "______" * 5])
                | st.text(st.characters(blacklist_characters="\r\n"), max_size=100), max_size=12))
def test_new_text_only_removes_lines(lines):
    kept = new_text("\n".join(lines))
    assert set(kept.split("\n")) <= {line.strip() for line in lines} | {
        line.rstrip() for line in lines} | {""}


HEADER_VALUES = st.text(st.characters(blacklist_categories=("Cs",)), max_size=60) | st.sampled_from([
    "text/html; charset=rot13", "text/plain; charset*=''", "multipart/mixed; boundary=\"\"",
    "multipart/report", "text/plain; format=flowed; delsp=yes", "text/plain; charset=\"utf-16\"",
    "base64", "quoted-printable", "x-uuencode", "=?utf-8?B?====?=", "=?gb2312?Q?=ZZ?=", "<>", "<@>"])


@FUZZ
@given(st.dictionaries(st.sampled_from(["From", "Subject", "Content_Type", "Content_Transfer_Encoding",
                                        "In_Reply_To", "References", "Auto_Submitted", "Precedence",
                                        "Message_ID"]), HEADER_VALUES, max_size=5),
       st.sampled_from(ALL_SAMPLES))
def test_odd_header_values_never_raise(headers, path):
    headers = {key: value.replace("\r", " ").replace("\n", " ") for key, value in headers.items()}
    assert well_formed(read_reply(edited(path.read_bytes(), **headers), OWN))
