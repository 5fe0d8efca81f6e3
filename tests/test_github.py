"""POST /hooks/github: signatures, bodies, ping, redelivery, filters, routes, settings."""
import json
import logging

import pytest

from bridge.settings import EnvReader, SettingsError
from bridge.sources import github
from bridge.sources.github_views import Limits, Payload, router
from tests.github_payloads import (SECRET, form_body, headers_for, issue, post, pull_request, push, sign,
                                   workflow_run)

# GitHub Docs, "Validating webhook deliveries": the documented test vector.
DOC_SECRET = "It's a Secret to Everybody"
DOC_BODY = b"Hello, World!"
DOC_SIGNATURE = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"


def rows(app):
    return app.extensions["bridge"].outbox.recent(limit=100)


@pytest.fixture
def gh(make_app):
    """A bridge with a webhook secret and every event selected."""
    def make(**env):
        return make_app(**{"GITHUB_WEBHOOK_SECRET": SECRET, "GITHUB_EVENTS": "*", **env})
    return make


def config(**env) -> github.Config:
    return github.load_config(EnvReader({"GITHUB_WEBHOOK_SECRET": SECRET, **env}))


# --------------------------------------------------------------------------- signatures

def test_documented_signature_vector():
    assert github.sign(DOC_SECRET, DOC_BODY) == DOC_SIGNATURE
    cfg = github.load_config(EnvReader({"GITHUB_WEBHOOK_SECRET": DOC_SECRET}))
    github.verify({"X-Hub-Signature-256": DOC_SIGNATURE}, DOC_BODY, cfg)


@pytest.mark.parametrize("body, signature", [
    (DOC_BODY + b"\n", DOC_SIGNATURE),                                   # body differs
    (DOC_BODY, DOC_SIGNATURE[len("sha256="):]),                          # no prefix
    (DOC_BODY, DOC_SIGNATURE[:-1]),                                      # truncated
    (DOC_BODY, ""),                                                      # empty
    (DOC_BODY, github.sign("it's a secret to everybody", DOC_BODY)),     # secret case
])
def test_signature_mismatches_are_401(body, signature):
    cfg = github.load_config(EnvReader({"GITHUB_WEBHOOK_SECRET": DOC_SECRET}))
    with pytest.raises(github.Rejected) as err:
        github.verify({"X-Hub-Signature-256": signature}, body, cfg)
    assert err.value.status == 401


def test_sha1_only_counts_without_a_sha256_header():
    cfg = config()
    body = b'{"zen": "x"}'
    github.verify({"X-Hub-Signature": sign(body, algorithm="sha1")}, body, cfg)
    with pytest.raises(github.Rejected):
        github.verify({"X-Hub-Signature": sign(body, algorithm="sha1"),
                       "X-Hub-Signature-256": "sha256=" + "0" * 64}, body, cfg)


def test_wrong_or_missing_signature_is_401_and_no_mail(gh):
    app = gh()
    client = app.test_client()
    body = json.dumps(issue()).encode()
    wrong = headers_for("issues", body, secret="other")
    missing = headers_for("issues", body, secret=None)
    assert client.post("/hooks/github", data=body, headers=wrong).status_code == 401
    r = client.post("/hooks/github", data=body, headers=missing)
    assert r.status_code == 401 and "X-Hub-Signature-256" in r.json["reason"]
    assert SECRET not in r.get_data(as_text=True)
    assert rows(app) == []


def test_without_secret_unsigned_deliveries_pass_and_startup_warns(make_app, caplog):
    with caplog.at_level(logging.WARNING, logger="bridge"):
        app = make_app(GITHUB_WEBHOOK_SECRET=None)
    assert any("GITHUB_WEBHOOK_SECRET is not set" in r.getMessage() for r in caplog.records)
    assert post(app.test_client(), "issues", issue(), secret=None).status_code == 202


def test_a_valid_signature_over_a_malformed_body_is_400(gh):
    r = gh().test_client().post("/hooks/github", data=b"Hello, World!", headers=headers_for("push", b"Hello, World!"))
    assert r.status_code == 400


# --------------------------------------------------------------------------- bodies

def test_form_encoded_body_is_verified_over_the_raw_bytes(gh):
    app = gh()
    body = form_body(push(2))
    r = app.test_client().post("/hooks/github", data=body, headers=headers_for(
        "push", body, content_type="application/x-www-form-urlencoded"))
    assert r.status_code == 202
    assert rows(app)[0].subject == "[acme/widgets] Pushes to main"


@pytest.mark.parametrize("body, content_type, status", [
    (b"<xml/>", "text/xml", 415),
    (b"payload=x", "text/plain", 415),
    (b"other=1", "application/x-www-form-urlencoded", 400),
    (b"payload=%7Bbroken", "application/x-www-form-urlencoded", 400),
    (b"[1, 2]", "application/json", 400),
    (b"\xff\xfe", "application/json", 400),
])
def test_bad_bodies_are_4xx_with_a_reason(gh, body, content_type, status):
    app = gh()
    r = app.test_client().post("/hooks/github", data=body, headers=headers_for("push", body, content_type=content_type))
    assert r.status_code == status and r.json["status"] == "error" and "\n" not in r.json["reason"]
    assert rows(app) == []


def test_missing_event_header_is_400(gh):
    body = json.dumps(issue()).encode()
    headers = headers_for("issues", body)
    del headers["X-GitHub-Event"]
    assert gh().test_client().post("/hooks/github", data=body, headers=headers).status_code == 400


