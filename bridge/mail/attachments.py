"""Attachment specs on an outbox row → (filename, mime type, bytes), for the sender.

A spec is `{"url", "filename", "accept"}` (e.g. a WeChat PicUrl): fetched here, in the sender,
never in the request, with a timeout, a size cap and a content-type check. A spec that cannot
be fetched is left out and logged; the mail still goes (its text carries the link).
"""
from __future__ import annotations

import json
import logging
import mimetypes
import time
from typing import Any, Mapping

from bridge.logs import log_line

MAX_BYTES = 10 * 1024 * 1024
CONNECT_SECONDS, READ_SECONDS, TOTAL_SECONDS = 5.0, 10.0, 30.0
CHUNK = 64 * 1024


class Unusable(Exception):
    """The download gave something we will not attach."""


def fetch_attachments(row: Any) -> list[tuple[str, str, bytes]]:
    import requests  # here, not at the top: only the sender fetches (bridge/actions says why)
    specs = json.loads(row.attachments or "[]")
    found = []
    for spec in specs:
        try:
            found.append(_fetch(spec))
        except (requests.RequestException, Unusable) as exc:
            log_line("attachment_skipped", logging.WARNING, outbox_id=row.id, source=row.source,
                     error=f"{type(exc).__name__}: {exc}"[:300])
    return found


def _fetch(spec: Mapping[str, Any]) -> tuple[str, str, bytes]:
    url = spec.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise Unusable("not an http(s) URL")
    import requests
    deadline = time.monotonic() + TOTAL_SECONDS
    with requests.get(url, stream=True, timeout=(CONNECT_SECONDS, READ_SECONDS)) as response:
        response.raise_for_status()
        mime = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if "/" not in mime or not mime.startswith(spec.get("accept", "")):
            raise Unusable(f"content type {mime or 'none'!r}, wanted {spec.get('accept')!r}")
        data = bytearray()
        for chunk in response.iter_content(CHUNK):
            data += chunk
            if len(data) > MAX_BYTES:
                raise Unusable(f"larger than {MAX_BYTES} bytes")
            if time.monotonic() > deadline:
                raise Unusable(f"download took longer than {TOTAL_SECONDS:.0f} s")
    name = str(spec.get("filename") or "attachment")
    return name + (mimetypes.guess_extension(mime) or ""), mime, bytes(data)
