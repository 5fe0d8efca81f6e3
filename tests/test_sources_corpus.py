"""Every payload of ../shared/corpus/{gitlab,gitea,gogs,grafana,sentry,jira} (via index.json),
read in place, signed as the product signs, through /hooks/<source>: a readable mail each, or
a documented filter's 200 ignored. Also counts which payloads got a dedicated rendering (an
`events:` entry of the definition) rather than the definition's generic one."""
from __future__ import annotations

import json
import re

import pytest

from tests.conftest import CORPUS
from tests.source_defs import ENDPOINT, SECRETS, signed_headers

PRODUCTS = ("gitlab", "gitea", "gogs", "grafana", "sentry", "jira")
DIRTY = re.compile(r"\bNone\b|\bnull\b|\bundefined\b|\{\{|\}\}|\{%")
JSON_KEY = re.compile(r'"[A-Za-z_][\w.-]*"\s*:')


def _entries():
    out = []
    for product in PRODUCTS:
        index = CORPUS / product / "index.json"
        if index.is_file():
            out += [(product, e) for e in json.loads(index.read_text())]
    return out or [None]          # None: the corpus fixture reports (skip, or fail under CI)


ENTRIES = _entries()


@pytest.fixture(scope="module")
def shared_app(tmp_path_factory):
    from bridge import create_app
    tmp = tmp_path_factory.mktemp("sources-corpus")
    app = create_app({"DATABASE_URL": f"sqlite:///{tmp / 'bridge.db'}", "MAIL_DIR": str(tmp / "mail"),
                      "MAIL_TO": "team@example.com", "MAIL_FROM": "bridge@example.com", **SECRETS})
    yield app
    app.extensions["bridge"].outbox.engine.dispose()


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _words(doc) -> str:
    return json.dumps(doc, ensure_ascii=False)


@pytest.mark.parametrize("item", ENTRIES, ids=lambda i: f"{i[0]}/{i[1]['file']}" if i else "missing")
def test_corpus_payload_makes_one_readable_mail(corpus, shared_app, item):
    product, entry = item
    body = (corpus / product / entry["file"]).read_bytes()
    name = ENDPOINT.get(product, product)
    r = shared_app.test_client().post(f"/hooks/{name}", data=body,
                                      headers=signed_headers(product, body, entry["headers"]))
    assert r.status_code in (200, 202), r.json
    assert r.json["status"] in ("accepted", "ignored", "duplicate"), r.json
    if r.json["status"] == "ignored":
        assert product == "gitlab" and re.match(r"(job|pipeline)\.", entry["event"].replace("build.", "job.")), r.json
    (row,) = [row for row in shared_app.extensions["bridge"].outbox.recent(limit=500) if row.id == r.json["id"]]
    raw = _words(json.loads(body))
    for bad in DIRTY.findall(row.subject + row.text):
        assert bad in raw, (bad, row.subject, row.text)
    names = entry.get("subject_names") or []
    assert not names or any(" ".join(n.split()).casefold() in row.subject.casefold() for n in names), row.subject
    assert not _is_json(row.text) and len(set(JSON_KEY.findall(row.text))) < 5, row.text
    source = shared_app.extensions["bridge"].hooks[name]
    _, glob = source.fields_for(row.kind.split(":", 1)[1])
    assert glob is not None, f"{row.kind} fell to the top-level templates, not a dedicated events: entry"


@pytest.mark.parametrize("product", PRODUCTS)
def test_wrong_or_missing_credential_is_401(corpus, shared_app, product):
    entry = json.loads((corpus / product / "index.json").read_text())[0]
    body = (corpus / product / entry["file"]).read_bytes()
    good = signed_headers(product, body, entry["headers"])
    credential = {"Authorization", "X-Gitlab-Token", "X-Gitea-Signature", "X-Gogs-Signature",
                  "Sentry-Hook-Signature", "X-Hub-Signature", "X-Hub-Signature-256"}
    missing = {k: v for k, v in good.items() if k not in credential}
    wrong = {**missing, **{k: v[:-2] + ("00" if not v.endswith("00") else "11") for k, v in good.items()
                           if k in credential}}
    client = shared_app.test_client()
    for headers in (missing, wrong):
        r = client.post(f"/hooks/{ENDPOINT.get(product, product)}", data=body, headers=headers)
        assert r.status_code == 401 and r.json["reason"], r.json
