"""HTML mail body → plain text, without the quoted original (sans-I/O, stdlib parser only).

Mail clients wrap what they quote in recognisable containers: <blockquote>, Gmail's
div.gmail_quote, Thunderbird's div.moz-cite-prefix, Yahoo's div.yahoo_quoted, 163's and QQ
Mail's #isReplyContent, QQ Mail's .qmbox and its signature #QQMailSignature. Those subtrees are
dropped. Outlook puts its quoted original *after* a marker (#appendonsend, #divRplyFwdMsg)
rather than inside it, so there the rest of the document is dropped. The parser never raises
on broken markup: unclosed tags end at the end of the document, stray end tags are ignored.
"""
from __future__ import annotations

import re
from collections import Counter
from html.parser import HTMLParser

# Subtrees that are never the replier's own text.
_SKIP_TAGS = frozenset({"blockquote", "style", "script", "head", "title", "template",
                        "includetail"})
_SKIP_CLASSES = frozenset({"gmail_quote", "gmail_extra", "gmail_signature", "moz-cite-prefix",
                           "moz-signature", "qmbox", "yahoo_quoted", "protonmail_quote"})
_SKIP_IDS = frozenset({"isreplycontent", "isforwardcontent", "qqmailsignature"})
# Elements after which the rest of the document is the quoted original (Outlook).
_STOP_IDS = frozenset({"appendonsend", "divrplyfwdmsg"})
_VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
                   "source", "track", "wbr"})
_BLOCK = frozenset({"address", "article", "aside", "div", "dl", "dt", "dd", "fieldset",
                    "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header",
                    "li", "main", "nav", "ol", "p", "pre", "section", "table", "tr", "ul"})
# What Outlook draws as <hr> above its quote header, so the plain-text rules see the same line.
RULE_LINE = "_" * 32


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.stack: list[str] = []
        self.open = Counter()   # tags on the stack, so a stray end tag costs no stack scan
        self.skip_at: int | None = None   # stack depth of the subtree being dropped
        self.pre = 0
        self.stopped = False

    def handle_starttag(self, tag, attrs):
        if self.stopped:
            return
        attr = {name: (value or "") for name, value in attrs}
        if self.skip_at is None:
            if attr.get("id", "").lower() in _STOP_IDS:
                self.stopped = True
                return
            if tag == "br":
                self.out.append("\n")
            elif tag == "hr":
                self.out.append(f"\n{RULE_LINE}\n")
            elif tag in _BLOCK:
                self._line_break()
        if tag in _VOID:
            return
        self.stack.append(tag)
        self.open[tag] += 1
        if self.skip_at is None and self._skipped(tag, attr):
            self.skip_at = len(self.stack)
        if tag == "pre":
            self.pre += 1

    @staticmethod
    def _skipped(tag: str, attr: dict[str, str]) -> bool:
        classes = set(attr.get("class", "").lower().split())
        return (tag in _SKIP_TAGS or bool(classes & _SKIP_CLASSES)
                or attr.get("id", "").lower() in _SKIP_IDS)

    def handle_endtag(self, tag):
        if self.stopped or not self.open[tag]:
            return
        while self.stack:
            top = self.stack.pop()
            self.open[top] -= 1
            if top == "pre":
                self.pre = max(0, self.pre - 1)
            if self.skip_at is not None and len(self.stack) < self.skip_at:
                self.skip_at = None
            if top == tag:
                break
        if self.skip_at is None and tag in _BLOCK:
            self._line_break()

    def _line_break(self) -> None:
        """End the current line unless it is already ended: nested blocks make one break."""
        if self.out and not self.out[-1].endswith("\n"):
            self.out.append("\n")

    def handle_data(self, data):
        if self.stopped or self.skip_at is not None:
            return
        data = data.replace("\xa0", " ")
        if not self.pre:
            data = re.sub(r"\s+", " ", data)
            if data == " " and (not self.out or self.out[-1].endswith("\n")):
                return   # indentation between tags
        self.out.append(data)


def html_to_text(html: str) -> str:
    """The visible text of an HTML body outside quote containers; one line per block/<br>."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    lines = (line.strip(" ") for line in "".join(parser.out).split("\n"))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
