"""A bridge on a real port delivers to a real implicit-TLS + AUTH SMTP server."""
import requests


def test_post_over_http_arrives_over_tls(live_bridge, smtp_server, cafile):
    base, _ = live_bridge(**smtp_server.env(cafile))
    r = requests.post(f"{base}/hooks/generic", json={"subject": "中文主题 ✓", "text": "你好"}, timeout=5)
    assert r.status_code == 202
    (msg,) = smtp_server.wait_for(1)
    assert msg["Subject"] == "中文主题 ✓"
    assert msg.get_content().strip() == "你好"
    assert smtp_server.logins == 1
