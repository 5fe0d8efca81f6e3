"""The template engine of sources defined as data: Jinja's immutable sandbox over a payload.

A definition's templates see `payload` (the JSON body), `headers` (case-insensitive), `event`
and `route`. A missing field renders empty and chains (`payload.a.b.c`), `payload.values`
means the payload's key "values" and not the dict method, and no template can change what it
reads or reach Python internals. When a template fails anyway, `generic_mail` says what came
in, readably, so the event is still mailed.
"""
from __future__ import annotations

import functools
import json
import re
from typing import Any, Iterator, Mapping

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from bridge.events import selected
from bridge.render import one_line

GENERIC_LINES = 60      # a generic mail lists at most this many payload fields
GENERIC_VALUE = 300     # characters of one value in a generic mail
# Fields a generic mail leaves out: old Gitea put the webhook secret in the body.
SECRET_WORDS = ("secret", "token", "password", "authorization", "signature")
# Where a payload usually names what it is about, most specific first.
NAME_PATHS = (("project", "path_with_namespace"), ("repository", "full_name"), ("project", "name"),
              ("repository", "name"), ("project_name",), ("project",), ("issue", "key"),
              ("data", "issue", "title"), ("title",), ("ruleName",), ("name",))


class Headers(Mapping):
    """Request headers looked up case-insensitively; an absent one is undefined (renders '')."""

    def __init__(self, headers: Mapping[str, str]):
        self._items = {name.lower(): value for name, value in headers.items()}

    def __getitem__(self, name: str) -> str:
        return self._items[str(name).lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


def _finalize(value: Any) -> Any:
    """How a value prints: nothing for null, JSON words for booleans, JSON for containers,
    nothing for a method (`payload.items` on a payload without that key)."""
    if value is None or callable(value):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return value


class PayloadEnvironment(ImmutableSandboxedEnvironment):
    def getattr(self, obj: Any, attribute: str) -> Any:
        # A JSON key wins over a dict method of the same name (alert.values, payload.items).
        if isinstance(obj, Mapping):
            try:
                return obj[attribute]
            except (KeyError, TypeError):
                pass
        return super().getattr(obj, attribute)


@jinja2.pass_context
def _selected_test(context, name: Any, *defaults: str) -> bool:
    """`event is selected("*", "!pipeline.success")`: the source's <NAME>_EVENTS globs when
    set, else these defaults, on the event name and each of its dotted prefixes."""
    globs = context.get("selected_events") or defaults or ("*",)
    parts = str(name or "").split(".")
    return selected([".".join(parts[:i]) for i in range(1, len(parts) + 1)], globs)


def _environment(autoescape: bool) -> PayloadEnvironment:
    env = PayloadEnvironment(undefined=jinja2.ChainableUndefined, finalize=_finalize, autoescape=autoescape,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["one_line"] = one_line
    env.tests["selected"] = _selected_test
    env.filters["fields"] = fields
    return env


TAG = re.compile(r"\{%.*?%\}")


def keep_line_breaks(source: str) -> str:
    """A line that prints something keeps its line break even when it ends with a tag
    (`Branch: {{ b }}{% endif %}`); a line of tags alone still leaves nothing (trim_blocks)."""
    out = []
    for line in source.split("\n"):
        body = line.rstrip()
        balanced = body.count("{%") == body.count("%}") and body.find("%}") > body.find("{%") >= 0
        if balanced and body.endswith("%}") and not body.endswith(("-%}", "+%}")) and TAG.sub("", body).strip():
            line = body[:-2] + "+%}"
        out.append(line)
    return "\n".join(out)


def check_syntax(source: str) -> None:
    """Parse one template (cheaper than compiling it); a syntax error becomes a ValueError
    naming the line."""
    try:
        TEXT.parse(source)
    except jinja2.TemplateSyntaxError as exc:
        raise ValueError(f"template error on line {exc.lineno}: {exc.message}") from None


@functools.lru_cache(maxsize=2048)
def compile_template(source: str, html: bool = False) -> jinja2.Template:
    """Compile one template, once: the `events:` entries of a definition share most of theirs."""
    return (HTML if html else TEXT).from_string(source)


def truthy(rendered: str) -> bool:
    return rendered.strip().lower() not in ("", "false", "0", "no", "off", "none", "null")


def _leaves(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(value, dict):
        for key, item in value.items():
            if not any(word in str(key).lower() for word in SECRET_WORDS):
                yield from _leaves(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _leaves(item, f"{path}[{i}]")
    elif value is not None and value != "":
        text = one_line(_finalize(value))
        yield path, text if len(text) <= GENERIC_VALUE else text[:GENERIC_VALUE] + "…"


def _about(payload: Any) -> str:
    for path in NAME_PATHS:
        value = payload
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value).strip():
            return one_line(str(value))
    return ""


def fields(value: Any, limit: int = GENERIC_LINES) -> str:
    """`payload|fields`: a value's fields as `path: value` lines (nested paths dotted)."""
    lines = [f"{path}: {text}" for path, text in _leaves(value)]
    more = len(lines) - limit
    out = "\n".join(lines[:limit]) or "(no fields)"
    if more > 0:
        out += f"\n… and {more} more fields (the deliveries page shows the whole request)"
    return out


def generic_mail(source: str, event: str, payload: Any) -> dict[str, str]:
    """Subject and text for any payload: what it names, then its fields as `path: value` lines."""
    about = _about(payload)
    subject = f"[{about or source}] {event or 'event'}" + (f" from {source}" if about else "")
    text = f"{source} sent {event or 'an event'}" + (f" about {about}" if about else "") + ".\n\n"
    text += fields(payload) + "\n"
    return {"subject": subject, "text": text, "html": None}


def tidy(text: str) -> str:
    """At most one blank line in a row: optional template lines leave no holes."""
    text = re.sub(r"\n[ \t]*\n(?:[ \t]*\n)+", "\n\n", text).strip("\n")
    return text + "\n" if text else ""


TEXT = _environment(autoescape=False)
HTML = _environment(autoescape=True)
