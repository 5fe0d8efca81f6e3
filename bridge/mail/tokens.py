"""Signed Message-IDs: a reply's In-Reply-To / References lead back to an outbox row only when
the id is one the bridge made.

`<3f2a…@example.com>` becomes `<3f2a….b7c1…@example.com>`: the local part keeps the stable
hash that names the row and gains an HMAC-SHA256 of it (lower-case hex, as mail systems may
change case), so a made-up or altered id fails the check before any database lookup.
"""
from __future__ import annotations

import hashlib
import hmac
import re

SIG_HEX = 20                      # 80 bits: forging one is out of reach, the id stays short
_ID = re.compile(r"<([0-9a-f]{16,64})\.([0-9a-f]{%d})@([^<>\s@]+)>" % SIG_HEX)


def _mac(local: str, secret: bytes) -> str:
    return hmac.new(secret, local.encode("ascii"), hashlib.sha256).hexdigest()[:SIG_HEX]


def signed(message_id: str | None, secret: bytes) -> str | None:
    """`<hash@domain>` → `<hash.sig@domain>` (None stays None; an id already signed stays)."""
    if not message_id or _ID.fullmatch(message_id):
        return message_id
    local, _, domain = message_id.strip("<>").partition("@")
    return f"<{local}.{_mac(local, secret)}@{domain}>"


def verified(reference: str, secret: bytes) -> bool:
    """Is `reference` an id the bridge signed? Compared in constant time."""
    found = _ID.fullmatch(reference.strip().lower())
    return bool(found) and hmac.compare_digest(found.group(2), _mac(found.group(1), secret))
