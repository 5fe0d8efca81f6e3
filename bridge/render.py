"""Event → (subject, text, html) through Jinja templates; text lives in templates, not code.

`<template>.subject.j2`, `.txt.j2` and `.html.j2` under bridge/templates/, or under
TEMPLATES_DIR, which wins, so a user can override any of them without forking. A family
without its own files falls back to `<source>/default`. Where `<template>.j2` exists, it is a
view: its variables and macros are made once per event and handed to the three parts as
`view`, so the words shared by subject, text and HTML are worked out once, not three times.

Templates are read once per process (no modification-time checks): a changed template takes
effect on restart, as a changed setting does.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import jinja2

from bridge.logs import log_line
from bridge.events import Event

PACKAGE_TEMPLATES = Path(__file__).parent / "templates"


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str | None


def one_line(value: str) -> str:
    """Fold CR, LF and other line breaks to single spaces: a header value stays one header."""
    return " ".join(str(value).split())


def _finalize(value):
    # A missing field prints as nothing, never as "None".
    return "" if value is None else value


class Renderer:
    def __init__(self, templates_dir: Path | None = None):
        loaders = [jinja2.FileSystemLoader(str(templates_dir))] if templates_dir else []
        loaders.append(jinja2.FileSystemLoader(str(PACKAGE_TEMPLATES)))
        self.env = jinja2.Environment(
            loader=jinja2.ChoiceLoader(loaders),
            autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default=False),
            undefined=jinja2.ChainableUndefined,
            finalize=_finalize,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
            auto_reload=False,
        )
        self.env.filters["one_line"] = one_line
        self._picked: dict[tuple[str, str], jinja2.Template | None] = {}

    def _pick(self, family: str, part: str) -> jinja2.Template | None:
        """The template for one part (`view` for `<family>.j2`), looked up once per process."""
        key = (family, part)
        if key not in self._picked:
            source = family.split("/", 1)[0]
            names = [f"{family}.j2"] if part == "view" else \
                [f"{family}.{part}.j2", f"{source}/default.{part}.j2"]
            try:
                self._picked[key] = self.env.select_template(names)
            except jinja2.TemplatesNotFound:
                self._picked[key] = None
        return self._picked[key]

    def render(self, event: Event) -> Rendered:
        """Render with the event's templates; if one fails (a user's override, an odd payload),
        with the source's default ones; if those fail too, a plain note. An accepted event
        always becomes a mail: a template bug must not turn into a 500 and a lost event."""
        source = event.template.split("/", 1)[0]
        for family in dict.fromkeys((event.template, f"{source}/default")):
            try:
                return self._render(family, event)
            except Exception as exc:  # noqa: BLE001 — any template error, logged, then fallback
                log_line("render_failed", logging.ERROR, template=family, kind=event.kind,
                         delivery_id=event.delivery_id, error=f"{type(exc).__name__}: {exc}"[:300])
        return Rendered(subject=event.kind,
                        text=f"The templates for {event.kind} failed; see the bridge's log and its "
                             f"deliveries page (delivery {event.delivery_id or 'without an id'}).\n",
                        html=None)

    def _render(self, family: str, event: Event) -> Rendered:
        context = dict(event.context, event=event)
        templates = {part: self._pick(family, part) for part in ("subject", "txt", "html")}
        if not any(templates.values()):
            raise jinja2.TemplateNotFound(family)
        if view := self._pick(event.template, "view"):
            context["view"] = view.make_module(context)
        parts = {part: template.render(context) if template else "" for part, template in templates.items()}
        subject = one_line(parts["subject"]) or event.kind
        html = parts["html"].strip() or None
        return Rendered(subject=subject, text=parts["txt"], html=html)
