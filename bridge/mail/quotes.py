"""The new text of a plain-text reply: the client's quote header, the quoted original, the
signature and the mobile footer removed (sans-I/O).

A quote starts at the first line that one of the clients below writes above what it quotes —
only whole lines match, so a sentence that merely mentions "wrote:" or "发件人" stays:
- QQ Mail: "------------------ 原始邮件 ------------------" (or "Original", often with a
  literal "&nbsp;"), then a "发件人: … 发送时间: … 收件人: … 主题: …" block;
- 163 / 126: "在 2026-12-01 19:52:35，"bridge" <bridge@example.com> 写道：";
- Gmail: "在 2026年12月1日周二 19:52，bridge <…> 写道：", "bridge <…> 于2026年12月1日周二 19:52写道：",
  "On Tue, Dec 1, 2026 at 7:52 PM bridge <…> wrote:" (wrapped over up to three lines);
- Apple Mail: "On 1 Dec 2026, at 19:52, bridge <…> wrote:", "2026年12月1日 19:52，bridge <…> 写道：";
- Thunderbird: "On 12/1/26 7:52 PM, bridge wrote:";
- Outlook: a "From: … Sent: … To: … Subject: …" / "发件人: … 发送时间: …" block, the
  "________________________________" line above it, "-----Original Message-----".
Lines starting with ">" are quoted text wherever they are. A reply written *below* an
attribution line and its ">" quote (bottom-posting) is kept.
"""
from __future__ import annotations

import re

_SPACE = re.compile(r"(?:&nbsp;|[\s\u3000\xa0])+")

_SEPARATOR = re.compile(r"^(?:-{2,} ?(?:原始邮件|邮件原件|original(?: message)?|回复的原邮件) ?-{2,}"
                        r"|_{20,})$", re.IGNORECASE)
# An attribution line: a date (a digit somewhere), a name, and "wrote:" / "写道：" at its end.
_ATTRIBUTION = re.compile(r"^(?:"
                          r"on .*\d.* wrote ?:"
                          r"|在 ?\d{4}[-/年].*写道 ?[:：]"
                          r"|\d{4}[-/年]\d{1,2}[-/月]\d{1,2}日?.*[,，].*写道 ?[:：]"
                          r"|.*于 ?\d{4}[-/年]\d{1,2}[-/月]\d{1,2}.*写道 ?[:：]"
                          r")$", re.IGNORECASE)
# The first line of an attribution a client wrapped: the start of one of the forms above, or a
# line broken inside "<address>".
_ATTRIBUTION_START = re.compile(r"^(?:on .*\d|在 ?\d{4}[-/年]|\d{4}[-/年]|.*于 ?\d{4}[-/年]|.*<[^>]*$)",
                                re.IGNORECASE)
_HEADER_KEYS = ("from|sent|date|to|cc|subject|发件人|发送时间|日期|时间|收件人|抄送|主题"
                "|寄件者|寄件日期|收件者|副本|主旨")
_HEADER = re.compile(rf"^\*?(?:{_HEADER_KEYS}) ?\*? ?[:：]", re.IGNORECASE)
_FROM = re.compile(r"^\*?(?:from|发件人|寄件者) ?\*? ?[:：]", re.IGNORECASE)
_RULE = re.compile(r"^[-_=*]{5,}$")
_SIGNATURE = re.compile(r"^--[ \xa0]?$")
# A footer line is all there is on its line: "发自我的iPhone的消息" is text, not a footer.
_DEVICE = r"(?:[a-z0-9 .-]{1,20}|[\w ]{0,8}(?:手机|平板|邮箱)(?:智能版|手机版|大师|客户端)?)"
_MOBILE_FOOTER = re.compile(rf"^(?:sent from my [a-z0-9 .-]{{1,30}}"
                            r"|sent from (?:mail|outlook|yahoo mail) (?:for|on) \w+"
                            r"|sent from (?:qq mail|netease mail master)|get outlook for \w+"
                            rf"|发自(?:我的)? ?{_DEVICE}|从我的 ?{_DEVICE} ?发送)(?: ?<https?://\S+>)?$",
                            re.IGNORECASE)
_WRAP = 3   # how many lines an attribution line may be wrapped over
_LONGEST = 400   # longer "lines" are text, not a header (and the regexes stay linear)


def _norm(line: str) -> str:
    return _SPACE.sub(" ", line).strip()


def _attribution_end(lines: list[str], i: int) -> int | None:
    """The index after an attribution line starting at i (joined over wrapped lines), or None."""
    joined = ""
    for j in range(i, min(i + _WRAP, len(lines))):
        part = _norm(lines[j])
        if not part or (j > i and (_quoted(part) or not _ATTRIBUTION_START.match(joined))):
            return None
        joined = f"{joined} {part}".strip()
        if len(joined) > _LONGEST:
            return None
        if _ATTRIBUTION.match(joined):
            return j + 1
    return None


def _header_block(lines: list[str], i: int) -> bool:
    """A From/发件人 line followed by another mail header line within the next three lines."""
    if not _FROM.match(_norm(lines[i])):
        return False
    following = [_norm(line) for line in lines[i + 1:i + 4]]
    return any(_HEADER.match(line) for line in following if line)


def _quote_start(lines: list[str]) -> tuple[int, int, bool] | None:
    """(first line of the quote, first line after its header, whether it is an attribution)."""
    for i, line in enumerate(lines):
        norm = _norm(line)
        if _SEPARATOR.match(norm) or _header_block(lines, i):
            return i, i + 1, False
        end = _attribution_end(lines, i)
        if end is not None:
            return i, end, True
    return None


def _quoted(line: str) -> bool:
    return line.lstrip(" \xa0\u3000").startswith((">", "＞"))


def _until_signature(lines: list[str]) -> list[str]:
    for i, line in enumerate(lines):
        if _SIGNATURE.match(line) or _MOBILE_FOOTER.match(_norm(line)):
            return lines[:i]
    return lines


def _tidy(lines: list[str]) -> str:
    text = "\n".join(line.rstrip() for line in lines if not _quoted(line))
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def new_text(text: str) -> str:
    """The text the replier wrote, quote header, quote, signature and footer removed."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    while (start := _quote_start(lines)) is not None:
        first, after, attribution = start
        while first and _RULE.match(_norm(lines[first - 1])):
            first -= 1   # a bare rule above a header block belongs to the quote
        above = _tidy(_until_signature(lines[:first]))
        if above or not attribution:
            return above
        lines = lines[after:]   # nothing above: bottom-posted, below a ">" quote
    return _tidy(_until_signature(lines))
