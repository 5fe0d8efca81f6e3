"""Provider limits, sans-I/O: which SMTP answers mean "this account sends too much", the
budget grammar of SMTP_RATE, the presets for the big Chinese and US mailboxes, the cool-down
ladder and the provider's "next day".

Providers answer a limit with codes that look permanent (QQ Mail: `550 Sender frequency
limited`), so a limit is told by its words, not by its code. README "Sending limits" lists the
table; tests/test_limits.py holds one real answer per row.
"""
from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from zoneinfo import ZoneInfo

RATE, QUOTA, CONNECTIONS = "rate", "quota", "connections"

UNITS = {"s": 1, "sec": 1, "second": 1, "min": 60, "minute": 60, "h": 3600, "hour": 3600,
         "day": 86400, "d": 86400}

# Not a limit of this account although the words look alike: the recipient's mailbox is full,
# or this one message is too big.
_NOT_ACCOUNT = re.compile(r"\b5\.2\.2\b|\b5\.3\.4\b|mailbox (is )?full|over quota|size"
                          r"|too (large|big)|空间不足|邮箱已满|大小", re.I)
# The order matters: "Connection frequency limited" is a rate, "too many connections" is not.
_CONNECTIONS = re.compile(r"too many (concurrent |simultaneous |open )?(connections|sessions)|concurrent connection"
                          r"|thread limit|HL:ICC|并发", re.I)
_QUOTA = re.compile(r"daily|quota|per day|24 ?hours|today|RP:TRC|MI:STC|当天|今日|每天|每日", re.I)
_LIMIT = re.compile(r"frequen|too fast|\brate\b|rate.?limit|quota|limit(ed)? exceeded|exceeded.{0,30}limit"
                    r"|sending limit|too many (messages|mails|emails|login)|4\.7\.0.{0,20}try again later|server busy"
                    r"|MI:SFQ|MI:CCL|MI:DMC|RP:QRC|RP:CCL|HL:IFC|RP:TRC|MI:STC|频率|频繁|超过|超出|上限|过多|过快",
                    re.I)


def provider_limit(code: int | None, text: str) -> str | None:
    """RATE, QUOTA or CONNECTIONS when an answer is a provider's limit on the account, else None.

    Whatever the code: QQ says 550, Gmail 421 or 550, 163 451. A 2xx is never a limit."""
    if code is not None and code < 400:
        return None
    if _NOT_ACCOUNT.search(text):
        return None
    if _CONNECTIONS.search(text):
        return CONNECTIONS
    if not _LIMIT.search(text):
        return None
    return QUOTA if _QUOTA.search(text) else RATE


@dataclass(frozen=True)
class Window:
    """At most `count` mails in any `seconds` long stretch."""

    count: int
    seconds: float

    def __str__(self) -> str:
        for name, size in (("day", 86400), ("hour", 3600), ("min", 60), ("s", 1)):
            if self.seconds % size == 0:
                n = int(self.seconds // size)
                return f"{self.count}/{'' if n == 1 else n}{name}"
        return f"{self.count}/{self.seconds:g}s"


def parse_budget(text: str) -> tuple[Window, ...]:
    """`20/min,500/day` (also `40/10s`, `5/2min`) → windows; ValueError with the bad part."""
    windows = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        m = re.fullmatch(r"(\d+)\s*/\s*(\d*(?:\.\d+)?)\s*([a-z]+?)s?", part.lower())
        if not m or m.group(3) not in UNITS or int(m.group(1)) < 1:
            raise ValueError(f"{part!r} is not N/s, N/min, N/hour or N/day (e.g. 20/min,500/day)")
        size = float(m.group(2) or 1) * UNITS[m.group(3)]
        if size <= 0:
            raise ValueError(f"{part!r} has an empty window")
        windows.append(Window(int(m.group(1)), size))
    return tuple(windows)


@dataclass(frozen=True)
class Provider:
    name: str
    budget: tuple[Window, ...]
    day_zone: str          # when the provider's day (and a daily quota) starts again


# The numbers are not published by Tencent or NetEase; these are conservative guesses that stay
# under what accounts get refused at. Gmail's 500 a day is Google's "Gmail sending limits" page.
PROVIDERS = {
    "smtp.qq.com": Provider("QQ Mail", parse_budget("20/min,500/day"), "Asia/Shanghai"),
    "smtp.exmail.qq.com": Provider("Tencent Exmail", parse_budget("20/min,1000/day"), "Asia/Shanghai"),
    "smtp.163.com": Provider("163 Mail", parse_budget("10/min,200/day"), "Asia/Shanghai"),
    "smtp.126.com": Provider("126 Mail", parse_budget("10/min,200/day"), "Asia/Shanghai"),
    "smtp.gmail.com": Provider("Gmail", parse_budget("20/min,500/day"), "America/Los_Angeles"),
}


def provider(host: str) -> Provider | None:
    return PROVIDERS.get(host.strip().lower().rstrip("."))


def provider_name(host: str) -> str:
    known = provider(host)
    return known.name if known else f"The SMTP server {host}"


def cooldown(ladder: tuple[float, ...], strikes: int) -> float:
    """The pause after the `strikes`-th limit answer in a row: it grows while the limit holds."""
    return ladder[min(max(strikes, 1), len(ladder)) - 1]


def next_day(now: float, zone: ZoneInfo) -> float:
    """The next midnight in `zone`, as a timestamp: when a daily quota is given back."""
    local = dt.datetime.fromtimestamp(now, zone)
    tomorrow = dt.datetime.combine(local.date() + dt.timedelta(days=1), dt.time(), tzinfo=zone)
    return tomorrow.timestamp()


def learned_window(sent: int, seconds: float) -> Window:
    """What a refusal teaches when `sent` mails got through in the `seconds` before it (or when
    a learned pace of `sent` per `seconds` was refused too): a quarter under that. The window is
    the first cool-down step (a minute by default: providers count per minute first)."""
    return Window(max(1, sent * 3 // 4), seconds)
