"""What GitHub mails say: synthetic payloads for what the corpus lacks, hostile content, threading."""
import json

import pytest
import requests

from tests.github_payloads import (SECRET, REPO, headers_for, issue, issue_comment, post, pull_request, push,
                                   with_title, workflow_run)


@pytest.fixture
def client_app(make_app):
    app = make_app(GITHUB_WEBHOOK_SECRET=SECRET, GITHUB_EVENTS="*", GITHUB_MAX_COMMITS="5",
                   GITHUB_MAX_BODY_CHARS="300")
    return app.test_client(), app


def mail_for(client_app, event, doc):
    client, app = client_app
    r = post(client, event, doc)
    assert r.status_code == 202, r.json
    return next(row for row in app.extensions["bridge"].outbox.recent(limit=100) if row.id == r.json["id"])


def test_push_with_many_commits_is_capped_with_a_compare_link(client_app):
    row = mail_for(client_app, "push", push(commits=12))
    assert row.subject == "[acme/widgets] Pushes to main"
    assert row.text.startswith("alice pushed 12 commits to branch main (aaaaaaa → ")
    shown = [line for line in row.text.splitlines() if "Change number" in line]
    assert len(shown) == 5 and "Change number 12 (Dev 12)" in shown[-1]      # the newest five
    assert "Longer description" not in row.text                                # first lines only
    assert "… and 7 earlier commits" in row.text
    assert "https://github.com/acme/widgets/compare/aaaaaaa...bbbbbbb" in row.text
    assert "Files: 12 added, 1 modified, 0 removed" in row.text


def test_force_push_and_new_branch_say_so(client_app):
    assert "force-pushed branch main" in mail_for(client_app, "push", push(3, forced=True)).text
    assert mail_for(client_app, "push", push(1, created=True)).text.startswith(
        "alice created branch main with 1 commit.")


def test_merged_pull_request_is_not_just_closed(client_app):
    merged = mail_for(client_app, "pull_request", pull_request("closed", merged=True))
    closed = mail_for(client_app, "pull_request", pull_request("closed", merged=False, number=13))
    assert merged.subject == "Re: [acme/widgets] Stop the wobble (#12)"
    assert merged.text.startswith("alice merged pull request #12 into main (c0ffee0).")
    assert closed.text.startswith("alice closed pull request #13 without merging it.")


def test_failed_workflow_run_stands_out(client_app):
    failed = mail_for(client_app, "workflow_run", workflow_run("failure"))
    passed = mail_for(client_app, "workflow_run", {**workflow_run("success"), "action": "completed"})
    assert failed.subject == "[acme/widgets] FAILED: Workflow CI on main (run 88)"
    assert failed.text.startswith("Workflow CI FAILED on main at ddddddd.")
    assert "font-weight:bold" in failed.html and "font-weight:bold" not in passed.html
    assert passed.subject.startswith("[acme/widgets] Passed: Workflow CI")


def test_an_event_github_adds_later_gets_a_readable_generic_mail(client_app):
    doc = {"action": "teleported", "repository": REPO, "sender": {"login": "alice"},
           "gadget": {"name": "Flux capacitor", "html_url": "https://github.com/acme/widgets/gadgets/1",
                      "power": "1.21 GW", "node_id": "XYZ", "body": "It **works**."}}
    row = mail_for(client_app, "gadget", doc)
    assert row.subject == "[acme/widgets] Gadget teleported: Flux capacitor"
    assert "power: 1.21 GW" in row.text and "node_id" not in row.text
    assert "https://github.com/acme/widgets/gadgets/1" in row.text
    assert "<strong>works</strong>" in row.html
    assert not row.text.lstrip().startswith("{") and '"power"' not in row.text


@pytest.mark.parametrize("title", [
    "Line one\r\nBcc: victim@example.com",
    "{{ config }} {% raw %} ${x}",
    "<script>alert(1)</script>",
    "Émoji 🚀 مرحبا بالعالم \u202eRTL",
    "x" * 10_000,
])
def test_hostile_titles_stay_text(client_app, title):
    row = mail_for(client_app, "issues", with_title(issue(), title))
    assert "\r" not in row.subject and "\n" not in row.subject
    assert row.subject.startswith("[acme/widgets] ") and row.subject.endswith(" (#7)")
    assert len(row.subject) < 200
    assert "<script>" not in row.html
    first = title.split("\r\n")[0]
    assert first[:100] in row.text
    if "{{" in title:
        assert "{{ config }}" in row.subject


