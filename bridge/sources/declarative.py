"""Sources defined as data: one YAML file per source (docs/sources.md), run by one engine.

The built-in definitions live in bridge/sources/defs/, a user's own in SOURCES_DIR (a file
with a built-in's name replaces it). Each file is validated once, at start-up, with pydantic:
typed models the engine then runs, and one error line naming the file and the field. A
`DeclarativeSource` has the attributes of a hand-written source module (NAME, MAX_BODY,
load_config, verify, parse), so web.py serves both on one code path.
"""
from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from bridge.bodies import HmacCheck, check_whole
from bridge.events import (Event, Rejected, form_payload, header, json_object, matches_any, media_type,
                           presented_secret, same_secret)
from bridge.logs import log_line
from bridge.render import one_line
from bridge.settings import EnvReader, SettingsError, route_key
from bridge.sources import sandbox

BUILTIN_DIR = Path(__file__).parent / "defs"
DEFAULT_MAX_BODY = 10 * 1024 * 1024
NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
ENV_RE = r"^[A-Za-z_][A-Za-z0-9_]*$"
EVENT_CHARS = 200       # an event name longer than this is cut (it names a kind, it is no text)
SUBJECT_CHARS = 250
AUTH_KINDS = ("hmac", "token", "bearer", "none")


def _template(source: str) -> str:
    sandbox.check_syntax(source)
    return source


