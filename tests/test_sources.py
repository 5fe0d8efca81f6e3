"""Sources defined as YAML: the format's validation (one line naming file and field), the
template engine (sandbox, missing fields, fallbacks), auth kinds, and SOURCES_DIR."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import textwrap

import pytest

from bridge.events import Rejected
from bridge.settings import EnvReader, SettingsError
from bridge.sources import declarative
from tests.source_defs import hex_hmac

GOOD = """\
auth:
  none: true
event: "{{ headers['X-Event'] }}"
subject: "[{{ payload.project }}] {{ event }}"
text: "{{ payload.message }}"
"""


def source_from(tmp_path, text: str, name: str = "acme"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return declarative.DeclarativeSource(name, declarative.read_definition(path), path)


def run(source, payload, headers=None, env=None, route=None, raw: bytes | None = None):
    body = raw if raw is not None else json.dumps(payload).encode()
    headers = {"Content-Type": "application/json", **(headers or {})}
    config = source.load_config(EnvReader(env or {}))
    source.verify(headers, body, config)
    (event,) = source.parse(headers, body, config, route=route)
    return event


# --------------------------------------------------------------------------- validation

BROKEN = [
    ("auth: [unclosed", "not valid YAML on line"),
    ("- a list", "must be a mapping of fields"),
    ("subject: x", "auth: required"),
    ("auth: {signature_magic: {header: X}}", "auth: unknown kind 'signature_magic'"),
    ("auth: {none: true, bearer: {secret_env: T}}", "auth: exactly one of hmac, token, bearer, none, not 2"),
    ("auth: {none: false}", "auth.none:"),
    ("auth: {hmac: {header: X-Sig}}", "auth.hmac.secret_env: required"),
    ("auth: {hmac: {header: X-Sig, algorithm: md5, secret_env: S}}", "auth.hmac.algorithm:"),
    ("auth: {hmac: {header: X-Sig, encoding: base32, secret_env: S}}", "auth.hmac.encoding:"),
    ("auth: {hmac: {header: X-Sig, secret_env: S, signed: '{{ body '}}", "auth.hmac.signed: template error on line 1"),
    ("auth: {token: {secret_env: S}}", "auth.token.header: required"),
    ("auth: {bearer: {secret_env: my-secret}}", "auth.bearer.secret_env: String should match pattern"),
    ("auth: {none: true}\nsubjekt: x", "subjekt: unknown field"),
    ("auth: {none: true}\nsubject: '{{ payload.x '", "subject: template error on line 1"),
    ("auth: {none: true}\nhtml: '{% if x %}'", "html: template error on line 1"),
    ("auth: {none: true}\nevents: {'deploy*': {text: '{% for %}'}}", "events.'deploy*'.text: template error"),
    ("auth: {none: true}\nevents: {'deploy*': {auth: {none: true}}}", "events.'deploy*'.auth: unknown field"),
    ("auth: {none: true}\ndedup_window: -1", "dedup_window: Input should be greater than or equal to 0"),
    ("auth: {none: true}\nmax_body: 0", "max_body: Input should be greater than or equal to 1"),
]


@pytest.mark.parametrize("text, expected", BROKEN, ids=[b[1][:40] for b in BROKEN])
def test_a_broken_definition_is_one_line_naming_file_and_field(tmp_path, text, expected):
    (tmp_path / "acme.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(SettingsError) as err:
        declarative.load_all(str(tmp_path))
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'acme.yaml'}: ") and expected in message, message
    assert "\n" not in message


@pytest.mark.parametrize("file_name, expected", [
    ("Acme CI.yaml", "the file name is the source's URL"),
    ("github.yaml", "github is a hand-written source"),
])
def test_file_names_that_cannot_be_a_source(tmp_path, file_name, expected):
    (tmp_path / file_name).write_text(GOOD, encoding="utf-8")
    with pytest.raises(SettingsError, match=expected):
        declarative.load_all(str(tmp_path), reserved=("github",))


def test_sources_dir_must_be_a_folder(tmp_path):
    with pytest.raises(SettingsError, match="SOURCES_DIR=.* is not a folder"):
        declarative.load_all(str(tmp_path / "absent"))


def test_the_app_refuses_to_start_and_says_which_file(make_app, tmp_path, capsys):
    (tmp_path / "defs").mkdir()
    (tmp_path / "defs" / "broken.yaml").write_text("auth: {magic: true}\n", encoding="utf-8")
    with pytest.raises(SystemExit) as exit_:
        make_app(SOURCES_DIR=str(tmp_path / "defs"))
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_.value.code == 2 and "broken.yaml: auth: unknown kind 'magic'" in line


def test_a_user_file_replaces_the_built_in_of_that_name(make_app, tmp_path):
    (tmp_path / "gitlab.yaml").write_text(GOOD, encoding="utf-8")
    app = make_app(SOURCES_DIR=str(tmp_path))
    r = app.test_client().post("/hooks/gitlab", json={"project": "mine", "message": "hello"},
                               headers={"X-Event": "custom"})
    assert r.status_code == 202
    (row,) = app.extensions["bridge"].outbox.recent(limit=1)
    assert row.subject == "[mine] custom" and "hello" in row.text


# --------------------------------------------------------------------------- templates

def test_missing_fields_render_empty_and_chain(tmp_path):
    src = source_from(tmp_path, """\
        auth: {none: true}
        subject: "[{{ payload.a.b.c }}] {{ payload.missing }}{{ payload.none }} x"
        text: "{{ payload.list[3].name }}|{{ payload.flag }}|{{ payload.obj }}"
        """)
    event = run(src, {"none": None, "flag": False, "obj": {"k": 1}, "list": []})
    assert event.context["subject"] == "[] x"
    assert event.context["text"] == '|false|{"k": 1}\n'


def test_a_payload_key_wins_over_a_dict_method(tmp_path):
    src = source_from(tmp_path, """\
        auth: {none: true}
        subject: "{{ payload['values'].A }} {{ payload.values.A }} {{ payload.items }}"
        """)
    assert run(src, {"values": {"A": 7}}).context["subject"] == "7 7"


@pytest.mark.parametrize("template", [
    "{{ payload.__class__.__mro__ }}",          # no reaching Python internals
    "{{ payload.update({'a': 1}) }}",           # no changing what is read
    "{{ payload.n + 1 }}",                      # an undefined field in arithmetic
    "{{ 1 / payload.zero }}",                   # a plain runtime error
])
def test_a_failing_template_gives_the_generic_mail(tmp_path, template, caplog):
    src = source_from(tmp_path, f"""\
        auth: {{none: true}}
        event: build
        subject: "{template}"
        """)
    with caplog.at_level(logging.ERROR, logger="bridge"):
        event = run(src, {"project": "widgets", "zero": 0, "nested": {"ref": "main", "secret": "hunter2"}})
    assert event.context["subject"] == "[widgets] build from acme"
    assert "nested.ref: main" in event.context["text"] and "project: widgets" in event.context["text"]
    assert event.ignored is None and "class" not in event.context["text"] and "hunter2" not in event.context["text"]
    assert "render_failed" in caplog.text or "__class__" in template   # an unsafe attribute is just undefined


def test_text_lines_keep_their_breaks_and_tag_lines_leave_none(tmp_path):
    src = source_from(tmp_path, """\
        auth: {none: true}
        text: |
          {% for c in payload.commits %}
          - {{ c }}{% if loop.last %} (last){% endif %}
          {% endfor %}
          Done.
        """)
    assert run(src, {"commits": ["a", "b"]}).context["text"] == "- a\n- b (last)\nDone.\n"


def test_events_entries_override_and_the_first_match_wins(tmp_path):
    src = source_from(tmp_path, """\
        auth: {none: true}
        event: "{{ headers['x-event'] }}"
        subject: top {{ event }}
        events:
          "deploy-prod": {subject: "prod"}
          "deploy*": {subject: "any deploy", when: "false"}
        """)
    assert run(src, {}, {"X-Event": "build"}).context["subject"] == "top build"
    assert run(src, {}, {"X-EVENT": "deploy-prod"}).context["subject"] == "prod"
    staging = run(src, {}, {"X-Event": "deploy-staging"})
    assert staging.context["subject"] == "any deploy" and staging.ignored == "`when` is false for deploy-staging"


def test_thread_dedup_route_and_html(tmp_path):
    src = source_from(tmp_path, """\
        auth: {none: true}
        dedup: "{{ headers['X-Delivery'] }}"
        thread: "{{ payload.project }}/{{ route }}"
        thread_root: "{{ payload.first }}"
        html: "<p>{{ payload.message }}</p>"
        """)
    a = run(src, {"project": "w", "message": "<b>", "first": True}, {"X-Delivery": "d1"}, route="ops")
    b = run(src, {"project": "w", "message": "other"}, {"X-Delivery": "d1"}, route="ops")
    c = run(src, {"project": "w", "message": "other"}, route="ops")
    assert a.dedup_key == b.dedup_key != c.dedup_key and a.delivery_id == "d1"
    assert a.thread_key == "acme:w/ops" and a.thread_root and not b.thread_root
    assert a.context["html"] == "<p>&lt;b&gt;</p>"


def test_a_form_body_carries_the_payload(tmp_path):
    src = source_from(tmp_path, GOOD)
    body = b"payload=" + json.dumps({"project": "formed", "message": "hi"}).encode().replace(b" ", b"+")
    event = run(src, None, {"Content-Type": "application/x-www-form-urlencoded"}, raw=body)
    assert event.context["subject"] == "[formed]"


@pytest.mark.parametrize("body, status", [(b"{", 400), (b"[1, 2]", 400), (b'"\\ud800"', 400)])
def test_a_body_that_is_no_json_object_is_400(tmp_path, body, status):
    with pytest.raises(Rejected) as err:
        run(source_from(tmp_path, GOOD), None, raw=body)
    assert err.value.status == status


def test_event_filter_globs_from_the_environment(tmp_path):
    src = source_from(tmp_path, """\
        auth: {none: true}
        event: "{{ payload.kind }}"
        when: "{{ event is selected('*', '!pipeline.success') }}"
        """)
    assert run(src, {"kind": "pipeline.success"}).ignored
    assert not run(src, {"kind": "pipeline.failed"}).ignored
    assert not run(src, {"kind": "pipeline.success"}, env={"ACME_EVENTS": "*"}).ignored
    assert run(src, {"kind": "push"}, env={"ACME_EVENTS": "pipeline"}).ignored


# --------------------------------------------------------------------------- auth

SECRET = "s3cret"


def _hmac_source(tmp_path, spec: str):
    return source_from(tmp_path, f"auth:\n  hmac: {spec}\nsubject: ok\n")


@pytest.mark.parametrize("spec, header, value", [
    ("{header: X-Sig, secret_env: S}", "X-Sig", lambda b: hex_hmac(SECRET, b)),
    ("{header: X-Sig, secret_env: S}", "x-sig", lambda b: hex_hmac(SECRET, b).upper()),
    ("{header: X-Sig, prefix: 'sha256=', secret_env: S}", "X-Sig", lambda b: "sha256=" + hex_hmac(SECRET, b)),
    ("{header: X-Sig, algorithm: sha1, secret_env: S}", "X-Sig", lambda b: hex_hmac(SECRET, b, "sha1")),
    ("{header: X-Sig, algorithm: sha512, secret_env: S}", "X-Sig", lambda b: hex_hmac(SECRET, b, "sha512")),
    ("{header: X-Sig, encoding: base64, prefix: 'v1,', secret_env: S}", "X-Sig",
     lambda b: "v1," + base64.b64encode(hmac.new(SECRET.encode(), b, hashlib.sha256).digest()).decode()),
    ("{header: [X-A, X-B], secret_env: S}", "X-B", lambda b: hex_hmac(SECRET, b)),
    ("{header: X-Sig, signed: \"{{ headers['X-Ts'] }}:{{ body }}\", secret_env: S}", "X-Sig",
     lambda b: hex_hmac(SECRET, b"1700000000:" + b)),
    ("{header: X-Sig, signed: \"{{ body }}.{{ body | length }}.{{ body }}\", secret_env: S}", "X-Sig",   # whole body
     lambda b: hex_hmac(SECRET, b + b"." + str(len(b.decode())).encode() + b"." + b)),
])
def test_hmac_variants_accept_the_right_signature_only(tmp_path, spec, header, value):
    src = _hmac_source(tmp_path, spec)
    body = json.dumps({"é": "ü"}, ensure_ascii=False).encode()
    good = {header: value(body), "X-Ts": "1700000000"}
    assert run(src, None, good, env={"S": SECRET}, raw=body).context["subject"] == "ok"
    for headers in ({"X-Ts": "1700000000"}, {**good, header: value(body + b" ")}):
        with pytest.raises(Rejected) as err:
            run(src, None, headers, env={"S": SECRET}, raw=body)
        assert err.value.status == 401 and SECRET not in err.value.reason


def test_token_and_bearer(tmp_path):
    token = source_from(tmp_path, "auth: {token: {header: X-Token, secret_env: T}}\n", name="t")
    bearer = source_from(tmp_path, "auth: {bearer: {secret_env: T}}\n", name="b")
    env = {"T": "tok"}
    run(token, {}, {"X-Token": "tok"}, env=env)
    run(bearer, {}, {"Authorization": "Bearer tok"}, env=env)
    run(bearer, {}, {"Authorization": "Basic " + base64.b64encode(b"grafana:tok").decode()}, env=env)
    for src, headers in ((token, {"X-Token": "tok2"}), (bearer, {"Authorization": "Bearer nope"}),
                         (bearer, {"Authorization": "Basic " + base64.b64encode(b"tok:x").decode()}), (bearer, {})):
        with pytest.raises(Rejected) as err:
            run(src, {}, headers, env=env)
        assert err.value.status == 401


def test_an_unset_secret_accepts_unsigned_deliveries_and_says_so(tmp_path, caplog):
    src = _hmac_source(tmp_path, "{header: X-Sig, secret_env: ACME_SECRET}")
    with caplog.at_level(logging.WARNING, logger="bridge"):
        assert run(src, {}).context["subject"] == "ok"
    assert "ACME_SECRET is not set: /hooks/acme accepts unsigned deliveries" in caplog.text


def test_the_gitlab_ci_filter_is_configurable(make_app, corpus):
    from tests.source_defs import signed_headers
    body = (corpus / "gitlab" / "pipeline_hook__pipeline_succeeded.json").read_bytes()
    for env, status in (({}, "ignored"), ({"GITLAB_EVENTS": "*"}, "accepted")):
        client = make_app(**env).test_client()
        r = client.post("/hooks/gitlab", data=body, headers=signed_headers("gitlab", body, {"X-Gitlab-Event": "Pipeline Hook"}))
        assert r.json["status"] == status, r.json
