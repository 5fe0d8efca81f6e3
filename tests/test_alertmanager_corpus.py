"""Every notification in ../shared/corpus/alertmanager (read in place), replayed as captured:
a 2xx, and one mail per distinct notification, Chinese text intact."""
import base64
import json
import re

import pytest

from bridge.render import Renderer
from bridge.settings import EnvReader
from bridge.sources import alertmanager as am
from tests.conftest import CORPUS, need

TOKEN = "test-bearer-token-123"  # the corpus README's test value
CJK = re.compile(r"[\u3400-\u9fff]")
DEFAULTS = am.load_config(EnvReader({}))
FILES = sorted(p.name for p in (CORPUS / "alertmanager").glob("*.json")) or ["(corpus missing)"]


def envelopes(corpus):
    return [(p.name, json.loads(p.read_text("utf-8"))) for p in sorted((corpus / "alertmanager").glob("*.json"))]


def body_bytes(envelope):
    # as Alertmanager writes it: compact JSON, raw UTF-8, a trailing newline
    return json.dumps(envelope["body"], ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


def replay_headers(envelope):
    """The captured headers minus Host/Content-Length; auth kept in its captured form (basic
    stays basic), with our token, and added where the capture had none."""
    headers = {k: v for k, v in envelope["headers"].items() if k.lower() not in ("host", "content-length")}
    auth = headers.pop("Authorization", "")
    if auth.startswith("Basic "):
        user = base64.b64decode(auth[6:]).decode().partition(":")[0]
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{TOKEN}".encode()).decode()
    else:
        headers["Authorization"] = f"Bearer {TOKEN}"
    return headers


def notification_identity(body):
    """What makes two notifications the same (corpus README): group key, status, alerts."""
    return (body.get("groupKey"), body.get("status"),
            tuple((a.get("fingerprint"), a.get("startsAt"), a.get("endsAt")) for a in body["alerts"]))


def cjk_annotations(body):
    return {v for a in body["alerts"] for v in (a.get("annotations") or {}).values() if CJK.search(v)}


@pytest.fixture
def am_client(make_app):
    app = make_app(ALERTMANAGER_TOKEN=TOKEN, BRIDGE_TIMEZONE="Asia/Shanghai")
    return app, app.test_client()


@pytest.mark.parametrize("name", FILES)
def test_each_capture_is_accepted_and_mailed(corpus, am_client, name):
    app, client = am_client
    envelope = json.loads((corpus / "alertmanager" / name).read_text("utf-8"))
    r = client.post("/hooks/alertmanager", data=body_bytes(envelope), headers=replay_headers(envelope))
    assert r.status_code == 202, r.json
    (row,) = app.extensions["bridge"].outbox.recent()
    body = envelope["body"]
    assert row.subject.startswith("[FIRING:" if body["status"] == "firing" else "[RESOLVED]")
    assert "\\u" not in row.text
    flat = "".join(row.text.split())
    for value in cjk_annotations(body):
        assert "".join(value.split()) in flat
    listed = min(len(body["alerts"]), DEFAULTS.max_alerts)
    assert len(re.findall(r"^\d+\. \[(FIRING|RESOLVED)", row.text, re.M)) == listed


def test_whole_corpus_one_mail_per_distinct_notification(corpus, am_client):
    app, client = am_client
    captured = envelopes(corpus)
    answers = [client.post("/hooks/alertmanager", data=body_bytes(e), headers=replay_headers(e)).status_code
               for _, e in captured]
    assert all(200 <= code < 300 for code in answers)
    distinct = {notification_identity(e["body"]) for _, e in captured}
    assert len(app.extensions["bridge"].outbox.recent(limit=1000)) == len(distinct)
    assert answers.count(202) == len(distinct) and len(distinct) < len(captured)  # the 503 retries repeat


def test_subjects_match_alertmanagers_own_email(corpus):
    """The basic-bearer captures are the same alerts as Alertmanager's own email samples."""
    samples = corpus.parent / "docs" / "alertmanager-email-samples" / "subjects.txt"
    need(samples.is_file(), f"Alertmanager's email samples are not at {samples}")
    theirs = set(samples.read_text("utf-8").splitlines())
    ours = set()
    for name, envelope in envelopes(corpus):
        if "_basic-bearer_" in name:
            (event,) = am.parse({"Content-Type": "application/json"}, body_bytes(envelope), DEFAULTS)
            ours.add(Renderer().render(event).subject)
    assert ours and ours <= theirs
