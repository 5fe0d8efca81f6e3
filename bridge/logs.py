"""One structured line per request and per delivery attempt: `event=... key=value ...`.

Values with spaces are JSON-quoted so a line stays greppable and machine-splittable; a
GitHub delivery GUID or an outbox id finds every line of that event's story.
"""
from __future__ import annotations

import json
import logging
import sys

logger = logging.getLogger("bridge")


def _value(value) -> str:
    text = str(value)
    if text and not any(c.isspace() or c in '"=' for c in text):
        return text
    return json.dumps(text, ensure_ascii=False)


def log_line(event: str, level: int = logging.INFO, **fields) -> None:
    parts = [f"event={event}"] + [f"{k}={_value(v)}" for k, v in fields.items() if v is not None]
    logger.log(level, " ".join(parts))


def setup_logging(level: str) -> None:
    if logger.handlers:
        logger.setLevel(level.upper())
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
