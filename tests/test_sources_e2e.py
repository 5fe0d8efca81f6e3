"""A user's own definition from a temporary SOURCES_DIR, end to end: HTTP on a real port →
outbox → a real SMTP server (TLS, AUTH); and `flask --app bridge sources check`."""
from __future__ import annotations

import hashlib
import hmac
import json
import textwrap

import requests

# The example of docs/sources.md (and of DESIGN.md).
ACME = textwrap.dedent("""\
    auth:
      hmac: {header: X-Acme-Signature, algorithm: sha256, prefix: "sha256=", secret_env: ACME_SECRET}
    event: "{{ headers['X-Acme-Event'] }}"
    dedup: "{{ headers['X-Acme-Delivery'] }}"
    thread: "{{ payload.project }}/{{ payload.ref }}"
    when: "{{ payload.status != 'running' }}"
    subject: "[{{ payload.project }}] {{ event }}: {{ payload.status }}"
    text: |
      {{ payload.message }}
    html: "<p>{{ payload.message }}</p>"
    events:
      "deploy*": {subject: "[{{ payload.project }}] deployed {{ payload.ref }}"}
    """)
SECRET = "acme-secret"


def post(base, event, payload, delivery, secret=SECRET):
    body = json.dumps(payload).encode()
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return requests.post(f"{base}/hooks/acme-ci/ops", data=body, timeout=10, headers={
        "Content-Type": "application/json", "X-Acme-Event": event, "X-Acme-Delivery": delivery,
        "X-Acme-Signature": signature})


def test_a_user_definition_mails_through_real_smtp(tmp_path, live_bridge, smtp_server, cafile):
    (tmp_path / "acme-ci.yaml").write_text(ACME, encoding="utf-8")
    base, _ = live_bridge(**smtp_server.env(cafile), SOURCES_DIR=str(tmp_path), ACME_SECRET=SECRET,
                          MAIL_TO_OPS="ops@example.com")
    build = {"project": "widgets", "ref": "main", "status": "passed", "message": "All <42> tests passed"}
    assert post(base, "build", build, "d1").status_code == 202
    assert post(base, "deploy-prod", {**build, "message": "v1.2 is live"}, "d2").status_code == 202
    assert post(base, "build", build, "d1").json()["status"] == "duplicate"
    assert post(base, "build", {**build, "status": "running"}, "d3").json()["status"] == "ignored"
    assert post(base, "build", build, "d4", secret="wrong").status_code == 401
    first, second = smtp_server.wait_for(2, timeout=20)
    assert first["Subject"] == "[widgets] build: passed" and second["Subject"] == "[widgets] deployed main"
    assert first["To"] == "ops@example.com"
    assert "All <42> tests passed" in first.get_body(("plain",)).get_content()
    assert "<p>All &lt;42&gt; tests passed</p>" in first.get_body(("html",)).get_content()
    root = second["In-Reply-To"]
    assert root and root == first["In-Reply-To"]        # one thread: widgets/main
    assert len(smtp_server.wait_for(2, timeout=2)) == 2  # the duplicate, the ignored and the forged sent nothing


def test_sources_check_validates_and_shows_the_mail(tmp_path, app):
    (tmp_path / "acme-ci.yaml").write_text(ACME, encoding="utf-8")
    (tmp_path / "sample.json").write_text(json.dumps({"project": "w", "ref": "main", "message": "hi"}))
    runner = app.test_cli_runner()
    out = runner.invoke(args=["sources", "check", str(tmp_path / "acme-ci.yaml"), "--payload", str(tmp_path / "sample.json"),
                                        "--header", "X-Acme-Event: deploy-prod"])
    assert out.exit_code == 0, out.output
    assert "OK " in out.output and 'events."deploy*"' in out.output
    assert "Subject: [w] deployed main" in out.output and "<p>hi</p>" in out.output
    (tmp_path / "bad.yaml").write_text("auth: {hmac: {header: X}}\n")
    out = runner.invoke(args=["sources", "check", str(tmp_path / "bad.yaml")])
    assert out.exit_code == 1 and "bad.yaml: auth.hmac.secret_env: required" in out.output
