"""Property tests of the template engine: whatever JSON arrives — arbitrary documents, corpus
payloads with a part replaced by anything — a built-in or user definition makes an event with
a one-line subject and a text, or refuses with a typed 4xx. Never an exception (a 500)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from bridge.events import Rejected
from bridge.settings import EnvReader
from bridge.sources import declarative
from tests.conftest import CORPUS
from tests.test_sources_e2e import ACME

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                       HealthCheck.function_scoped_fixture])
EVENT_HEADERS = {"gitlab": "X-Gitlab-Event", "gitea": "X-Gitea-Event", "grafana": "X-Grafana-Event",
                 "sentry": "Sentry-Hook-Resource", "jira": "X-Jira-Event", "acme-ci": "X-Acme-Event"}
CORPUS_DIRS = {"gitlab": "gitlab", "gitea": "gitea", "grafana": "grafana", "sentry": "sentry", "jira": "jira"}

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
keys = st.sampled_from(["project", "object_kind", "object_attributes", "alerts", "status", "issue", "data",
                        "action", "commits", "labels", "values", "items", "changes", "ref", "webhookEvent",
                        "title", "user", "repository", "comment", "fields", "name", "__class__"]) | st.text(max_size=6)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(keys, inner, max_size=4), max_leaves=14)
documents = st.dictionaries(keys, json_values, max_size=6)
events = st.sampled_from(["push", "Push Hook", "issues", "issue", "pull_request", "firing", "event_alert", "",
                          "jira:issue_updated", "deploy-prod", "build"]) | st.text(max_size=12)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    folder = tmp_path_factory.mktemp("defs")
    (folder / "acme-ci.yaml").write_text(ACME, encoding="utf-8")
    return declarative.load_all(str(folder))


def assert_mails(source, doc, event_name: str) -> None:
    headers = {"Content-Type": "application/json", EVENT_HEADERS[source.NAME]: event_name}
    body = json.dumps(doc).encode()
    config = source.load_config(EnvReader({}))
    try:
        (event,) = source.parse(headers, body, config)
    except Rejected as exc:
        assert 400 <= exc.status < 500 and "\n" not in exc.reason
        return
    mail = event.context
    assert mail["subject"].strip() and "\n" not in mail["subject"] and len(mail["subject"]) <= 250
    assert mail["text"].strip()
    assert event.kind.startswith(source.NAME + ":") and "\n" not in event.kind


@pytest.mark.parametrize("name", sorted(EVENT_HEADERS))
@FUZZ
@given(doc=documents, event_name=events)
def test_arbitrary_payloads_make_a_mail(sources, name, doc, event_name):
    assert_mails(sources[name], doc, event_name)


def _corpus_docs(product: str) -> list[tuple[dict, str]]:
    index = CORPUS / product / "index.json"
    if not index.is_file():
        return []
    out = []
    for entry in json.loads(index.read_text()):
        headers = entry["headers"]
        event = next((v for k, v in headers.items() if k in EVENT_HEADERS.values()), "")
        out.append((json.loads((CORPUS / product / entry["file"]).read_text()), event))
    return out


def _replace(doc, path: list[int], value):
    """doc with the node that `path` picks (indexes into each level's keys) replaced by value."""
    if not path or not isinstance(doc, (dict, list)) or not doc:
        return value
    keys = list(doc.keys()) if isinstance(doc, dict) else list(range(len(doc)))
    key = keys[path[0] % len(keys)]
    copy = dict(doc) if isinstance(doc, dict) else list(doc)
    copy[key] = _replace(doc[key], path[1:], value)
    return copy


@pytest.mark.parametrize("name", sorted(CORPUS_DIRS))
@FUZZ
@given(pick=st.integers(min_value=0, max_value=100), path=st.lists(st.integers(0, 50), min_size=1, max_size=5),
       value=json_values)
def test_corpus_payloads_with_a_part_replaced_make_a_mail(corpus, sources, name, pick, path, value):
    docs = _corpus_docs(CORPUS_DIRS[name])
    doc, event = docs[pick % len(docs)]
    assert_mails(sources[name], _replace(doc, path, value), event)
