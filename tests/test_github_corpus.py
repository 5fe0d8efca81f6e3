"""Every payload in ../shared/corpus/github (via its index.json), read in place, and the
signature vectors that come with it."""
import hashlib
import json
import re
import urllib.parse

import pytest

from bridge.sources.github import sign
from tests.conftest import CORPUS
from tests.github_payloads import SECRET, headers_for

INDEX = CORPUS / "github" / "index.json"
ENTRIES = json.loads(INDEX.read_text()) if INDEX.is_file() else [None]   # None: the corpus fixture reports it
DIRTY = re.compile(r"\bNone\b|\bnull\b|\{\{|\}\}")


@pytest.fixture(scope="module")
def shared_app(tmp_path_factory):
    """One bridge for the whole table: each payload is a new delivery, so they do not interact."""
    from bridge import create_app
    tmp = tmp_path_factory.mktemp("corpus")
    app = create_app({"DATABASE_URL": f"sqlite:///{tmp / 'bridge.db'}", "MAIL_DIR": str(tmp / "mail"),
                      "MAIL_TO": "team@example.com", "MAIL_FROM": "bridge@example.com",
                      "GITHUB_WEBHOOK_SECRET": SECRET, "GITHUB_EVENTS": "*"})
    yield app
    app.extensions["bridge"].outbox.engine.dispose()


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e["file"] if e else "missing")
def test_corpus_payload_makes_one_clean_mail(corpus, shared_app, entry):
    body = (corpus / "github" / entry["file"]).read_bytes()
    doc = json.loads(body)
    r = shared_app.test_client().post("/hooks/github", data=body, headers=headers_for(entry["event"], body))
    if entry["event"] == "ping":
        assert (r.status_code, r.json["status"]) == (200, "pong")
        return
    assert r.status_code == 202, r.json
    (row,) = [row for row in shared_app.extensions["bridge"].outbox.recent(limit=500) if row.id == r.json["id"]]
    assert row.subject.strip() and not DIRTY.search(row.subject) and not DIRTY.search(row.text)
    full_name = doc.get("repository", {}).get("full_name") if isinstance(doc.get("repository"), dict) else None
    if full_name:
        assert f"[{full_name}]" in row.subject
    assert not row.text.lstrip().startswith(("{", "[")) and '": ' not in row.text
    assert json.loads(row.headers)["X-GitHub-Event"] == entry["event"]


def test_corpus_files_are_the_recorded_bytes(corpus):
    for entry in json.loads((corpus / "github" / "index.json").read_text()):
        assert hashlib.sha256((corpus / "github" / entry["file"]).read_bytes()).hexdigest() == entry["sha256"]


def test_signature_vectors(corpus, make_app):
    vec = json.loads((corpus / "github" / "signature-vector.json").read_text())
    secret = vec["documented"]["secret"]
    client = make_app(GITHUB_WEBHOOK_SECRET=secret, GITHUB_EVENTS="*").test_client()
    for case in vec["computed_here"]["cases"]:
        if not case.get("file", "").endswith(".json"):
            continue
        body = (corpus / "github" / case["file"]).read_bytes()
        headers = headers_for(case["file"].split(".")[0], body, secret=None)
        headers["X-Hub-Signature-256"] = case["x_hub_signature_256"]
        assert client.post("/hooks/github", data=body, headers=headers).status_code in (200, 202)
        headers.pop("X-Hub-Signature-256")
        headers["X-Hub-Signature"] = case["x_hub_signature"]                  # the legacy SHA-1 header alone
        assert client.post("/hooks/github", data=body, headers=headers).status_code in (200, 202)
    for case in vec["must_reject"]:
        body = case["payload"].encode()
        headers = headers_for("push", body, secret=None)
        headers["X-Hub-Signature-256"] = case["x_hub_signature_256"]
        if case["secret"] != secret:
            headers["X-Hub-Signature-256"] = sign(case["secret"], body)
        assert client.post("/hooks/github", data=body, headers=headers).status_code == 401, case["why"]


def test_captured_form_ping(corpus, make_app):
    folder = corpus / "github" / "extras" / "ping.form-urlencoded"
    body = (folder / "body").read_bytes()
    headers = {k: v for k, v in json.loads((folder / "headers.json").read_text()).items()
               if k.lower() not in ("host", "content-length", "connection")}
    r = make_app(GITHUB_WEBHOOK_SECRET=None).test_client().post("/hooks/github", data=body, headers=headers)
    assert (r.status_code, r.json["status"]) == (200, "pong")
    assert json.loads(urllib.parse.parse_qs(body.decode().strip())["payload"][0])["hook_id"]
