"""Any JSON object under any event name becomes one mail or a 4xx, never an exception."""
import json

from hypothesis import HealthCheck, given, settings, strategies as st

from bridge.render import Renderer
from bridge.settings import EnvReader
from bridge.sources import github
from bridge.events import Rejected

EVENTS = ["push", "issues", "issue_comment", "pull_request", "pull_request_review", "pull_request_review_comment",
          "release", "workflow_run", "workflow_job", "check_run", "check_suite", "create", "delete", "fork", "star",
          "watch", "discussion", "discussion_comment", "deployment_status", "status", "dependabot_alert",
          "code_scanning_alert", "secret_scanning_alert", "security_advisory", "gollum", "brand_new_event"]
KEYS = ["action", "repository", "sender", "issue", "pull_request", "comment", "review", "release", "alert",
        "workflow_run", "check_run", "commits", "head_commit", "ref", "ref_type", "discussion", "deployment",
        "deployment_status", "number", "title", "full_name", "login", "name", "html_url", "body", "state",
        "conclusion", "labels", "assets", "pull_requests", "base", "head", "merged", "forkee", "branches"]
scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=30)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.sampled_from(KEYS), inner, max_size=5), max_leaves=25)
payloads = st.dictionaries(st.sampled_from(KEYS), values, max_size=10)

CONFIG = github.load_config(EnvReader({"GITHUB_WEBHOOK_SECRET": "s", "GITHUB_EVENTS": "*"}))
RENDERER = Renderer()


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event=st.sampled_from(EVENTS), doc=payloads)
def test_any_payload_renders_or_is_rejected(event, doc):
    headers = {"Content-Type": "application/json", "X-GitHub-Event": event, "X-GitHub-Delivery": "d"}
    try:
        events = github.parse(headers, json.dumps(doc).encode(), CONFIG)
    except Rejected as exc:
        assert 400 <= exc.status < 500
        return
    (ev,) = events
    mail = RENDERER.render(ev)
    assert mail.subject.strip()
    assert mail.text.strip() and mail.html
