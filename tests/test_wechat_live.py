"""/wechat on a real port: answers inside WeChat's 5 s while SMTP stalls, and pictures are
fetched by the sender (timeout, size cap, content type), never in the request."""
import statistics
import threading
import time

import pytest
import requests
from werkzeug import Response

from bridge.mail import attachments
from bridge.logs import log_line
from tests.wechat_kit import WECHAT_ENV, message, reply_text, seal_request, signed_query

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 200


class Reply:
    """requests' answer in the shape tests.wechat_kit.reply_text reads."""

    def __init__(self, response):
        self.data = response.content


def send(base, xml, mode="plain"):
    query, body = (signed_query(), xml) if mode == "plain" else seal_request(xml)
    return requests.post(f"{base}/wechat", params=query, data=body, timeout=10)


def unique_mails(server):
    return {m["Message-ID"]: m for m in list(server.messages)}


def wait_mails(server, n, timeout):
    deadline = time.monotonic() + timeout
    while len(unique_mails(server)) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    return unique_mails(server)


def test_replies_stay_fast_while_smtp_stalls(live_bridge, smtp_server, cafile):
    smtp_server.stall_seconds = 30
    base, _ = live_bridge(**smtp_server.env(cafile), **WECHAT_ENV, SMTP_TIMEOUT="2")
    n = 60
    latencies = []
    for i in range(n):
        started = time.perf_counter()
        r = send(base, message(f"stalled #{i}", sender=f"o{i % 6}", msg_id=5000 + i), ("plain", "aes")[i % 2])
        latencies.append(time.perf_counter() - started)
        assert r.status_code == 200
        assert reply_text(Reply(r), ("plain", "aes")[i % 2]) == "已转发到邮箱 ✓"
    assert unique_mails(smtp_server) == {}       # the SMTP server really was stuck meanwhile
    latencies.sort()
    p50, p99 = statistics.median(latencies), latencies[int(0.99 * (n - 1))]
    log_line("wechat_latency_under_smtp_stall", n=n, p50_ms=round(p50 * 1000, 1),
             p99_ms=round(p99 * 1000, 1), max_ms=round(latencies[-1] * 1000, 1))
    print(f"\nWeChat reply latency while SMTP stalls: n={n} p50={p50 * 1000:.1f} ms "
          f"p99={p99 * 1000:.1f} ms max={latencies[-1] * 1000:.1f} ms")
    assert latencies[-1] < 5.0
    assert p99 < 1.0
    smtp_server.stall_seconds = 0                # the server recovers: every message goes out once
    mails = wait_mails(smtp_server, n, timeout=60)
    assert len(mails) == n


@pytest.fixture
def quick_downloads(monkeypatch):
    monkeypatch.setattr(attachments, "READ_SECONDS", 1.0)
    monkeypatch.setattr(attachments, "CONNECT_SECONDS", 1.0)


def picture(base, url, msg_id):
    started = time.perf_counter()
    r = send(base, message(msg_type="image", msg_id=msg_id, PicUrl=url, MediaId="media-1"))
    assert time.perf_counter() - started < 1.0          # the request never touches PicUrl
    assert reply_text(Reply(r)) == "已转发到邮箱 ✓"


def test_picture_is_attached(live_bridge, smtp_server, cafile, httpserver, quick_downloads):
    httpserver.expect_request("/pic.png").respond_with_data(PNG, content_type="image/png")
    base, _ = live_bridge(**smtp_server.env(cafile), **WECHAT_ENV)
    picture(base, httpserver.url_for("/pic.png"), 1)
    (mail,) = wait_mails(smtp_server, 1, 10).values()
    (part,) = list(mail.iter_attachments())
    assert part.get_content_type() == "image/png" and part.get_content() == PNG
    assert part.get_filename() == "wechat-1.png"
    assert httpserver.url_for("/pic.png") in mail.get_body(("plain",)).get_content()


def _slow(request):
    time.sleep(3)
    return Response(PNG, content_type="image/png")


@pytest.mark.parametrize("setup", ["hangs", "not-an-image", "too-big", "404"])
def test_picture_that_cannot_be_fetched_still_mails_the_link(live_bridge, smtp_server, cafile, httpserver,
                                                             quick_downloads, monkeypatch, setup):
    route = httpserver.expect_request("/pic")
    if setup == "hangs":
        route.respond_with_handler(_slow)
    elif setup == "not-an-image":
        route.respond_with_data("<html>login</html>", content_type="text/html")
    elif setup == "too-big":
        monkeypatch.setattr(attachments, "MAX_BYTES", 100)
        route.respond_with_data(PNG, content_type="image/png")
    else:
        route.respond_with_data("gone", status=404)
    base, _ = live_bridge(**smtp_server.env(cafile), **WECHAT_ENV)
    started = time.monotonic()
    picture(base, httpserver.url_for("/pic"), 2)
    (mail,) = wait_mails(smtp_server, 1, 15).values()
    assert list(mail.iter_attachments()) == []
    assert httpserver.url_for("/pic") in mail.get_body(("plain",)).get_content()
    if setup == "hangs":    # the read timeout, not the 3 s hang, decides when the mail goes
        assert time.monotonic() - started < 2.9


def test_concurrent_senders_are_each_answered_once(live_bridge, smtp_server, cafile):
    """WeChat retries while the first try is in flight: one mail per MsgId whatever the race."""
    base, _ = live_bridge(**smtp_server.env(cafile), **WECHAT_ENV)
    results = []

    def hit(k):
        results.append(send(base, message("race", msg_id=777 + k % 3)).status_code)

    threads = [threading.Thread(target=hit, args=(k,)) for k in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 12
    time.sleep(1)
    assert len(wait_mails(smtp_server, 3, 10)) == 3