Template = Annotated[str, AfterValidator(_template)]
EnvName = Annotated[str, Field(pattern=ENV_RE)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- auth

class HeadersChecked:
    """The BodyCheck of a credential that is all in the headers: checked before the body."""

    def update(self, chunk: bytes) -> None:
        pass

    def finish(self) -> None:
        pass


BODY_MARK = "\x00the body\x00"   # stands for the body when a `signed` template is split around it


class HmacAuth(Strict):
    """An HMAC of the body (or of the `signed` template) in a header, e.g. sha256=<hex>."""

    header: str | list[str]
    algorithm: Literal["sha1", "sha256", "sha512"] = "sha256"
    prefix: str = ""
    encoding: Literal["hex", "base64"] = "hex"
    signed: Template | None = None
    secret_env: EnvName

    def names(self) -> list[str]:
        return [self.header] if isinstance(self.header, str) else self.header

    def describe(self) -> str:
        return f"{' or '.join(self.names())} (HMAC-{self.algorithm.upper()} with {self.secret_env})"

    def body_check(self, headers: Mapping[str, str], secret: str) -> HmacCheck | None:
        """The check that runs as the body streams in; None when the `signed` template does
        not hold the body exactly once (then `verify` checks the whole body)."""
        around = self._around(headers, BODY_MARK)
        if around.count(BODY_MARK.encode()) != 1:
            return None
        before, after = around.split(BODY_MARK.encode())
        return self._check(headers, secret, before, after)

    def verify(self, headers: Mapping[str, str], body: bytes, secret: str) -> None:
        check = self._check(headers, secret, self._around(headers, body.decode("utf-8", "surrogateescape")), b"")
        check.finish()

    def _check(self, headers: Mapping[str, str], secret: str, before: bytes, after: bytes) -> HmacCheck:
        given = next((header(headers, n).strip() for n in self.names() if header(headers, n).strip()), "")
        if not given:
            raise Rejected(401, f"missing {' or '.join(self.names())} ({self.secret_env} is set)")
        if self.prefix and given[:len(self.prefix)].lower() == self.prefix.lower():
            given = self.prefix + given[len(self.prefix):]   # the prefix in any case, as for hex digits
        return HmacCheck(secret, given, self.algorithm, self.prefix, self.encoding, before, after,
                         mismatch=f"signature in {' or '.join(self.names())} does not match the body "
                                  f"(check {self.secret_env})")

    def _around(self, headers: Mapping[str, str], body: str) -> bytes:
        """What is signed, with `body` for the body: the body alone, or the `signed` template."""
        if self.signed is None:
            return body.encode("utf-8", "surrogateescape")
        rendered = sandbox.compile_template(self.signed).render(headers=sandbox.Headers(headers), body=body)
        return rendered.encode("utf-8", "surrogateescape")


class TokenAuth(Strict):
    """A plain shared secret in a header (GitLab's X-Gitlab-Token)."""

    header: str
    secret_env: EnvName

    def describe(self) -> str:
        return f"{self.header} = {self.secret_env}"

    def body_check(self, headers: Mapping[str, str], secret: str) -> HeadersChecked:
        if not same_secret(header(headers, self.header).strip(), secret):
            raise Rejected(401, f"missing or wrong {self.header} (check {self.secret_env})")
        return HeadersChecked()


class BearerAuth(Strict):
    """Authorization: Bearer <secret>, or basic auth with the secret as password."""

    secret_env: EnvName

    def describe(self) -> str:
        return f"Authorization: Bearer {self.secret_env} (or it as basic-auth password)"

    def body_check(self, headers: Mapping[str, str], secret: str) -> HeadersChecked:
        if not same_secret(presented_secret(headers), secret):
            raise Rejected(401, f"missing or wrong credentials: send {self.secret_env} as bearer "
                                f"token or basic-auth password")
        return HeadersChecked()


class Auth(Strict):
    hmac: HmacAuth | None = None
    token: TokenAuth | None = None
    bearer: BearerAuth | None = None
    none: Literal[True] | None = None

    @model_validator(mode="before")
    @classmethod
    def _exactly_one(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            raise ValueError(f"must be a mapping with exactly one of {', '.join(AUTH_KINDS)}")
        unknown = [k for k in value if k not in AUTH_KINDS]
        if unknown:
            raise ValueError(f"unknown kind {unknown[0]!r}; use exactly one of {', '.join(AUTH_KINDS)}")
        if len(value) != 1:
            raise ValueError(f"exactly one of {', '.join(AUTH_KINDS)}, not {len(value)}")
        return value

    @property
    def scheme(self) -> HmacAuth | TokenAuth | BearerAuth | None:
        return self.hmac or self.token or self.bearer


# --------------------------------------------------------------------------- the definition

class Fields(Strict):
    """What an `events:` entry may override."""

    dedup: Template | None = None
    dedup_window: float | None = Field(default=None, ge=0)
    thread: Template | None = None
    thread_root: Template | None = None
    when: Template | None = None
    subject: Template | None = None
    text: Template | None = None
    html: Template | None = None


class Definition(Fields):
    description: str = ""
    auth: Auth
    prelude: Template = ""
    event: Template = ""
    max_body: int = Field(default=DEFAULT_MAX_BODY, ge=1, le=100 * 1024 * 1024)
    events: dict[str, Fields] = Field(default_factory=dict)


def _where(loc: tuple) -> str:
    """('events', 'deploy*', 'subject') → events.'deploy*'.subject"""
    out = []
    for part in loc:
        text = str(part)
        out.append(text if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", text) else repr(text))
    return ".".join(out) or "(top level)"


def _message(error: Mapping[str, Any]) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown field"
    if error["type"] == "missing":
        return "required"
    return re.sub(r"^(Value error|Assertion failed), ", "", error["msg"])


def read_definition(path: Path) -> Definition:
    """Load and validate one file; any fault is a SettingsError naming the file and field."""
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{path}: cannot be read ({exc})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" on line {mark.line + 1}" if mark else ""
        raise SettingsError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(doc, dict):
        raise SettingsError(f"{path}: must be a mapping of fields (auth, event, subject, ...)")
    try:
        return Definition.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise SettingsError(f"{path}: {_where(first['loc'])}: {_message(first)}") from None


# --------------------------------------------------------------------------- the engine

@dataclass(frozen=True)
class Config:
    secret: str = field(repr=False)
    selected_events: tuple[str, ...] = ()


@dataclass(frozen=True)
class Compiled:
    """One set of fields: the definition's, or an `events:` entry over it. Each template is
    compiled (with the prelude in front) when first used, so start-up stays quick."""

    parts: Mapping[str, str | None]
    prelude: str
    dedup_window: float | None

    def render(self, name: str, context: Mapping[str, Any], absent: str = "") -> str:
        source = self.parts.get(name)
        if source is None:
            return absent
        return sandbox.compile_template(self.prelude + source, html=name == "html").render(context)


def _compile(fields: Mapping[str, Any], prelude: str) -> Compiled:
    parts = {name: sandbox.keep_line_breaks(value) if value is not None else None
             for name, value in fields.items() if name != "dedup_window"}
    return Compiled(parts=parts, prelude=prelude, dedup_window=fields.get("dedup_window"))


class DeclarativeSource:
    """A source run from a Definition: verify, then parse into one Event."""

    def __init__(self, name: str, definition: Definition, path: Path):
        self.NAME = name
        self.MAX_BODY = definition.max_body
        self.path = path
        self.definition = definition
        self.events_variable = f"{route_key(name)}_EVENTS"
        # Headers that carry this source's credentials, masked wherever the request is shown
        # (a user's X-Api-Key is a secret whatever its name says).
        scheme = definition.auth.scheme
        self.secret_headers = tuple(scheme.names() if isinstance(scheme, HmacAuth) else
                                    [scheme.header] if isinstance(scheme, TokenAuth) else [])
        top = definition.model_dump(include=set(Fields.model_fields))
        self._event = _compile({"event": definition.event}, definition.prelude)
        self._top = _compile(top, definition.prelude)
        self._overrides = [(glob, _compile({**top, **entry.model_dump(exclude_none=True)}, definition.prelude))
                           for glob, entry in definition.events.items()]

    def __repr__(self) -> str:
        return f"<source {self.NAME} from {self.path}>"

    # -- the source interface

    def load_config(self, env: EnvReader) -> Config:
        scheme = self.definition.auth.scheme
        secret = env.env.get(scheme.secret_env, "") if scheme else ""
        if scheme and not secret:
            log_line("startup", logging.WARNING, source=self.NAME,
                     note=f"{scheme.secret_env} is not set: /hooks/{self.NAME} accepts unsigned deliveries")
        return Config(secret=secret, selected_events=env.list(self.events_variable))

    def body_check(self, headers: Mapping[str, str], config: Config):
        """The credential check as the body streams in (bridge/bodies.py): header credentials
        are checked at once, an HMAC over the bytes as they come. None: nothing to check, or a
        `signed` template that `verify` checks on the whole body."""
        scheme = self.definition.auth.scheme
        if scheme is None or not config.secret:
            return None
        return scheme.body_check(headers, config.secret)

    def verify(self, headers: Mapping[str, str], body: bytes, config: Config) -> None:
        check = self.body_check(headers, config)
        if check is not None:
            check_whole(check, body)
        elif config.secret and isinstance(self.definition.auth.scheme, HmacAuth):
            self.definition.auth.scheme.verify(headers, body, config.secret)

    def redelivery_seconds(self, config: Config) -> float:
        """A repeat within the dedup window, or within 3 days (a sender's "resend"), is a
        duplicate even after retention pruned its row."""
        window = self.definition.dedup_window
        return window if window is not None else 3 * 86400.0

    def parse(self, headers: Mapping[str, str], body: bytes, config: Config,
              route: str | None = None) -> list[Event]:
        payload = decode(headers, body)
        context: dict[str, Any] = {"payload": payload, "headers": sandbox.Headers(headers), "route": route or "",
                                   "selected_events": config.selected_events}
        event = self._one_line("event", lambda: self._event.render("event", context))[:EVENT_CHARS]
        context["event"] = event
        fields, _ = self.fields_for(event)
        dedup = self._one_line("dedup", lambda: fields.render("dedup", context))
        thread = self._one_line("thread", lambda: fields.render("thread", context))
        # A `when` that is absent, or fails, mails: an event is never lost to a template bug.
        when = self._one_line("when", lambda: fields.render("when", context, absent="true"), default="true")
        root = self._one_line("thread_root", lambda: fields.render("thread_root", context))
        return [Event(
            source=self.NAME, kind=f"{self.NAME}:{event or 'event'}",
            dedup_key=f"{self.NAME}:" + hashlib.sha256(dedup.encode("utf-8") if dedup else body).hexdigest()[:40],
            template="generic/message", context=self.mail(fields, context, payload),
            thread_key=f"{self.NAME}:{thread}" if thread else None, thread_root=sandbox.truthy(root),
            headers={"X-Bridge-Event": f"{self.NAME}:{event}"[:EVENT_CHARS]},
            ignored=None if sandbox.truthy(when) else f"`when` is false for {event or 'this event'}",
            delivery_id=dedup[:EVENT_CHARS] or None, dedup_window=fields.dedup_window,
        )]

    # -- the steps

    def fields_for(self, event: str) -> tuple[Compiled, str | None]:
        """The first `events:` entry whose glob matches the event name (and that glob), else
        the top level (and None)."""
        for glob, compiled in self._overrides:
            if matches_any(event, [glob]):
                return compiled, glob
        return self._top, None

    def mail(self, fields: Compiled, context: Mapping[str, Any], payload: Any) -> dict[str, Any]:
        """subject, text and html; any template failure gives the generic mail instead."""
        generic = sandbox.generic_mail(self.NAME, context["event"], payload)
        try:
            subject = one_line(fields.render("subject", context))
            text = sandbox.tidy(fields.render("text", context))
            html = fields.render("html", context).strip()
        except Exception as exc:  # noqa: BLE001 — any template error: logged, then the generic mail
            self._failed("mail", exc)
            return generic
        if len(subject) > SUBJECT_CHARS:
            subject = subject[:SUBJECT_CHARS - 1] + "…"
        return {"subject": subject or generic["subject"], "text": text if text.strip() else generic["text"],
                "html": html or None}

    def _one_line(self, part: str, render, default: str = "") -> str:
        try:
            return one_line(render())
        except Exception as exc:  # noqa: BLE001
            self._failed(part, exc)
            return default

    def _failed(self, part: str, exc: Exception) -> None:
        log_line("render_failed", logging.ERROR, source=self.NAME, template=part,
                 error=f"{type(exc).__name__}: {exc}"[:300])


def decode(headers: Mapping[str, str], body: bytes) -> dict:
    """The payload: a JSON body, or the JSON in a form body's payload= field."""
    if media_type(headers) == "application/x-www-form-urlencoded":
        return json_object(form_payload(body), "payload")
    return json_object(body)


# --------------------------------------------------------------------------- loading

def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())


def load_folder(folder: Path, reserved: tuple[str, ...] = ()) -> dict[str, DeclarativeSource]:
    out = {}
    for path in _files(folder):
        name = path.stem
        if not NAME_RE.fullmatch(name):
            raise SettingsError(f"{path}: the file name is the source's URL (/hooks/<name>): use lower-case "
                                f"letters, digits, - and _")
        if name in reserved:
            raise SettingsError(f"{path}: {name} is a hand-written source of the bridge; name the file "
                                f"differently")
        if name in out:
            raise SettingsError(f"{path}: {out[name].path.name} defines {name} too")
        out[name] = DeclarativeSource(name, read_definition(path), path)
    return out


def load_all(sources_dir: str, reserved: tuple[str, ...] = ()) -> dict[str, DeclarativeSource]:
    """The built-in definitions, then SOURCES_DIR's, which replace built-ins of the same name."""
    sources = load_folder(BUILTIN_DIR, reserved)
    if sources_dir:
        folder = Path(sources_dir)
        if not folder.is_dir():
            raise SettingsError(f"SOURCES_DIR={sources_dir!r} is not a folder")
        for name, source in load_folder(folder, reserved).items():
            if name in sources:
                log_line("startup", source=name, note=f"{source.path} replaces the built-in definition")
            sources[name] = source
    return sources