def test_over_25_mb_is_413(gh):
    app = gh()
    body = b" " * (github.MAX_BODY + 1)
    r = app.test_client().post("/hooks/github", data=body, headers=headers_for("push", body))
    assert r.status_code == 413 and rows(app) == []


# --------------------------------------------------------------------------- ping, redelivery

def test_ping_is_pong_without_mail(gh):
    app = gh()
    r = post(app.test_client(), "ping", {"zen": "Keep it logically awesome.", "hook_id": 42})
    assert (r.status_code, r.json["status"]) == (200, "pong")
    assert rows(app) == []


def test_redelivery_is_a_duplicate_but_another_hook_is_not(gh):
    app = gh()
    client = app.test_client()
    first = post(client, "issues", issue(), delivery="d-1", hook_id="1")
    again = post(client, "issues", issue(), delivery="d-1", hook_id="1")
    other_hook = post(client, "issues", issue(), delivery="d-1", hook_id="2")
    assert (first.status_code, again.status_code, other_hook.status_code) == (202, 200, 202)
    assert again.json["status"] == "duplicate" and again.json["id"] == first.json["id"]
    assert len(rows(app)) == 2


# --------------------------------------------------------------------------- filters

@pytest.mark.parametrize("env, event, doc, reason", [
    ({}, "check_run", {"action": "completed", "check_run": {"conclusion": "failure"}}, "GITHUB_EVENTS"),
    ({}, "workflow_run", workflow_run("success"), "GITHUB_EVENTS"),
    ({"GITHUB_EVENTS": "issues.opened"}, "issues", issue("closed"), "issues.closed"),
    ({"GITHUB_EVENTS": "*,!*.labeled"}, "issues", issue("labeled"), "GITHUB_EVENTS"),
    ({"GITHUB_BRANCHES": "main,release/*"}, "push", push(ref="refs/heads/feature/x"), "feature/x"),
    ({"GITHUB_BRANCHES": "!dependabot/*"}, "push", push(ref="refs/heads/dependabot/pip/x"), "GITHUB_BRANCHES"),
    ({"GITHUB_BRANCHES": "main"}, "pull_request", pull_request(base="develop"), "develop"),
    ({"GITHUB_IGNORE_SENDERS": "*[bot]"}, "issues", {**issue(), "sender": {"login": "renovate[bot]"}},
     "renovate[bot]"),
])
def test_filtered_events_are_200_ignored_with_the_reason(make_app, env, event, doc, reason):
    app = make_app(GITHUB_WEBHOOK_SECRET=SECRET, **env)
    r = post(app.test_client(), event, doc)
    assert (r.status_code, r.json["status"]) == (200, "ignored")
    assert reason in r.json["reason"]
    assert [row.status for row in rows(app)] == ["ignored"]


@pytest.mark.parametrize("env, event, doc", [
    ({}, "workflow_run", workflow_run("failure")),
    ({}, "issues", issue("labeled")),
    ({"GITHUB_EVENTS": "workflow_run.completed.failure"}, "workflow_run", workflow_run("failure")),
    ({"GITHUB_BRANCHES": "main,release/*"}, "push", push(ref="refs/heads/release/2.0")),
    ({"GITHUB_BRANCHES": "main"}, "push", push(ref="refs/tags/v1.0")),     # tags are not branches
    ({"GITHUB_BRANCHES": "main"}, "pull_request", pull_request(base="main")),
    ({"GITHUB_IGNORE_SENDERS": "*[bot]"}, "issues", issue()),
])
def test_selected_events_are_accepted(make_app, env, event, doc):
    app = make_app(GITHUB_WEBHOOK_SECRET=SECRET, **env)
    assert post(app.test_client(), event, doc).status_code == 202


def test_default_events_mail_what_people_act_on():
    cfg = config()
    def reason(event, doc):
        payload = Payload(event, doc.get("action", ""), doc, Limits(20, 4000))
        return github.filtered(payload, router.view(payload), cfg)
    assert reason("push", push()) is None
    assert reason("pull_request", pull_request("closed", merged=True)) is None
    assert reason("workflow_run", workflow_run("failure")) is None
    assert reason("workflow_run", workflow_run("success")) is not None
    assert reason("workflow_run", {**workflow_run(), "action": "requested"}) is not None


def test_bad_glob_names_the_variable():
    with pytest.raises(SettingsError, match="GITHUB_EVENTS"):
        config(GITHUB_EVENTS="issues opened")


# --------------------------------------------------------------------------- routes

def test_routes_pick_recipients_and_unknown_routes_are_404(gh):
    app = gh(MAIL_TO_TEAM_A="a@example.com")
    client = app.test_client()
    assert post(client, "issues", issue(), route="/Team-A").status_code == 202
    assert rows(app)[0].mail_to == "a@example.com"
    r = post(client, "issues", issue(), route="/nobody")
    assert r.status_code == 404 and "MAIL_TO_" in r.json["reason"]


@pytest.mark.parametrize("event, action, view", [
    ("pull_request", "closed", "closed_pull_request_view"),
    ("pull_request", "opened", "item_view"),
    ("issues", "a_new_action_from_2030", "item_view"),
    ("push", "", "push_view"),
    ("watch", "started", "star_view"),
    ("a_new_event_from_2030", "created", "generic_view"),
])
def test_router_falls_back_from_action_to_event_to_generic(event, action, view):
    assert router.fetch(event, action).__name__ == view
