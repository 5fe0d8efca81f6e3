"""Property tests over every source's parser: arbitrary bytes and mutated corpus payloads
only ever yield events (that render) or the typed 4xx error, never an exception."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from bridge.render import Renderer
from bridge.settings import EnvReader
from bridge.sources import HOOKS
from bridge.events import Answer, Rejected
from tests.conftest import CORPUS

RENDERER = Renderer()
ENV = EnvReader({"GITHUB_EVENTS": "*"})
CONFIGS = {name: source.load_config(ENV) for name, source in HOOKS.items()}
HEADERS = {"generic": {}, "github": {"X-GitHub-Event": "push", "X-GitHub-Delivery": "d-1"},
           "alertmanager": {}}
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=10)


def outcome(name: str, body: bytes, extra_headers: dict | None = None):
    """Run one source's verify + parse + render; only a typed 4xx may escape."""
    source = HOOKS[name]
    headers = {"Content-Type": "application/json", **HEADERS[name], **(extra_headers or {})}
    try:
        source.verify(headers, body, CONFIGS[name])
        parsed = source.parse(headers, body, CONFIGS[name])
    except Rejected as exc:
        assert 400 <= exc.status < 500 and exc.reason and "\n" not in exc.reason
        return exc
    if isinstance(parsed, Answer):
        return parsed
    for event in parsed:
        mail = RENDERER.render(event)
        assert mail.subject.strip() and "\n" not in mail.subject
    return parsed


@pytest.mark.parametrize("name", sorted(HOOKS))
@FUZZ
@given(body=st.binary(max_size=300))
def test_arbitrary_bytes(name, body):
    outcome(name, body)


@pytest.mark.parametrize("name", sorted(HOOKS))
@FUZZ
@given(doc=json_values)
def test_arbitrary_json(name, doc):
    outcome(name, json.dumps(doc).encode())


def _corpus_samples(folder: str) -> list[Path]:
    path = CORPUS / folder
    return sorted(p for p in path.glob("*.json") if p.name != "index.json") if path.is_dir() else []


def _paths(doc, prefix=()):
    """Every path into a JSON document (dict keys and list indexes)."""
    yield prefix
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            yield from _paths(value, prefix + (i,))


def _mutate(doc, path, replacement, delete):
    if not path:
        return replacement
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    if delete and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = replacement
    return doc


@st.composite
def mutated(draw, folder: str):
    samples = _corpus_samples(folder)
    raw = draw(st.sampled_from(samples)).read_bytes()
    if draw(st.booleans()):
        return raw[: draw(st.integers(0, len(raw)))]             # cut anywhere
    doc = json.loads(raw)
    for _ in range(draw(st.integers(1, 4))):
        paths = list(_paths(doc))
        doc = _mutate(doc, draw(st.sampled_from(paths)), draw(json_values), draw(st.booleans()))
    return json.dumps(doc).encode()


def _corpus_event(path_name: str) -> str:
    return path_name.split(".")[0]


@pytest.mark.parametrize("name, folder", [("github", "github"), ("alertmanager", "alertmanager")])
def test_mutated_corpus_payloads(name, folder, corpus):
    @FUZZ
    @given(body=mutated(folder), event=st.sampled_from(sorted({_corpus_event(p.name)
                                                                for p in _corpus_samples(folder)})))
    def run(body, event):
        outcome(name, body, {"X-GitHub-Event": event} if name == "github" else None)

    run()