def test_markdown_is_safe_html_and_plain_text(client_app):
    body = "Look: **bold** <img src=x onerror=alert(1)> [link](javascript:alert(1))\n\n- one\n- two"
    row = mail_for(client_app, "issues", issue(body=body))
    assert "<strong>bold</strong>" in row.html and "<li>one</li>" in row.html
    assert "<img" not in row.html and 'href="javascript' not in row.html
    assert "**bold**" in row.text and "<strong>" not in row.text


def test_long_bodies_are_cut_with_a_link(client_app):
    body = "\n".join(f"Paragraph {n} " + "words " * 10 for n in range(40))
    row = mail_for(client_app, "issues", issue(body=body))
    assert "Paragraph 1 " in row.text and "Paragraph 39" not in row.text
    assert "the rest is on GitHub: https://github.com/acme/widgets/issues/7" in row.text
    assert "read the rest on GitHub" in row.html


def test_mail_headers_let_clients_filter(client_app):
    client, app = client_app
    r = post(client, "issues", issue(), delivery="abc-123")
    row = app.extensions["bridge"].outbox.recent(limit=1)[0]
    headers = json.loads(row.headers)
    assert headers == {"X-GitHub-Event": "issues", "X-GitHub-Delivery": "abc-123", "X-GitHub-Sender": "alice",
                       "List-Id": "acme/widgets <widgets.acme.github.localhost>"}
    assert r.status_code == 202


@pytest.mark.parametrize("event, doc", [
    ("issues", {"action": "opened", "issue": "not an object", "repository": REPO}),
    ("push", {"ref": 5, "commits": "many", "head_commit": [], "repository": "x"}),
    ("pull_request", {"action": 3, "pull_request": {"number": [], "base": None}}),
    ("workflow_run", {"action": "completed", "workflow_run": {"pull_requests": [None, 1]}}),
    ("release", {"action": "published", "release": {"assets": [1, None]}}),
    ("dependabot_alert", {"action": "created", "alert": {"number": {}}}),
    ("nothing_at_all", {}),
])
def test_odd_shapes_still_make_a_mail(client_app, event, doc):
    row = mail_for(client_app, event, doc)
    assert row.subject.strip() and "None" not in row.subject and "None" not in row.text


def test_issue_mails_share_one_thread_over_real_smtp(live_bridge, smtp_server, cafile):
    base, _ = live_bridge(GITHUB_WEBHOOK_SECRET=SECRET, **smtp_server.env(cafile))
    for event, doc in (("issues", issue("opened")), ("issue_comment", issue_comment()),
                       ("issues", {**issue("closed"), "sender": {"login": "carol"}})):
        body = json.dumps(doc).encode()
        assert requests.post(f"{base}/hooks/github", data=body, headers=headers_for(event, body),
                             timeout=5).status_code == 202
        smtp_server.wait_for(len(smtp_server.messages) + 1)    # in order: the root first
    opened, comment, closed = smtp_server.wait_for(3)
    root = opened["Message-ID"]
    assert opened["In-Reply-To"] is None
    for reply in (comment, closed):
        assert reply["In-Reply-To"] == root and root in reply["References"]
        assert reply["Message-ID"] != root
        assert reply["Subject"] == "Re: " + opened["Subject"]
    assert opened["Subject"] == "[acme/widgets] Widgets wobble (#7)"
    assert comment.get_body(("plain",)).get_content().startswith("bob commented on issue #7.")
    assert closed.get_body(("plain",)).get_content().startswith("carol closed issue #7.")
    assert opened["X-GitHub-Event"] == "issues" and closed["X-GitHub-Sender"] == "carol"


def test_a_branch_threads_its_creation_pushes_and_deletion(client_app):
    client, app = client_app
    create = {"ref": "main", "ref_type": "branch", "repository": REPO, "sender": {"login": "alice"}}
    delete = dict(create)
    rows = [mail_for(client_app, "create", create), mail_for(client_app, "push", push(2)),
            mail_for(client_app, "delete", delete)]
    assert {row.in_reply_to for row in rows} != {None} and len({row.in_reply_to for row in rows}) == 1
    assert {row.subject for row in rows} == {"[acme/widgets] Pushes to main"}
    assert rows[2].text.startswith("alice deleted branch main.")


def test_templates_dir_overrides_a_family(make_app, tmp_path):
    (tmp_path / "github").mkdir()
    (tmp_path / "github" / "star.j2").write_text(
        '{% set subject %}[{{ scope }}] ★ {{ sender }}{% endset %}{% set headline %}Star!{% endset %}')
    app = make_app(GITHUB_WEBHOOK_SECRET=SECRET, TEMPLATES_DIR=str(tmp_path))
    row = mail_for((app.test_client(), app), "star", {"action": "created", "repository": REPO, "sender": {"login": "bo"}})
    assert row.subject == "[acme/widgets] ★ bo" and row.text.startswith("Star!")
