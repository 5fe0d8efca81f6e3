"""POST /hooks/generic: every answer DESIGN.md names, through the Flask test client."""
import json

import pytest

from bridge.outbox import QUEUED


def post(client, doc=None, data=None, token=None, key=None, content_type="application/json"):
    headers = {"Content-Type": content_type}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if key:
        headers["Idempotency-Key"] = key
    body = data if data is not None else json.dumps(doc, ensure_ascii=False).encode()
    return client.post("/hooks/generic", data=body, headers=headers)


def rows(app):
    return app.extensions["bridge"].outbox.recent(limit=100)


def test_accepted_and_stored_before_the_answer(app, client):
    r = post(client, {"subject": "部署完成 ✓", "text": "第一行\n第二行"})
    assert r.status_code == 202
    assert r.json["status"] == "accepted"
    (row,) = rows(app)
    assert row.id == r.json["id"] and row.status == QUEUED
    assert row.subject == "部署完成 ✓" and row.text.startswith("第一行\n第二行")
    assert row.mail_to == "team@example.com"


def test_idempotency_key_makes_repeats_duplicates(app, client):
    first = post(client, {"subject": "s", "text": "t"}, key="k-1")
    again = post(client, {"subject": "s", "text": "t"}, key="k-1")
    other = post(client, {"subject": "s", "text": "t"}, key="k-2")
    assert (first.status_code, again.status_code, other.status_code) == (202, 200, 202)
    assert again.json == {"status": "duplicate", "id": first.json["id"], "reason": "already received"}
    assert len(rows(app)) == 2


def test_without_key_every_request_is_new(app, client):
    post(client, {"subject": "s", "text": "t"})
    post(client, {"subject": "s", "text": "t"})
    assert len(rows(app)) == 2


def test_crlf_in_subject_is_folded(app, client):
    r = post(client, {"subject": "hi\r\nBcc: evil@example.com", "text": "t"})
    assert r.status_code == 202
    assert rows(app)[0].subject == "hi Bcc: evil@example.com"


@pytest.mark.parametrize("body, reason", [
    (b'{"subject": "broken", "text": ', "not valid JSON"),
    (b'["a list"]', "JSON object"),
    (b'{"text": "no subject"}', '"subject"'),
    (b'{"subject": "", "text": "x"}', '"subject"'),
    (b'{"subject": "x", "text": 5}', '"text"'),
    (b'{"subject": "x", "text": "y", "html": []}', '"html"'),
    (b'\xff\xfe', "not valid JSON"),
])
def test_malformed_is_400_with_a_reason(app, client, body, reason):
    r = post(client, data=body)
    assert r.status_code == 400
    assert r.json["status"] == "error" and reason in r.json["reason"]
    assert "\n" not in r.json["reason"]
    assert rows(app) == []


def test_wrong_content_type_is_415(client):
    r = post(client, data=b"subject=x", content_type="application/x-www-form-urlencoded")
    assert r.status_code == 415


def test_oversized_is_413(app, client):
    r = post(client, {"subject": "big", "text": "a" * (1024 * 1024)})
    assert r.status_code == 413
    assert rows(app) == []


def test_token_required_when_set(make_app):
    client = make_app(GENERIC_TOKEN="s3cret").test_client()
    assert post(client, {"subject": "s", "text": "t"}).status_code == 401
    assert post(client, {"subject": "s", "text": "t"}, token="wrong").status_code == 401
    assert post(client, {"subject": "s", "text": "t"}, token="s3cret").status_code == 202


def test_routes_pick_recipients(make_app):
    app = make_app(MAIL_TO_TEAM_A="a@example.com,b@example.com")
    client = app.test_client()
    assert client.post("/hooks/generic/Team-A", json={"subject": "s", "text": "t"}).status_code == 202
    assert rows(app)[0].mail_to == "a@example.com, b@example.com"
    r = client.post("/hooks/generic/nobody", json={"subject": "s", "text": "t"})
    assert r.status_code == 404 and "MAIL_TO_" in r.json["reason"]


def test_unknown_source_is_404(client):
    assert client.post("/hooks/nosuch", json={}).status_code == 404


def test_database_away_is_503_not_500(app, client):
    app.extensions["bridge"].outbox.engine.dispose()
    import sqlalchemy as sa
    app.extensions["bridge"].outbox.engine = sa.create_engine("sqlite:////nonexistent/dir/x.db")
    r = post(client, {"subject": "s", "text": "t"})
    assert r.status_code == 503 and r.json["status"] == "error"
    assert client.get("/readyz").status_code == 503
    assert client.get("/healthz").status_code == 200


def test_a_broken_template_override_still_stores_and_mails(make_app, tmp_path):
    override = tmp_path / "templates" / "generic"
    override.mkdir(parents=True)
    (override / "message.txt.j2").write_text("{{ text }} {{ 1 / 0 }}")
    app = make_app(TEMPLATES_DIR=str(tmp_path / "templates"))
    r = app.test_client().post("/hooks/generic", json={"subject": "still here", "text": "t"},
                               headers={"Idempotency-Key": "broken-1"})
    assert r.status_code == 202
    (row,) = rows(app)
    assert row.subject == "generic:message"
    assert "templates for generic:message failed" in row.text and "broken-1" in row.text


def test_lone_surrogate_is_400_not_500(app, client):
    r = post(client, data=b'{"subject": "\\ud800x", "text": "t"}')
    assert r.status_code == 400 and "surrogate" in r.json["reason"]
    assert rows(app) == []


def test_long_idempotency_key_and_values_are_stored(app, client):
    r = post(client, {"subject": "s", "text": "t"}, key="k" * 5000)
    assert r.status_code == 202
    again = post(client, {"subject": "s", "text": "t"}, key="k" * 5000)
    assert again.status_code == 200 and again.json["status"] == "duplicate"
