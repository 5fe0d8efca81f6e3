"""The deliveries page in a real browser (Debian's chromium, driven by Playwright): log in, find
a delivery, open it, press Resend, see the new attempt. Screenshots go to var/screenshots/."""
import importlib.util
import shutil
import time

import pytest
import requests

from tests.conftest import ROOT, need

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SHOTS = ROOT / "var" / "screenshots"
TOKEN = "browser-admin-token"


@pytest.fixture
def browser():
    need(importlib.util.find_spec("playwright") is not None, "the playwright package is not installed")
    need(shutil.which(CHROMIUM) is not None, "chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def send(base, subject, html=None, key=None):
    doc = {"subject": subject, "text": f"{subject}\n\nSecond line of the text part.",
           **({"html": html} if html else {})}
    r = requests.post(f"{base}/hooks/generic", json=doc, timeout=5,
                      headers={"Idempotency-Key": key} if key else {})
    assert r.status_code in (200, 202)
    return r.json()["id"]


def wait_for_status(app, row_id, status, timeout=10.0):
    outbox = app.extensions["bridge"].outbox
    deadline = time.monotonic() + timeout
    while outbox.get(row_id).status != status and time.monotonic() < deadline:
        time.sleep(0.05)
    assert outbox.get(row_id).status == status


def shoot(page, name):
    """A whole-page screenshot. Taller viewport instead of full_page: chromium leaves an iframe
    that starts below the fold blank in full_page shots."""
    height = page.evaluate("document.documentElement.scrollHeight")
    page.set_viewport_size({"width": page.viewport_size["width"], "height": height})
    page.screenshot(path=str(SHOTS / name))


def submit(page, selector):
    """Click what sends a form or follows a link, and wait for the page that answers."""
    with page.expect_navigation():
        page.click(selector)


@pytest.mark.slow
def test_log_in_find_open_resend(browser, live_bridge, smtp_server, cafile):
    from playwright.sync_api import expect
    base, app = live_bridge(ADMIN_TOKEN=TOKEN, BRIDGE_TIMEZONE="Asia/Shanghai", **smtp_server.env(cafile))
    deploy = send(base, "Deploy of api v2.3.1 finished ✓", key="deploy-231")
    send(base, "Deploy of api v2.3.1 finished ✓", key="deploy-231")      # a duplicate
    wait_for_status(app, deploy, "sent")
    smtp_server.failures.append("550 5.1.1 <team@example.com>: mailbox unavailable")
    bounced = send(base, "Nightly backup report")
    wait_for_status(app, bounced, "dead")
    target = send(base, "磁盘空间告警: db-1 /var 91%", key="disk-alert-7",
                  html="<h2 style='color:#b00'>磁盘空间告警</h2><p>db-1 <b>/var</b> is 91% full.</p>"
                       "<script>document.body.innerHTML = 'SCRIPT RAN'</script>")
    wait_for_status(app, target, "sent")
    SHOTS.mkdir(parents=True, exist_ok=True)

    page = browser.new_page(viewport={"width": 1280, "height": 800})
    answer = page.goto(f"{base}/deliveries")
    assert answer.status == 401
    page.fill("#token", TOKEN)
    submit(page, "button:text('Log in')")
    assert page.url == f"{base}/deliveries"
    assert page.locator("table.deliveries tbody tr").count() == 3
    shoot(page, "deliveries-list.png")

    page.fill("input[name=q]", "db-1")
    submit(page, "button:text('Filter')")
    rows = page.locator("table.deliveries tbody tr")
    assert rows.count() == 1
    submit(page, "table.deliveries td.subject a")
    assert page.url == f"{base}/deliveries/{target}"
    attempts = page.locator("table.attempts tbody tr")
    assert attempts.count() == 1
    mail = page.frame_locator("iframe.mailhtml")
    assert "is 91% full" in mail.locator("body").inner_text()
    assert "SCRIPT RAN" not in mail.locator("body").inner_text()

    smtp_server.delay_seconds = 1.5       # the resent mail lands after the page has loaded
    submit(page, "button:text('Resend')")
    assert "Queued again" in page.inner_text(".notice")
    assert attempts.count() == 1
    page.evaluate("window.notReloaded = true")
    # The new attempt appears by itself: the page refreshes its live part without reloading.
    expect(attempts).to_have_count(2, timeout=15_000)
    assert page.evaluate("window.notReloaded") is True
    assert [attempts.nth(i).locator(".badge").inner_text() for i in range(2)] == ["sent", "sent"]
    shoot(page, "delivery-detail.png")

    resent = [m for m in smtp_server.messages if m["Subject"].startswith("磁盘空间告警")]
    assert len(resent) == 2 and resent[0]["Message-ID"] == resent[1]["Message-ID"]

    phone = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2,
                                storage_state=page.context.storage_state())
    small = phone.new_page()
    small.goto(f"{base}/deliveries")
    assert small.locator("table.deliveries tbody tr").count() == 3
    shoot(small, "deliveries-list-phone.png")
    small.goto(f"{base}/deliveries/{bounced}")
    assert "550 5.1.1" in small.inner_text("section.error")
    shoot(small, "delivery-dead-phone.png")
    phone.close()
